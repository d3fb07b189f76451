"""`ssh NAME.vm` from any terminal: banger's managed block in the user's ssh config, and
banger's own known_hosts file.

The block (BEGIN to END marker lines, one `Host NAME.vm` stanza per VM, sorted by name) sits at
the very top of the config ($BANGER_SSH_CONFIG, else the `ssh_config` setting, else
~/.ssh/config): there it applies even when the user's file ends inside a `Host` or `Match`, and
OpenSSH keeps the first value it finds, so our options win for NAME.vm. The block ends with
`Host *`, which puts everything below it (the user's global options and `Include`s) back into
force for every host, exactly as before. Every byte outside the block is the user's and is kept
(no trailing newline, CRLF: our block takes the file's dominant newline style). A banger block
found elsewhere (an older version's `# BEGIN banger...`) is folded into the one at the top;
removing the last entry removes the block, leaving the user's bytes as they were.

Writes are atomic (temporary file in the same directory, fsync, rename), keep an existing file's
mode (new files 0600, a new ~/.ssh 0700) and go through a symlink to its target. Config updates
hold an exclusive flock on `<state dir>/ssh/ssh_config.lock` (or `lock_dir`), never in ~/.ssh;
known_hosts updates lock `.<file>.lock` beside that file, in banger's own directory. It holds each
VM's real host key as `NAME.vm <type> <base64>`, which `HostKeyAlias NAME.vm` makes ssh look up
by name, so the VM's address and port may change.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shlex
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

BEGIN = "# BEGIN banger managed block: do not edit (banger vm rm NAME removes an entry)"
END = "# END banger managed block"
ENV = "BANGER_SSH_CONFIG"
SUFFIX = ".vm"
LOCK_NAME = "ssh_config.lock"

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9.:]([A-Za-z0-9.:-]*[A-Za-z0-9.:])?$")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_ANY_BEGIN = re.compile(r"^[ \t]*#[ \t]*BEGIN banger\b")  # this version's marker or an older one
_ANY_END = re.compile(r"^[ \t]*#[ \t]*END banger\b")
_BARE = re.compile(r"^[A-Za-z0-9_./+,@:-]+$")  # path characters ssh reads literally, unquoted
_KEY_TYPE = re.compile(r"^[a-z][a-z0-9@._-]*$")
_RESET_NOTE = "# Host * ends the stanzas above: the rest of this file applies to every host again"


class SshConfigError(RuntimeError):
    """One line: what is wrong, and what to do about it."""


@dataclass(frozen=True)
class HostEntry:
    name: str  # VM name; the Host pattern is f"{name}.vm"
    hostname: str  # "127.0.0.1" (user-mode net) or the VM's IP (bridge)
    port: int  # 22 for bridge
    identity: Path  # banger's managed private key
    known_hosts: Path  # banger's managed known_hosts
    user: str = "root"

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "identity", Path(self.identity))
        object.__setattr__(self, "known_hosts", Path(self.known_hosts))
        if not _HOSTNAME_RE.fullmatch(self.hostname or ""):
            raise SshConfigError(f"VM {self.name}: {self.hostname!r} is not a host name or IP address")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise SshConfigError(f"VM {self.name}: port {self.port!r} is not a TCP port (1-65535)")
        if not _USER_RE.fullmatch(self.user or ""):
            raise SshConfigError(f"VM {self.name}: {self.user!r} is not a user name ssh can take")
        for path in (self.identity, self.known_hosts):
            _quote_path(path)  # raises for paths ssh_config cannot express

    @property
    def host(self) -> str:
        return self.name + SUFFIX


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SshConfigError(f"{name!r} is not a valid VM name for ssh: use 1-63 of a-z, 0-9 and '-', "
                             "starting and ending with a letter or digit")
    return name


def config_path(settings: dict) -> Path:
    """$BANGER_SSH_CONFIG beats settings["ssh_config"] beats ~/.ssh/config ($HOME read now)."""
    chosen = os.environ.get(ENV) or (settings or {}).get("ssh_config")
    return Path(os.path.expanduser(str(chosen) if chosen else "~/.ssh/config"))


# --- the managed block -------------------------------------------------------------------------

def render_block(entries: Iterable[HostEntry], newline: str = "\n") -> str:
    """The whole block, markers included, one stanza per VM sorted by name ("" for no entries)."""
    by_name = {e.name: e for e in entries}
    if not by_name:
        return ""
    lines = [BEGIN]
    for name in sorted(by_name):
        e = by_name[name]
        lines += [f"Host {e.host}",
                  f"    HostName {e.hostname}",
                  f"    Port {e.port}",
                  f"    User {e.user}",
                  f"    IdentityFile {_quote_path(e.identity)}",
                  "    IdentitiesOnly yes",
                  f"    UserKnownHostsFile {_quote_path(e.known_hosts)}",
                  f"    HostKeyAlias {e.host}"]
    lines += [_RESET_NOTE, "Host *", END]
    return "".join(line + newline for line in lines)


def read_entries(path: Path) -> dict[str, HostEntry]:
    """The entries in the managed block(s) of `path`, by VM name; {} without file or block."""
    return _parse(Path(path))[1]


def set_entry(path: Path, entry: HostEntry, *, lock_dir: Path | None = None) -> None:
    """Add or replace one VM's stanza (and move any banger block to the top, as one block)."""
    with _locked(_lock_file(lock_dir)):
        target = _target(Path(path))
        user_text, entries = _parse(target)
        entries[entry.name] = entry
        _store(target, user_text, entries)


