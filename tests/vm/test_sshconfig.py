"""The managed block in the ssh config and banger's known_hosts: placement, byte-exact user bytes,
OpenSSH's own reading of the result (`ssh -G`, which only prints the resolved config), file modes,
symlinks, locking, malformed blocks and names."""
from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
from pathlib import Path

import pytest

from banger.vm import sshconfig
from banger.vm.sshconfig import (BEGIN, END, HostEntry, SshConfigError, config_path, read_entries,
                                 remove_entry, remove_host_key, render_block, set_entry, set_host_key)
from tests.support_tools import need

OURS = {"hostname", "port", "user", "identityfile", "identitiesonly", "userknownhostsfile", "hostkeyalias",
        "updatehostkeys"}  # ssh turns UpdateHostKeys off by itself when a UserKnownHostsFile is set
OTHER_HOSTS = ("other", "other.example.org", "zzz", "bar.vm")


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """No test reads or writes the real ~/.ssh or state dir."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(sshconfig.ENV, raising=False)


@pytest.fixture
def lock(tmp_path) -> Path:
    return tmp_path / "banger-state"


def entry(tmp_path: Path, name: str = "foo", port: int = 2222, hostname: str = "127.0.0.1") -> HostEntry:
    return HostEntry(name=name, hostname=hostname, port=port, identity=tmp_path / "state" / "ssh" / "id_ed25519",
                     known_hosts=tmp_path / "state" / "ssh" / "known_hosts")


def resolved(cfg: Path, host: str) -> dict[str, list[str]]:
    """What OpenSSH makes of `cfg` for `host` (no connection: -G prints and exits)."""
    proc = subprocess.run(["ssh", "-G", "-F", str(cfg), host], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, []).append(value)
    return out


def key_line(kind: str = "ssh-ed25519", seed: int = 1) -> str:
    import base64

    blob = len(kind).to_bytes(4, "big") + kind.encode() + (32).to_bytes(4, "big") + bytes([seed]) * 32
    return f"{kind} {base64.b64encode(blob).decode()}"


# --- where the config is -------------------------------------------------------------------------

def test_config_path_env_beats_setting_beats_home(tmp_path, monkeypatch):
    assert config_path({}) == tmp_path / "home" / ".ssh" / "config"
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))  # read at call time
    assert config_path({}) == tmp_path / "elsewhere" / ".ssh" / "config"
    assert config_path({"ssh_config": "~/dot/ssh_config"}) == tmp_path / "elsewhere" / "dot" / "ssh_config"
    monkeypatch.setenv(sshconfig.ENV, str(tmp_path / "env_config"))
    assert config_path({"ssh_config": "~/dot/ssh_config"}) == tmp_path / "env_config"


# --- what the block says ---------------------------------------------------------------------------

def test_render_block_sorts_stanzas_and_resets_the_context(tmp_path):
    a, b = entry(tmp_path, "zeta", 2200), entry(tmp_path, "alpha", 22, "10.0.0.7")
    text = render_block([a, b])
    ident, kh = tmp_path / "state/ssh/id_ed25519", tmp_path / "state/ssh/known_hosts"
    stanza = ("Host {n}.vm\n    HostName {h}\n    Port {p}\n    User root\n    IdentityFile {i}\n"
              "    IdentitiesOnly yes\n    UserKnownHostsFile {k}\n    HostKeyAlias {n}.vm\n")
    assert text == (BEGIN + "\n" + stanza.format(n="alpha", h="10.0.0.7", p=22, i=ident, k=kh)
                    + stanza.format(n="zeta", h="127.0.0.1", p=2200, i=ident, k=kh)
                    + sshconfig._RESET_NOTE + "\nHost *\n" + END + "\n")
    assert "StrictHostKeyChecking" not in text
    assert render_block([a, b], "\r\n") == text.replace("\n", "\r\n")
    assert render_block([]) == ""


def test_ssh_reads_every_option_for_the_vm(tmp_path, lock):
    need("ssh")
    cfg = tmp_path / "config"
    set_entry(cfg, entry(tmp_path, "web-1", 2201), lock_dir=lock)
    got = resolved(cfg, "web-1.vm")
    assert got["hostname"] == ["127.0.0.1"]
    assert got["port"] == ["2201"]
    assert got["user"] == ["root"]
    assert got["identityfile"] == [str(tmp_path / "state/ssh/id_ed25519")]
    assert got["identitiesonly"] == ["yes"]
    assert got["userknownhostsfile"] == [str(tmp_path / "state/ssh/known_hosts")]
    assert got["hostkeyalias"] == ["web-1.vm"]
    assert resolved(cfg, "web-1")["hostname"] == ["web-1"]  # only NAME.vm is ours


def test_paths_with_spaces_and_odd_characters_round_trip(tmp_path, lock):
    need("ssh")
    odd = tmp_path / "my keys" / "it's #1 \\ 100%"
    e = HostEntry("foo", "127.0.0.1", 2222, identity=odd / "id", known_hosts=odd / "known hosts")
    cfg = tmp_path / "config"
    set_entry(cfg, e, lock_dir=lock)
    assert read_entries(cfg) == {"foo": e}
    got = resolved(cfg, "foo.vm")
    assert got["userknownhostsfile"] == [str(odd / "known hosts")]  # -G prints it %-expanded
    assert got["identityfile"] == [str(odd / "id").replace("%", "%%")]  # and this one as written
    with pytest.raises(SshConfigError, match="absolute path"):
        HostEntry("foo", "127.0.0.1", 22, identity=Path("rel/id"), known_hosts=odd)


# --- the user's bytes and what OpenSSH makes of them ------------------------------------------------

def write_user_files(tmp_path: Path) -> dict[str, bytes]:
    inc_all, inc_other = tmp_path / "inc_all", tmp_path / "inc_other"
    inc_all.write_text("Compression yes\nHost zzz\n    Port 2301\n")
    inc_other.write_text("Port 2302\nUser incuser\n")
    return {
        "globals": b"User bob\nServerAliveInterval 31\nHost other\n    Port 2200\n",
        "no trailing newline": b"ConnectTimeout 7\nHost other\n    User alice",
        "crlf": b"User bob\r\nServerAliveInterval 31\r\nHost other\r\n    Port 2200\r\n",
        "includes": (f"Include {inc_all}\nForwardAgent yes\nHost other\n    Include {inc_other}\n"
                     "Host *.example.org\n    User ex\n").encode(),
        "ends inside Match": b"TCPKeepAlive no\nHost other\n    User alice\nMatch host zzz\n    User matched\n",
        "ends inside Host *": b"Host *\n    User everyone\n    ServerAliveInterval 5",
        "user stanza for the vm": b"Host foo.vm\n    User mine\n    Port 1\n    ForwardX11 yes\n",
        "empty": b"",
    }


@pytest.mark.parametrize("case", ["globals", "no trailing newline", "crlf", "includes", "ends inside Match",
                                  "ends inside Host *", "user stanza for the vm", "empty"])
def test_block_at_the_top_changes_nothing_else(tmp_path, lock, case):
    need("ssh")
    original = write_user_files(tmp_path)[case]
    cfg = tmp_path / "config"
    cfg.write_bytes(original)
    before = {h: resolved(cfg, h) for h in OTHER_HOSTS + ("foo.vm",)}
    foo, bar = entry(tmp_path, "foo", 2222), entry(tmp_path, "bar", 2223)
    set_entry(cfg, foo, lock_dir=lock)
    set_entry(cfg, bar, lock_dir=lock)
    newline = "\r\n" if case == "crlf" else "\n"
    assert cfg.read_bytes() == render_block([foo, bar], newline).encode() + original
    assert read_entries(cfg) == {"foo": foo, "bar": bar}
    for host in OTHER_HOSTS:  # bar.vm is ours now; the others resolve exactly as before
        if host != "bar.vm":
            assert resolved(cfg, host) == before[host], host
    after = resolved(cfg, "foo.vm")
    assert (after["user"], after["port"], after["hostkeyalias"]) == (["root"], ["2222"], ["foo.vm"])
    assert {k: v for k, v in after.items() if k not in OURS} == \
           {k: v for k, v in before["foo.vm"].items() if k not in OURS}  # the user's options still apply
    remove_entry(cfg, "foo", lock_dir=lock)
    assert cfg.read_bytes() == render_block([bar], newline).encode() + original
    remove_entry(cfg, "bar", lock_dir=lock)
    assert cfg.read_bytes() == original


def test_crlf_file_gets_a_crlf_block(tmp_path, lock):
    cfg = tmp_path / "config"
    cfg.write_bytes(b"Host a\r\n  User x\r\nHost b\n  User y\r\n")  # mostly CRLF
    set_entry(cfg, entry(tmp_path), lock_dir=lock)
    block = cfg.read_bytes().split(END.encode())[0]
    assert block.count(b"\n") == block.count(b"\r\n") > 5


def test_older_banger_block_anywhere_is_folded_into_one_at_the_top(tmp_path, lock):
    old_block = ("# BEGIN banger (managed; v0.0.1)\n"
                 f"Host old.vm\n  HostName=10.0.0.9\n  Port 22\n  IdentityFile {tmp_path}/id\n"
                 f"  UserKnownHostsFile {tmp_path}/kh\n"
                 "Host broken.vm\n  HostName 10.0.0.10\n"  # an older format without every field
                 "# END banger\n")
    user = "User bob\nHost other\n  Port 2200\n"
    cfg = tmp_path / "config"
    cfg.write_text(user + old_block + "Host last\n  Port 1")
    set_entry(cfg, entry(tmp_path, "new"), lock_dir=lock)
    text = cfg.read_text()
    assert text.startswith(BEGIN + "\nHost new.vm\n")
    assert text.count("# BEGIN banger") == 1 and text.count("# END banger") == 1
    assert set(read_entries(cfg)) == {"new", "old"}
    assert read_entries(cfg)["old"].hostname == "10.0.0.9"
    assert text.endswith(END + "\n" + user + "Host last\n  Port 1")
    remove_entry(cfg, "old", lock_dir=lock)
    remove_entry(cfg, "new", lock_dir=lock)
    assert cfg.read_text() == user + "Host last\n  Port 1"


def test_set_entry_replaces_the_vms_stanza(tmp_path, lock):
    cfg = tmp_path / "config"
    set_entry(cfg, entry(tmp_path, "foo", 2222), lock_dir=lock)
    set_entry(cfg, entry(tmp_path, "foo", 2299, "10.1.2.3"), lock_dir=lock)
    assert cfg.read_text().count("Host foo.vm") == 1
    assert read_entries(cfg)["foo"] == entry(tmp_path, "foo", 2299, "10.1.2.3")


def test_removing_what_is_not_there_writes_nothing(tmp_path, lock):
    cfg = tmp_path / "home" / ".ssh" / "config"
    remove_entry(cfg, "foo", lock_dir=lock)
    assert not cfg.exists() and not cfg.parent.exists()
    assert read_entries(cfg) == {}
    cfg.parent.mkdir(parents=True)
    cfg.write_text("Host a\n")
    inode = cfg.stat().st_ino
    remove_entry(cfg, "foo", lock_dir=lock)
    assert cfg.stat().st_ino == inode and read_entries(cfg) == {}


# --- malformed blocks and names ----------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    (f"Host a\n{BEGIN}\nHost foo.vm\n  Port 1\n", "begun on line 2 has no"),
    (f"Host a\n{END}\n", "line 2 ends a banger block that never began"),
    (f"{BEGIN}\n# BEGIN banger again\n{END}\n", "line 2 starts a banger block inside the one begun on line 1"),
])
def test_malformed_block_is_an_error_naming_the_file(tmp_path, lock, text, words):
    cfg = tmp_path / "config"
    cfg.write_text(text)
    for call in (lambda: set_entry(cfg, entry(tmp_path), lock_dir=lock),
                 lambda: remove_entry(cfg, "foo", lock_dir=lock), lambda: read_entries(cfg)):
        with pytest.raises(SshConfigError) as exc:
            call()
        message = str(exc.value)
        assert str(cfg) in message and "fix the file by hand" in message and "\n" not in message
        assert words in message
    assert cfg.read_text() == text


@pytest.mark.parametrize("name", ["", "Foo", "-a", "a-", "a_b", "a.b", "a b", "x" * 64, "a\nHost *"])
def test_names_are_validated(tmp_path, lock, name):
    with pytest.raises(SshConfigError, match="not a valid VM name"):
        entry(tmp_path, name)
    with pytest.raises(SshConfigError, match="not a valid VM name"):
        remove_entry(tmp_path / "config", name, lock_dir=lock)
    with pytest.raises(SshConfigError, match="not a valid VM name"):
        set_host_key(tmp_path / "kh", name, key_line())


def test_good_names_and_other_fields(tmp_path):
    for name in ("a", "0", "web-1", "x" * 63):
        assert entry(tmp_path, name).name == name
    for bad in (dict(hostname="a b"), dict(hostname="x\n  ProxyCommand y"), dict(port=0), dict(port=70000)):
        with pytest.raises(SshConfigError):
            HostEntry(**{**entry(tmp_path).__dict__, **bad})


# --- files: modes, symlinks, atomicity, locking --------------------------------------------------------

def test_new_config_is_0600_in_a_new_0700_dir(tmp_path, lock):
    cfg = config_path({})
    set_entry(cfg, entry(tmp_path), lock_dir=lock)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.parent.stat().st_mode) == 0o700
    assert cfg.read_text() == render_block([entry(tmp_path)])
    assert os.listdir(cfg.parent) == ["config"]  # no temporary file, no lock in ~/.ssh


def test_default_lock_lives_in_bangers_state_dir(tmp_path):
    cfg = config_path({})
    set_entry(cfg, entry(tmp_path))
    remove_entry(cfg, "foo")
    assert (tmp_path / "state" / "banger" / "ssh" / sshconfig.LOCK_NAME).is_file()
    assert os.listdir(cfg.parent) == ["config"]


def test_existing_mode_is_kept(tmp_path, lock):
    cfg = tmp_path / "config"
    cfg.write_text("Host a\n")
    cfg.chmod(0o640)
    set_entry(cfg, entry(tmp_path), lock_dir=lock)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640


def test_a_symlinked_config_stays_a_link(tmp_path, lock):
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "ssh_config").write_text("Host a\n")
    cfg = tmp_path / "config"
    cfg.symlink_to(dotfiles / "ssh_config")
    set_entry(cfg, entry(tmp_path), lock_dir=lock)
    assert cfg.is_symlink()
    assert (dotfiles / "ssh_config").read_text() == render_block([entry(tmp_path)]) + "Host a\n"
    remove_entry(cfg, "foo", lock_dir=lock)
    assert cfg.is_symlink() and (dotfiles / "ssh_config").read_text() == "Host a\n"
    assert sorted(os.listdir(dotfiles)) == ["ssh_config"]


def add_many(cfg: str, lock_dir: str, state: str, prefix: str, start) -> None:
    start.wait()
    for i in range(20):
        set_entry(Path(cfg), HostEntry(f"{prefix}{i}", "127.0.0.1", 2200 + i, identity=Path(state) / "id",
                                       known_hosts=Path(state) / "kh"), lock_dir=Path(lock_dir))


def test_two_processes_adding_at_once_lose_nothing(tmp_path, lock):
    cfg = tmp_path / "config"
    cfg.write_text("Host a\n")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=add_many, args=(str(cfg), str(lock), str(tmp_path), p, start)) for p in "ab"]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert set(read_entries(cfg)) == {f"{p}{i}" for p in "ab" for i in range(20)}
    assert cfg.read_text().endswith(END + "\nHost a\n")


# --- known_hosts ---------------------------------------------------------------------------------------

def test_set_host_key_stores_the_alias_line_in_a_private_file(tmp_path):
    kh = tmp_path / "state" / "ssh" / "known_hosts"
    set_host_key(kh, "foo", key_line() + " root@foo\n")
    assert kh.read_text() == f"foo.vm {key_line()}\n"
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600
    assert stat.S_IMODE(kh.parent.stat().st_mode) == 0o700
    set_host_key(kh, "bar", key_line(seed=2))
    set_host_key(kh, "foo", key_line("ecdsa-sha2-nistp256", 3))  # replaces foo's earlier key
    assert kh.read_text() == f"bar.vm {key_line(seed=2)}\nfoo.vm {key_line('ecdsa-sha2-nistp256', 3)}\n"
    assert sorted(os.listdir(kh.parent)) == [".known_hosts.lock", "known_hosts"]


def test_ssh_keygen_finds_the_key_under_the_alias(tmp_path):
    need("ssh-keygen")
    kh = tmp_path / "known_hosts"
    set_host_key(kh, "foo", key_line())
    proc = subprocess.run(["ssh-keygen", "-F", "foo.vm", "-f", str(kh)], capture_output=True, text=True)
    assert proc.returncode == 0 and key_line() in proc.stdout


def test_remove_host_key_keeps_every_other_line(tmp_path):
    import base64
    import hashlib
    import hmac

    salt = bytes(range(20))
    hashed = "|1|{}|{}".format(base64.b64encode(salt).decode(),
                               base64.b64encode(hmac.new(salt, b"foo.vm", hashlib.sha1).digest()).decode())
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# note\nfoo.vm {key_line()}\nfoo.vm,bar.vm {key_line(seed=2)}\n{hashed} {key_line(seed=3)}\n"
                  f"foo.vmx {key_line(seed=4)}")
    remove_host_key(kh, "foo")
    assert kh.read_text() == f"# note\nbar.vm {key_line(seed=2)}\nfoo.vmx {key_line(seed=4)}\n"
    remove_host_key(tmp_path / "missing", "foo")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("bad", ["", "ssh-ed25519", "127.0.0.1 " + key_line(), "ssh-ed25519 not-base64!",
                                 "ssh-rsa " + key_line().split()[1], "@revoked " + key_line()])
def test_set_host_key_refuses_what_is_not_a_key(tmp_path, bad):
    with pytest.raises(SshConfigError, match="VM foo"):
        set_host_key(tmp_path / "kh", "foo", bad)
    assert not (tmp_path / "kh").exists()
