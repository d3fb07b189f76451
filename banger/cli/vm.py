"""`banger vm ...` (and `banger ps`): VMs that outlive the command that made them."""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from banger.cli.agent import acp
from banger.cli.common import dirs, emit, fail, say, typer_app
from banger.cli.session import session_app
from banger.cli.workspace import RUN_SETTINGS, run, workspace_app
from banger.cli.vm_errors import exec_ssh, run as _run

vm_app = typer_app(no_args_is_help=True, help="VMs you keep: create, list, ssh, logs, stop, start, restart, rm, prune.")
vm_app.add_typer(workspace_app, name="workspace")
AUTH_SYNC_HELP = "Do not copy the host's opencode/Claude/pi auth files into the VM."
COLUMNS = ("NAME", "IMAGE", "STATE", "ADDRESS", "VCPUS", "MEMORY", "CREATED")






def _lines(rows: list[dict]) -> list[str]:
    """The table `vm list` prints."""
    from banger.core.progress import human_bytes
    from banger.vm.records import age

    table = [COLUMNS] + [(r["name"], r["image"], r["state"], r["address"] or "-", str(r["vcpus"]),
                          human_bytes(r["memory_mib"] * 2**20), age(r["created"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


COLD_HELP = ("Boot it, instead of restoring it from the image's snapshot (made on first use; "
             "later VMs of the same image and shape start in about a second).")


@vm_app.command("create")
def create(image: Optional[List[str]] = typer.Argument(None, metavar="[IMAGE | image=REF ...]",
                                                       help="A built image's name, or build words."),
           name: Optional[str] = typer.Option(None, "--name", help="Default: a generated one, e.g. brave-otter."),
           vcpus: int = typer.Option(2, "--vcpus"),
           memory: str = typer.Option("2G", "--memory", help="e.g. 2G, 512M"),
           disk_size: Optional[str] = typer.Option(None, "--disk-size", help="Grow the VM's disk, e.g. 8G."),
           net: str = typer.Option("user", "--net", help="user (no root) or bridge (root)"),
           hypervisor: str = typer.Option("auto", "--hypervisor", help="auto, qemu or firecracker"),
           no_start: bool = typer.Option(False, "--no-start", help="Create the disk and record only."),
           no_auth_sync: bool = typer.Option(False, "--no-auth-sync", help=AUTH_SYNC_HELP),
           cold: bool = typer.Option(False, "--cold", help=COLD_HELP),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Create a VM from an image and start it; it keeps running after banger exits."""
    from banger.vm import lifecycle

    opts = lifecycle.CreateOptions(image=tuple(image or ()), name=name, vcpus=vcpus, memory=memory,
                                   disk_size=disk_size, net=net, hypervisor=hypervisor, start=not no_start,
                                   auth_sync=not no_auth_sync, cold=cold)
    record = _run(lifecycle.create, dirs(), opts, log=say)
    _show(record, as_json, created=True)


def _show(record, as_json: bool, created: bool = False) -> None:
    from banger.core.config import load_config
    from banger.vm import access, status

    d = dirs()
    row = status.row(record, d.state, ssh=access.ssh_hint(load_config(d), record.name))
    if as_json:
        emit({**record.to_json(), **row, "console_tail": status.console_tail(d.state, record)}, True, [])
        return
    lines = [f"name:     {record.name}", f"image:    {record.image} ({record.image_ref})",
             f"state:    {row['state']}" + (f" ({row['reason']})" if row["reason"] else ""),
             f"hardware: {record.vcpus} vCPU, {record.memory_mib} MiB, disk {record.disk_size // 2**20} MiB, "
             f"{record.backend}" + (f"/{record.accel}/{record.machine}" if record.accel else ""),
             f"network:  {record.net}" + (f", {row['address']}" if row["address"] else "")]
    if record.snapshot:
        lines += [f"started:  restored from snapshot {record.snapshot[:12]} (its disk layer stays under this VM's)"]
    if row["state"] == "running":
        lines += [f"ssh:      {row['ssh']}   (or: banger vm ssh {record.name})"]
    elif created:
        lines += [f"start:    banger vm start {record.name}"]
    if row["state"] == "crashed":
        lines += ["console (last lines):"] + [f"  | {x}" for x in status.console_tail(d.state, record)]
    emit(None, False, lines)


@vm_app.command("list")
def vm_list(all_: bool = typer.Option(False, "--all", "-a", help="Also stopped, crashed and created VMs."),
            latest: bool = typer.Option(False, "--latest", "-l", help="Only the most recently created one."),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="Names only."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Running VMs (all with --all): NAME IMAGE STATE ADDRESS VCPUS MEMORY CREATED."""
    from banger.vm import lifecycle, status

    d = dirs()
    rows = sorted((status.row(r, d.state) for r in _run(lifecycle.all_vms, d)), key=lambda r: r["created"])
    if not all_:
        rows = [r for r in rows if r["state"] in ("starting", "running", "stopping")]
    if latest:
        rows = rows[-1:]
    if quiet:
        emit([r["name"] for r in rows], as_json, [r["name"] for r in rows])
    else:
        emit(rows, as_json, _lines(rows))


vm_app.command("ls", help="Alias of `banger vm list`.")(vm_list)
vm_app.command("ps", help="Alias of `banger vm list`.")(vm_list)
vm_app.command("acp")(acp)


@vm_app.command("show")
def show(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Everything about one VM: state (and why), hardware, address, how to reach it."""
    from banger.vm import lifecycle

    _show(_run(lifecycle.get, dirs(), name), as_json)


@vm_app.command("ssh", context_settings={"allow_interspersed_args": False})
def ssh(name: str, command: Optional[List[str]] = typer.Argument(None, metavar="[-- CMD...]")) -> None:
    """Log in to the VM, or run CMD there (its exit code is banger's)."""
    from banger.vm import access, lifecycle

    d = dirs()
    record = _run(lifecycle.get, d, name)
    if record.state != "running":
        fail(f"{name} is {record.state}; `banger vm start {name}` starts it")
    words = list(command or [])
    if words[:1] == ["--"]:  # click keeps the separator once interspersed options are off
        words = words[1:]
    argv = access.ssh_argv(d, record, words, tty=access.interactive())
    exec_ssh(argv)


@vm_app.command("logs")
def logs(name: str, follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the VM stops."),
         tail: Optional[int] = typer.Option(None, "--tail", "-n", help="Only the last N lines.")) -> None:
    """The VM's serial console (all its boots)."""
    from banger.vm import lifecycle, status

    d = dirs()
    record = _run(lifecycle.get, d, name)
    out = sys.stdout.buffer
    try:
        for chunk in status.console_stream(d.state, record, follow=follow, tail=tail):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


@vm_app.command("stop")
def stop(names: List[str] = typer.Argument(..., metavar="NAME..."),
         force: bool = typer.Option(False, "--force", "-f", help="Do not ask the guest: end the VMM now."),
         timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for a clean power-off.")) -> None:
    """Power the VM off cleanly (through the guest, then ACPI); by force after --timeout."""
    from banger.vm import lifecycle

    for name in names:
        record = _run(lifecycle.stop, dirs(), name, force=force, timeout=timeout, log=say)
        typer.echo(f"{name}: {record.state}" + (f" ({record.reason})" if record.reason else ""))


@vm_app.command("start")
def start(names: List[str] = typer.Argument(..., metavar="NAME..."),
          no_auth_sync: bool = typer.Option(False, "--no-auth-sync", help=AUTH_SYNC_HELP)) -> None:
    """Boot a stopped VM again; its disk kept everything written before."""
    from banger.vm import lifecycle

    for name in names:
        _show(_run(lifecycle.start, dirs(), name, log=say, auth_sync=not no_auth_sync), False)


@vm_app.command("restart")
def restart(name: str, force: bool = typer.Option(False, "--force", "-f"),
            no_auth_sync: bool = typer.Option(False, "--no-auth-sync", help=AUTH_SYNC_HELP)) -> None:
    """Stop (cleanly unless --force) and start again."""
    from banger.vm import lifecycle

    _show(_run(lifecycle.restart, dirs(), name, force=force, log=say, auth_sync=not no_auth_sync), False)


@vm_app.command("rm")
def rm(names: List[str] = typer.Argument(..., metavar="NAME..."),
       force: bool = typer.Option(False, "--force", "-f", help="Also a running VM (stopped by force).")) -> None:
    """Remove VMs: process, disk, state, ssh entry, host key, network lease."""
    from banger.vm import lifecycle

    for name in names:
        _run(lifecycle.remove, dirs(), name, force=force, log=say)
        typer.echo(f"removed {name}")


@vm_app.command("prune")
def prune() -> None:
    """Remove every VM that is not running."""
    from banger.vm import lifecycle

    removed = _run(lifecycle.prune, dirs(), log=say)
    typer.echo(f"removed {len(removed)} VM(s)" + (f": {', '.join(removed)}" if removed else ""))


vm_app.command("run", **RUN_SETTINGS)(run)
vm_app.add_typer(session_app, name="session")