def remove_entry(path: Path, name: str, *, lock_dir: Path | None = None) -> None:
    """Remove one VM's stanza; without entries left the block goes, leaving the user's bytes."""
    check_name(name)
    with _locked(_lock_file(lock_dir)):
        target = _target(Path(path))
        user_text, entries = _parse(target)
        entries.pop(name, None)
        _store(target, user_text, entries)


def _store(target: Path, user_text: str, entries: dict[str, HostEntry]) -> None:
    new = render_block(entries.values(), _newline_of(user_text)) + user_text
    try:
        old = target.read_bytes()
    except FileNotFoundError:
        if not entries:
            return  # nothing to remove, and no reason to create the file
        old = None
    data = new.encode("utf-8", "surrogateescape")
    if data != old:
        _write_atomic(target, data)


def _parse(path: Path) -> tuple[str, dict[str, HostEntry]]:
    """(the user's text: everything outside banger blocks, the entries inside them)."""
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return "", {}
    except OSError as exc:
        raise SshConfigError(f"cannot read {path} ({exc.strerror}); fix its permissions or set ${ENV}")
    user: list[str] = []
    body: list[str] = []
    start = 0  # line number of the open block's BEGIN, 0 when outside
    for number, line in enumerate(_lines(text), 1):
        if start:
            if _ANY_END.match(line):
                start = 0
            elif _ANY_BEGIN.match(line):
                raise SshConfigError(f"{path}: line {number} starts a banger block inside the one begun on "
                                     f"line {start}; fix the file by hand (one BEGIN, then one END line)")
            else:
                body.append(line)
        elif _ANY_BEGIN.match(line):
            start = number
        elif _ANY_END.match(line):
            raise SshConfigError(f"{path}: line {number} ends a banger block that never began; "
                                 "fix the file by hand (delete that line or add the BEGIN line)")
        else:
            user.append(line)
    if start:
        raise SshConfigError(f"{path}: the banger block begun on line {start} has no '{END}' line; "
                             "fix the file by hand (add the END line or delete the block)")
    return "".join(user), _stanzas(body)


def _stanzas(body: list[str]) -> dict[str, HostEntry]:
    """Entries from block lines; stanzas an older banger wrote without every field are dropped
    (that VM's next start writes its entry again)."""
    found: list[dict[str, str]] = []
    for raw in body:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(\S+?)(?:\s*=\s*|\s+)(.*)$", line)
        key, value = (m.group(1).lower(), m.group(2)) if m else (line.lower(), "")
        if key in ("host", "match"):
            found.append({"host": value.strip()} if key == "host" else {})
        elif found and key not in found[-1]:  # ssh's rule: the first value obtained wins
            found[-1][key] = value.strip()
    entries: dict[str, HostEntry] = {}
    for s in found:
        host = s.get("host", "")
        if not host.endswith(SUFFIX):
            continue
        try:
            entry = HostEntry(name=host[: -len(SUFFIX)], hostname=s["hostname"], port=int(s["port"]),
                              identity=Path(_unquote(s["identityfile"])),
                              known_hosts=Path(_unquote(s["userknownhostsfile"])), user=s.get("user", "root"))
        except (KeyError, IndexError, ValueError, SshConfigError):
            continue
        entries.setdefault(entry.name, entry)
    return entries


