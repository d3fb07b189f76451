"""`banger vm run` (a VM with a git checkout inside) and `banger vm workspace prepare|export`."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from typer.core import TyperCommand

from banger.cli.common import dirs, fail, say, typer_app
from banger.cli.vm_errors import run as _run

workspace_app = typer_app(no_args_is_help=True, help="A git checkout in a VM: prepare (copy it in), export (the work as a patch).")




@workspace_app.command("prepare")
def prepare(name: str, path: Path = typer.Argument(Path("."), help="Somewhere in the git checkout (default: .)."),
            branch: Optional[str] = typer.Option(None, "--branch", help="Create this branch in the guest."),
            from_ref: Optional[str] = typer.Option(None, "--from", help="Where --branch starts (default HEAD)."),
            full_copy: bool = typer.Option(False, "--full-copy", help="The full history, not the last 10 commits.")) -> None:
    """Copy the checkout at PATH into the running VM at /root/repo (shallow, with uncommitted work)."""
    from banger.vm import guest, workspace

    d = dirs()
    record = _run(guest.running, d, name)
    ws = _run(workspace.prepare, d, record, path, branch=branch, from_ref=from_ref, full_copy=full_copy, log=say)
    typer.echo(f"{name}: {workspace.GUEST_REPO} at {ws['base_commit'][:12]}" + (f" on {ws['branch']}" if ws["branch"] else ""))


@workspace_app.command("export")
def export(name: str, base_commit: Optional[str] = typer.Option(None, "--base-commit", help="Default: the one prepare recorded."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the patch here (default: stdout).")) -> None:
    """The guest's work in /root/repo (committed and not) as a binary patch for `git apply`."""
    from banger.vm import guest, workspace

    d = dirs()
    record = _run(guest.running, d, name)
    patch, names = _run(workspace.export, d, record, base_commit)
    if output is not None:
        output.write_bytes(patch)
    else:
        sys.stdout.buffer.write(patch)
        sys.stdout.buffer.flush()
    for changed in names:
        say(changed)
    say(f"{len(names)} file(s) changed" + (f"; patch in {output}" if output is not None else ""))


class _RunCommand(TyperCommand):
    """Remembers how many words followed `--` (click drops the separator itself), so that
    `vm run -- make test` is a command with PATH defaulting to `.`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["banger_after_dashdash"] = len(args) - args.index("--") - 1 if "--" in args else 0
        return super().parse_args(ctx, args)


RUN_SETTINGS = {"cls": _RunCommand}


def run(ctx: typer.Context,
        words: Optional[List[str]] = typer.Argument(None, metavar="[PATH] [-- CMD...]",
                                                    help="Somewhere in the git checkout (default: .), then CMD."),
        image: Optional[List[str]] = typer.Option(None, "--image", help="A built image's name (default as `vm create`)."),
        name: Optional[str] = typer.Option(None, "--name"),
        branch: Optional[str] = typer.Option(None, "--branch", help="Create this branch in the guest."),
        from_ref: Optional[str] = typer.Option(None, "--from", help="Where --branch starts (default HEAD)."),
        full_copy: bool = typer.Option(False, "--full-copy", help="The full history, not the last 10 commits."),
        vcpus: int = typer.Option(2, "--vcpus"),
        memory: str = typer.Option("2G", "--memory", help="e.g. 2G, 512M"),
        disk_size: Optional[str] = typer.Option(None, "--disk-size"),
        net: str = typer.Option("user", "--net", help="user (no root) or bridge (root)"),
        hypervisor: str = typer.Option("auto", "--hypervisor"),
        cold: bool = typer.Option(False, "--cold", help="Boot the VM instead of restoring it from a snapshot.")) -> None:
    """Create a VM with the git checkout at PATH in /root/repo; run CMD there (its exit code is banger's)."""
    from banger.core.config import load_config
    from banger.vm import access, lifecycle, workspace

    words = list(words or [])
    split = len(words) - ctx.meta.get("banger_after_dashdash", 0)
    paths, command = words[:split], words[split:]
    if len(paths) > 1:
        fail(f"one PATH at most (got {' '.join(paths)}); put the command after `--`")
    path = Path(paths[0]) if paths else Path(".")
    d = dirs()
    _run(workspace.find_repo, path, full_copy)  # before the VM exists: a bad repo makes nothing
    if from_ref and not branch:
        fail("--from needs --branch (the new branch starts there)")
    opts = lifecycle.CreateOptions(image=tuple(image or ()), name=name, vcpus=vcpus, memory=memory,
                                   disk_size=disk_size, net=net, hypervisor=hypervisor, cold=cold)
    record = _run(lifecycle.create, d, opts, log=say)
    say(f"{record.name}: VM ready")
    _run(workspace.prepare, d, record, path, branch=branch, from_ref=from_ref, full_copy=full_copy, log=say)
    if not command:
        hint = access.ssh_hint(load_config(d), record.name)
        for line in (f"{record.name}: the repo is at {workspace.GUEST_REPO}; next:", f"  banger vm ssh {record.name}",
                     f"  {hint}", f"  banger vm workspace export {record.name} > work.patch"):
            typer.echo(line)
        return
    script = f"cd {workspace.GUEST_REPO} && " + (command[0] if len(command) == 1 else shlex.join(command))
    argv = access.ssh_argv(d, record, ["sh", "-c", script], tty=access.interactive())
    sys.stdout.flush()
    try:
        code = subprocess.run(argv).returncode
    except FileNotFoundError:
        fail("`ssh` is not installed; install the openssh-client package")
    raise typer.Exit(code)
