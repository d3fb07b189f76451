"""banger's managed SSH key pair: `<state dir>/ssh/id_ed25519` (0600) and `.pub`, made once.

The inject step writes the public half into every image as root's authorized_keys; the boot
step logs in with the private half (paramiko reads the OpenSSH format). `ssh-keygen` makes the
pair when it is installed, else `cryptography` (a paramiko dependency) does. Concurrent first
uses are safe: each writes a private temporary pair and links it into place; the loser adopts
the winner's key.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from banger.core.procs import dies_with_parent

KEY_NAME = "id_ed25519"
COMMENT = "banger"


class SshKeyError(RuntimeError):
    pass


@dataclass(frozen=True)
class ManagedKey:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... banger"


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / "ssh" / KEY_NAME


def ensure_key(state_dir: Path) -> ManagedKey:
    """The managed key pair, created on first use."""
    path = key_path(state_dir)
    if not path.exists():
        _create(path)
    st = path.stat()
    if st.st_mode & 0o077:
        os.chmod(path, 0o600)  # ssh refuses keys others can read
    pub = path.with_name(path.name + ".pub")
    try:  # the .pub written beside the key is current unless the key was replaced after it
        if pub.stat().st_mtime_ns >= st.st_mtime_ns:
            return ManagedKey(path, pub.read_text().strip())
    except FileNotFoundError:
        pass
    line = public_line_of(path)  # loads cryptography: only when the .pub is missing or stale
    _write_atomic(pub, (line + "\n").encode(), 0o644)
    return ManagedKey(path, line)


def public_line_of(private_path: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SshKeyError(f"{private_path} is not an unencrypted OpenSSH private key ({exc}); "
                          f"remove it and banger will create a new one") from None
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    return f"{blob} {COMMENT}"


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmpdir = Path(tempfile.mkdtemp(prefix=".keygen-", dir=path.parent))
    try:
        tmp = tmpdir / KEY_NAME
        if shutil.which("ssh-keygen"):
            proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", COMMENT,
                                   "-f", str(tmp)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, stdin=subprocess.DEVNULL, preexec_fn=dies_with_parent())
            if proc.returncode != 0:
                raise SshKeyError(f"ssh-keygen could not create {path}: {proc.stdout.strip()}")
        else:
            _write_atomic(tmp, _generate_openssh_private(), 0o600)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic and never replaces a key another process just made
        except FileExistsError:
            pass
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _generate_openssh_private() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.OpenSSH,
                                                      serialization.NoEncryption())


def new_host_key() -> tuple[bytes, str]:
    """A new ed25519 key pair for a guest's sshd (a VM restored from a snapshot): the OpenSSH
    private key and the public line ("ssh-ed25519 AAAA..."). Never written to disk by the host."""
    from cryptography.hazmat.primitives import serialization

    private = _generate_openssh_private()
    key = serialization.load_ssh_private_key(private, password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
