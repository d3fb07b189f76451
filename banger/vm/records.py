"""A VM's record and directory: `<state>/vms/<name>/` holds vm.json (written atomically), a lock
file (commands on one VM serialize; different VMs run concurrently), the disk, the console log,
the VMM's log, the control socket and the keeper's exit.json.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from banger.core.fsutil import atomic_write, remove_tree

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a hostname label: the guest's hostname
LIVE_STATES = ("starting", "running", "stopping")  # a VMM process should exist
STALE_AFTER = 60.0  # seconds: a VM dir without vm.json this old and unlocked is a killed create's
ADJECTIVES = ("amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
              "fancy", "fuzzy", "gentle", "glad", "happy", "hazy", "jolly", "keen", "lively", "lucky",
              "mellow", "merry", "misty", "nimble", "noble", "plucky", "polite", "proud", "quick", "quiet",
              "rapid", "rosy", "shiny", "silent", "snappy", "sunny", "swift", "tidy", "vivid", "witty")
NOUNS = ("badger", "beaver", "bison", "cobra", "coyote", "crane", "falcon", "ferret", "finch", "gecko",
         "heron", "ibis", "koala", "lemur", "lynx", "marmot", "marten", "moose", "newt", "ocelot",
         "orca", "otter", "panda", "puffin", "quail", "raven", "robin", "salmon", "seal", "shrew",
         "skunk", "sloth", "stork", "swan", "tapir", "toucan", "trout", "walrus", "wombat", "yak")


class VMStateError(RuntimeError):
    """One line naming the problem and the fix."""


@dataclass
class VMRecord:
    name: str
    id: str  # 32 hex: the guest's machine-id
    image: str  # the image name it was created from ("" when made from words without a name)
    image_ref: str
    artifacts: dict[str, str]  # rootfs, kernel, initrd, vmlinux -> store digests
    cache: str  # the store the artifacts live in
    backend: str  # "qemu" | "firecracker"
    vcpus: int
    memory_mib: int
    disk_size: int  # bytes
    disk: str  # file name in the VM dir
    net: str  # "user" | "bridge"
    created: float
    state: str = "created"  # created | starting | running | stopping | stopped | crashed
    reason: str = ""  # why it is stopped or crashed
    accel: str = ""  # how it last ran: "kvm"/"tcg" and the machine type
    machine: str = ""
    address: str = ""  # guest IP (bridge) or 127.0.0.1
    ssh_port: int = 0  # the loopback forward (user net) or 22
    vmm_pid: int = 0
    vmm_start: int | None = None  # the VMM's start time (clock ticks): pids get reused
    console_offset: int = 0  # where the current boot's console output starts
    started_at: float = 0.0
    boots: int = 0
    grow: bool = False  # the guest grows its filesystem at its next (first) boot
    host_key: str = ""  # "ssh-ed25519 AAAA...", pinned in banger's known_hosts
    snapshot: str = ""  # the snapshot step's key when it was restored from one (vm/restore.py)
    stop_requested: bool = False
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # match() lets "a\n" in
        raise VMStateError(f"{name!r} is not a valid VM name: use lowercase letters, digits and inner '-', "
                           f"at most 63 characters (it becomes the guest's hostname), e.g. --name dev-1")
    return name


def vms_dir(state: Path) -> Path:
    return Path(state) / "vms"


def vm_dir(state: Path, name: str) -> Path:
    return vms_dir(state) / check_name(name)


def load(state: Path, name: str) -> VMRecord:
    path = vm_dir(state, name) / "vm.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise VMStateError(f"no VM named {name!r}; `banger vm list --all` shows them") from None
    except (OSError, ValueError) as exc:
        raise VMStateError(f"{path} is unreadable ({exc}); `banger vm rm --force {name}` removes the VM") from None
    known = {f.name for f in fields(VMRecord)}
    try:
        if not isinstance(doc, dict):
            raise TypeError(f"a JSON {type(doc).__name__}, not an object")
        return VMRecord(**{k: v for k, v in doc.items() if k in known})
    except TypeError as exc:
        raise VMStateError(f"{path} is not a banger VM record ({exc}); `banger vm rm --force {name}` "
                           f"removes the VM") from None


def save(state: Path, record: VMRecord) -> None:
    atomic_write(vm_dir(state, record.name) / "vm.json",
                 json.dumps(record.to_json(), indent=1, sort_keys=True).encode())


def names(state: Path) -> list[str]:
    """Every VM directory that holds a record (a half-made one without vm.json is not a VM)."""
    base = vms_dir(state)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if NAME_RE.fullmatch(p.name) and (p / "vm.json").is_file())


@contextlib.contextmanager
def locked(state: Path, name: str, wait: bool = True) -> Iterator[bool]:
    """Hold the VM's lock; with wait=False yields False at once when another command holds it."""
    path = vm_dir(state, name) / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise VMStateError(f"no VM named {name!r}; `banger vm list --all` shows them") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def reserve(state: Path, name: str | None) -> str:
    """Create the VM's directory (atomically: mkdir fails if the name is taken)."""
    base = vms_dir(state)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    if name is not None:
        try:
            vm_dir(state, name).mkdir(mode=0o700)
        except FileExistsError:
            if not remove_if_stale(state, name):
                raise VMStateError(f"a VM named {name!r} exists; pick another --name or remove it with "
                                   f"`banger vm rm {name}`") from None
            vm_dir(state, name).mkdir(mode=0o700)
        return name
    for attempt in range(200):
        candidate = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}"
        if attempt >= 100:
            candidate += f"-{secrets.randbelow(1000)}"
        try:
            vm_dir(state, candidate).mkdir(mode=0o700)
            return candidate
        except FileExistsError:
            continue
    raise VMStateError("could not find a free VM name; pass --name")


def remove_if_stale(state: Path, name: str) -> bool:
    """Remove the directory a killed `vm create` left before it wrote vm.json (no command holds its
    lock); True if it was removed."""
    path = vm_dir(state, name)
    if (path / "vm.json").exists() or not path.is_dir():
        return False
    if time.time() - path.stat().st_mtime < STALE_AFTER:  # a create may be between mkdir and lock
        return False
    with locked(state, name, wait=False) as free:
        if not free or (path / "vm.json").exists():
            return False
        stale = path.with_name(f".removing-{name}-{os.getpid()}")
        os.rename(path, stale)
    remove_tree(stale)
    return True


def stale_names(state: Path) -> list[str]:
    base = vms_dir(state)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if NAME_RE.fullmatch(p.name) and not (p / "vm.json").exists())


def new_id() -> str:
    return secrets.token_hex(16)


def age(seconds_since: float, now: float | None = None) -> str:
    delta = max(0, (now or time.time()) - seconds_since)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= size:
            n = int(delta // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"