def _quote_path(path: Path) -> str:
    """`path` as ssh_config reads it: %-escaped, double-quoted unless plain (ssh's argv_split)."""
    s = str(path)
    if not os.path.isabs(s) or any(c in s for c in "\n\r\0") or "${" in s:
        raise SshConfigError(f"{s!r}: ssh_config needs an absolute path without newlines or '${{'; "
                             "use another path")
    s = s.replace("%", "%%")
    if _BARE.match(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(value: str) -> str:
    """The first word of a value `_quote_path` wrote (shlex reads its quoting the same way)."""
    return shlex.split(value)[0].replace("%%", "%")


def _lines(text: str) -> list[str]:
    """Lines with their endings (only \\n splits: \\r, \\f and friends stay inside a line)."""
    return [line for line in re.split(r"(?<=\n)", text) if line]


def _newline_of(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf > text.count("\n") - crlf else "\n"


# --- known_hosts -------------------------------------------------------------------------------

def set_host_key(known_hosts: Path, name: str, key_line: str) -> None:
    """Store `NAME.vm <type> <base64>` for each key in `key_line` ("ssh-ed25519 AAAA... [comment]",
    one key per line), replacing every earlier line for NAME.vm."""
    host = check_name(name) + SUFFIX
    keys = [_key_of(line, name) for line in key_line.splitlines() if line.strip()]
    if not keys:
        raise SshConfigError(f"VM {name}: no host key given; pass a line like 'ssh-ed25519 AAAA...'")
    _update_known_hosts(Path(known_hosts), host, [f"{host} {k}" for k in keys])


def remove_host_key(known_hosts: Path, name: str) -> None:
    """Forget every key stored for NAME.vm (a missing file is fine)."""
    _update_known_hosts(Path(known_hosts), check_name(name) + SUFFIX, [])


def _key_of(line: str, name: str) -> str:
    fields = line.split()
    if len(fields) >= 2 and _KEY_TYPE.match(fields[0]):
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except ValueError:
            blob = b""
        n = int.from_bytes(blob[:4], "big")
        if blob[4: 4 + n] == fields[0].encode() and len(blob) > 4 + n:
            return f"{fields[0]} {fields[1]}"
    raise SshConfigError(f"VM {name}: {line.strip()[:60]!r} is not a public key line "
                         "('<type> <base64>', as in a .pub file or the VM's /etc/ssh/ssh_host_*_key.pub)")


def _update_known_hosts(path: Path, host: str, new: list[str]) -> None:
    with _locked(path.with_name(f".{path.name}.lock")):
        target = _target(path)
        try:
            text = target.read_bytes().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            text = ""
        kept = []
        for line in _lines(text):
            edited = _without_host(line, host)
            if edited is not None:
                kept.append(edited)
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        result = "".join(kept) + "".join(line + "\n" for line in new)
        if result != text:
            _write_atomic(target, result.encode("utf-8", "surrogateescape"))


def _without_host(line: str, host: str) -> str | None:
    """`line` without `host` among its host patterns (None: nothing left of it)."""
    stripped = line.lstrip()
    if not stripped or stripped.startswith("#") or stripped.startswith("@"):
        return line
    field, rest = re.match(r"(\S+)(.*)$", stripped, re.S).groups()
    if _hashed_match(field, host):
        return None
    hosts = field.split(",")
    if host not in hosts:
        return line
    others = [h for h in hosts if h != host]
    return ",".join(others) + rest if others else None


def _hashed_match(field: str, host: str) -> bool:
    """Whether a `|1|salt|hash` field (HashKnownHosts) stands for `host`."""
    if not field.startswith("|1|"):
        return False
    import hashlib
    import hmac

    try:
        salt, digest = (base64.b64decode(part, validate=True) for part in field[3:].split("|"))
    except ValueError:
        return False
    return hmac.compare_digest(digest, hmac.new(salt, host.encode(), hashlib.sha1).digest())


# --- files and locks ---------------------------------------------------------------------------

def _target(path: Path) -> Path:
    """The file to write: a symlink's final target, so the link stays a link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _make_dir(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename, keeping its mode (0600 for a new file)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o600
        _make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.banger-tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SshConfigError(f"cannot write in {path.parent} ({exc.strerror}); fix its permissions "
                             f"or point ${ENV} elsewhere")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _lock_file(lock_dir: Path | None) -> Path:
    if lock_dir is None:
        from banger.core.config import default_dirs  # pyxdg: only when a write needs the state dir

        lock_dir = default_dirs().state / "ssh"
    return Path(lock_dir) / LOCK_NAME


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    _make_dir(lock_file.parent)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
