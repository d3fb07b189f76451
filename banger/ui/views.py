"""What each page of `banger ui` shows and what its buttons do, by calling the functions the CLI
commands call (`image list/show/history`, `vm list/show/stop/start/rm`, `cache du/gc`, `kernel
list`): one implementation, two front ends. Every function returns plain data for a template."""
from __future__ import annotations

import time

from banger.core.config import Dirs
from banger.core.progress import human_bytes


class UIError(Exception):
    """A one-line message for the user (shown on the page, never a traceback)."""


def store(dirs: Dirs):
    from banger.core.cachedir import NotACacheError, check
    from banger.core.store import Store

    try:
        check(dirs.cache)
    except NotACacheError as exc:
        raise UIError(str(exc)) from None
    return Store(dirs.cache, dirs.trees)


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


# ---- images ------------------------------------------------------------------------------------
def images(dirs: Dirs) -> dict:
    """`banger image list`: the named images (with their last build's steps), and the damaged."""
    from banger.core.images import scan

    good, damaged = scan(store(dirs))
    rows = [{"name": i.name, "ref": i.ref, "digest": i.digest, "rootfs_size": human_bytes(i.rootfs_size),
             "built_at": when(i.built_at), "builds": len(i.history()), "steps": i.history()[-1]["steps"]}
            for i in good]
    return {"images": rows, "damaged": [{"name": d.name, "why": str(d)} for d in damaged]}


def image(dirs: Dirs, name: str) -> dict:
    """`banger image show` and `banger image history`: the last build's summary and every kept build."""
    from banger.app.build import history_lines, summary_lines
    from banger.core.images import ImageError, load

    s = store(dirs)
    try:
        record = load(s, name)
    except ImageError as exc:
        raise UIError(str(exc)) from None
    builds = [{"at": when(b["at"]), "digest": str(b.get("digest", "")), "steps": b["steps"]}
              for b in reversed(record.history())]
    return {"image": record, "summary": summary_lines(record, s), "history": history_lines(record),
            "builds": builds, "rootfs_size": human_bytes(record.rootfs_size), "built_at": when(record.built_at)}


# ---- builds (journals) -------------------------------------------------------------------------
def builds(dirs: Dirs) -> list[dict]:
    from banger.core import journal

    return [_build_row(b) for b in journal.all_builds(dirs.state)]


def build(dirs: Dirs, build_id: str) -> dict:
    from banger.core import journal

    found = journal.find(dirs.state, build_id)
    if found is None:
        raise UIError(f"no build {build_id!r} is kept; the dashboard lists the kept ones")
    return _build_row(found)


def _build_row(b) -> dict:
    steps = [e for e in b.events if e.get("event") == "step"]
    running = [e["step"] for e in b.events if e.get("event") == "step-start"
               and not any(s.get("step") == e.get("step") for s in steps)]
    return {"id": b.id, "words": " ".join(b.words), "began": when(b.began), "state": b.state, "error": b.error,
            "steps": steps, "running": running,
            "seen": sum(1 for e in b.events if e.get("event") in ("step-start", "step", "log")),
            "log": [str(e.get("message", "")) for e in b.events if e.get("event") == "log"]}


# ---- VMs ---------------------------------------------------------------------------------------
def vms(dirs: Dirs) -> list[dict]:
    """`banger vm list --all`, with the ssh command of each."""
    from banger.core.config import load_config
    from banger.vm import access, lifecycle, status
    from banger.vm.errors import user_errors

    try:
        settings = load_config(dirs)
        rows = [status.row(r, dirs.state, ssh=access.ssh_hint(settings, r.name)) for r in lifecycle.all_vms(dirs)]
    except user_errors() as exc:
        raise UIError(str(exc)) from None
    for r in rows:
        r["memory"] = human_bytes(r["memory_mib"] * 2**20)
    return sorted(rows, key=lambda r: r["created"])


def vm(dirs: Dirs, name: str) -> dict:
    """`banger vm show --json`: the row, the record and its console's last lines."""
    from banger.core.config import load_config
    from banger.vm import access, lifecycle, status
    from banger.vm.errors import user_errors

    try:
        record = lifecycle.get(dirs, name)
        row = status.row(record, dirs.state, ssh=access.ssh_hint(load_config(dirs), record.name))
        tail = status.console_tail(dirs.state, record, n=40)
    except user_errors() as exc:
        raise UIError(str(exc)) from None
    return {**record.to_json(), **row, "console_tail": tail}


def vm_action(dirs: Dirs, action: str, name: str) -> str:
    """`banger vm stop|start|rm NAME`; the line the CLI prints."""
    from banger.vm import lifecycle
    from banger.vm.errors import user_errors

    try:
        if action == "stop":
            record = lifecycle.stop(dirs, name)
            return f"{name}: {record.state}" + (f" ({record.reason})" if record.reason else "")
        if action == "start":
            record = lifecycle.start(dirs, name)
            return f"{name}: {record.state}"
        if action == "rm":
            lifecycle.remove(dirs, name)
            return f"removed {name}"
    except user_errors() as exc:
        raise UIError(str(exc)) from None
    raise UIError(f"unknown action {action!r}")


# ---- the cache and kernels ---------------------------------------------------------------------
def cache(dirs: Dirs) -> dict:
    """`banger cache du`: size, what images keep, by kind, the RAM trees."""
    from banger.app.cache import usage

    u = usage(store(dirs))
    return {**u, "total_h": human_bytes(u["total"]), "referenced_h": human_bytes(u["referenced"]),
            "ram_h": human_bytes(u["ram"]), "kinds_h": {k: human_bytes(n) for k, n in u["kinds"].items()}}


def gc(dirs: Dirs, max_size: str, max_age: str) -> str:
    """`banger cache gc [--max-size S] [--max-age DAYS]`, refusing at once while builds run."""
    from banger.app.cache import CacheError, gc as collect
    from banger.engine.spec import SpecError, parse_size

    try:
        limit = parse_size(max_size) if max_size.strip() else None
    except SpecError as exc:
        raise UIError(str(exc).replace("size=", "max size ")) from None
    try:
        age = float(max_age) if max_age.strip() else None
    except ValueError:
        raise UIError(f"max age {max_age!r} is not a number of days; use e.g. 30") from None
    try:
        result = collect(store(dirs), limit, age, wait=0)
    except CacheError as exc:
        raise UIError(str(exc)) from None
    line = (f"evicted {result['evicted']} artifacts, freed {human_bytes(result['freed'])}; "
            f"cache is {human_bytes(result['size'])}")
    if result["over_limit"]:
        line += "; still over the max size: named images alone need more (`banger image rm` some)"
    return line


def kernels(dirs: Dirs) -> dict:
    """`banger kernel list` and `banger kernel list --available` (without asking the mirror)."""
    from banger.kernel import bundle as kernel_bundle
    from banger.kernel.catalog import available, human_size
    from banger.kernel.errors import KernelError

    try:
        default = kernel_bundle.default_name(dirs)
        installed = [kernel_bundle.summary(b, default) for b in kernel_bundle.list_bundles(dirs)]
        catalog = available(dirs, resolve=False)
    except KernelError as exc:
        raise UIError(str(exc)) from None
    for row in installed + catalog:
        row["size_h"] = human_size(row.get("size"))
    return {"installed": installed, "catalog": catalog}
