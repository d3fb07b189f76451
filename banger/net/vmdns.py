"""NAME.vm through systemd-resolved: while banger's bridge exists, the responder (names.py) runs
at the gateway address and resolved sends it every `.vm` question that arrives on the bridge's
link (`resolvectl dns BRIDGE GATEWAY`, `resolvectl domain BRIDGE '~vm'`); both are undone when
the bridge goes. host.json records the responder ({"pid", "started"}: a pid is only trusted with
its start time) and that resolvectl configured the bridge, so the teardown undoes only what was
done. Nothing here ever fails a VM: a problem becomes one line in <state>/network/names.log."""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from banger.core.procs import start_time
from banger.net import dns, store
from banger.net.settings import BridgeSettings

RESPONDER = Path(__file__).with_name("names.py")
LOG = "names.log"


def active(resolved: bool | None = None) -> bool:
    """Should the bridge get NAME.vm names? `resolved` overrides the detection (tests)."""
    return dns.resolved_runs() if resolved is None else resolved


def _alive(record: dict | None) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return False
    return record.get("started") is not None and start_time(record["pid"]) == record["started"]


def warn(state_dir: Path, message: str) -> None:
    """One line in <state>/network/names.log (the responder's log too)."""
    with contextlib.suppress(OSError):
        with open(store.network_dir(state_dir) / LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} banger: {message}\n")


def spawn(state_dir: Path, address: str, port: int = 53, timeout: float = 5.0) -> dict:
    """Start the responder detached (own session, stdin /dev/null, stderr to names.log);
    {"pid", "started"} once it listens. Raises OSError (one line) when it does not."""
    log_path = store.network_dir(state_dir) / LOG
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(RESPONDER), str(state_dir), address, str(port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True, close_fds=True, cwd="/")
    assert proc.stdout is not None
    with proc.stdout:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    if line != "ready":
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)
        raise OSError(line.removeprefix("error: ") or f"the responder did not start within {timeout:g} s")
    started = start_time(proc.pid)
    proc.returncode = 0  # it runs on its own now: no "still running" warning when this object goes
    return {"pid": proc.pid, "started": started}


def stop(record: dict | None, timeout: float = 5.0) -> bool:
    """SIGTERM the recorded responder if it is still the process that was started (pid and start
    time); wait for it to go. True if it was running."""
    if not _alive(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(record) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record["pid"], os.WNOHANG)  # reap it when this process started it
        time.sleep(0.02)
    if _alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["pid"], signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(record["pid"], os.WNOHANG)
    return True


def _resolvectl(*args: str) -> str | None:
    """Run resolvectl; None on success, else why not (one line)."""
    try:
        proc = subprocess.run(["resolvectl", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`resolvectl {' '.join(args)}` could not run ({exc})"
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        return f"`resolvectl {' '.join(args)}` failed: {lines[0] if lines else f'exit status {proc.returncode}'}"
    return None


def bring_up(state_dir: Path, settings: BridgeSettings, resolved: bool | None = None) -> str | None:
    """The bridge and its gateway are up (the caller holds the network lock): make NAME.vm resolve
    through resolved. Reuses a running responder. Returns a warning (also logged) or None."""
    if not active(resolved):
        return None
    recorded = store.load_host(state_dir)
    names = recorded.get("names") if isinstance(recorded.get("names"), dict) else {}
    problem = None
    if not _alive(names.get("responder")):
        try:
            names["responder"] = spawn(state_dir, str(settings.gateway))
        except OSError as exc:
            names["responder"] = None
            problem = f"NAME.vm will not resolve: banger's DNS responder did not start at {settings.gateway}: {exc}"
    if problem is None:
        names["resolvectl"] = settings.name  # recorded first: a crash after this still reverts
        store.save_host(state_dir, {**recorded, "names": names})
        problem = (_resolvectl("dns", settings.name, str(settings.gateway))
                   or _resolvectl("domain", settings.name, "~vm"))
        if problem:
            problem = f"NAME.vm will not resolve: {problem}"
    else:
        store.save_host(state_dir, {**recorded, "names": names})
    if problem:
        warn(state_dir, problem)
    return problem


def tear_down(state_dir: Path, revert: bool = True) -> list[str]:
    """Undo what bring_up recorded (before the bridge is deleted; revert=False: the link is no
    longer banger's, only stop the responder); what was undone, one phrase each. Failures are
    ignored: the bridge and the responder's socket go anyway."""
    recorded = store.load_host(state_dir)
    names = recorded.get("names")
    if not isinstance(names, dict):
        return []
    undone = []
    link = names.get("resolvectl")
    if revert and isinstance(link, str) and link:
        problem = _resolvectl("revert", link)
        if problem:
            warn(state_dir, problem)
        else:
            undone.append(f"resolvectl settings of {link}")
    if stop(names.get("responder")):
        undone.append(f"NAME.vm responder (pid {names['responder']['pid']})")
    recorded.pop("names", None)
    store.save_host(state_dir, recorded)
    return undone


def status(state_dir: Path) -> dict:
    """The responder and resolvectl state host.json records, for `status()`."""
    names = store.load_host(state_dir).get("names")
    names = names if isinstance(names, dict) else {}
    return {"responder": names.get("responder") if _alive(names.get("responder")) else None,
            "resolvectl": names.get("resolvectl")}
