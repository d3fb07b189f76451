"""Agent auth sync and `vm acp` on one real VM (QEMU under TCG): the host user's auth files land
at the same paths under /root, 0600, owned by root; an unreadable one is one warning line; the
secrets reach no cache, log or output; `--no-auth-sync` keeps the guest's copy; `vm acp` on a
guest without opencode is a one-line error.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from tests.vm.test_vm_e2e import SMALL, banger, env, ssh  # noqa: F401  (env: the module's fixture)

pytestmark = pytest.mark.slow

OPENCODE = ".local/share/opencode/auth.json"
CLAUDE = ".claude/.credentials.json"
PI = ".pi/agent/auth.json"


def places_holding(root: Path, marker: bytes, skip=lambda p: False) -> list[Path]:
    found = []
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            if skip(p) or p.is_symlink() or not p.is_file():
                continue
            with open(p, "rb") as fh:
                if marker in fh.read():
                    found.append(p)
    return found


def guest_file(env, name, rel) -> tuple[str, str]:
    """(`mode owner`, content) of /root/REL in the guest."""
    meta = ssh(env, name, f"stat -c '%a %U' /root/{rel}").stdout.strip()
    return meta, ssh(env, name, f"cat /root/{rel}").stdout


def test_auth_files_are_synced_0600_and_never_leak(env, tmp_path):
    marker = "banger-secret-" + secrets.token_hex(12)
    home = tmp_path / "home"
    opencode = {"anthropic": {"type": "api", "key": f"sk-{marker}-oc"}}
    (home / OPENCODE).parent.mkdir(parents=True)
    (home / OPENCODE).write_text(repr(opencode))
    (home / CLAUDE).parent.mkdir(parents=True)
    (home / CLAUDE).write_text(f'{{"claudeAiOauth": {{"accessToken": "{marker}-claude"}}}}')
    (home / CLAUDE).chmod(0o600)
    (home / PI).parent.mkdir(parents=True)
    (home / PI).symlink_to(home / "nowhere.json")  # unreadable (as root, a dangling symlink)
    vars_ = {**env["vars"], "HOME": str(home)}
    outputs = []

    created = banger(vars_, "vm", "create", "vmtest", "--name", "au1", *SMALL)
    outputs.append(created.stdout + created.stderr)
    warnings = [line for line in created.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"~/{PI}" in warnings[0] and "--no-auth-sync" in warnings[0], created.stderr
    assert f"~/{OPENCODE}" in created.stderr and f"~/{CLAUDE}" in created.stderr  # the synced paths are said
    for rel in (OPENCODE, CLAUDE):
        meta, content = guest_file(env, "au1", rel)
        assert meta == "600 root" and content == (home / rel).read_text(), (rel, meta)
    assert ssh(env, "au1", f"test -e /root/{PI}", check=False).returncode == 1
    assert ssh(env, "au1", "stat -c %a /root/.claude /root/.local/share/opencode").stdout.split() == ["700", "700"]

    # `vm acp` on a guest without opencode: one line, before any bridge
    acp = banger(vars_, "vm", "acp", "au1", check=False)
    assert acp.returncode == 1 and acp.stdout == "", acp
    assert acp.stderr.count("\n") == 1 and acp.stderr.startswith("error: au1 has no opencode")
    assert "npm i -g opencode-ai" in acp.stderr

    # --no-auth-sync at start keeps the guest's copy; a start with sync brings the new one
    (home / CLAUDE).write_text(f'{{"claudeAiOauth": {{"accessToken": "{marker}-rotated"}}}}')
    outputs.append(banger(vars_, "vm", "stop", "au1").stderr)
    started = banger(vars_, "vm", "start", "au1", "--no-auth-sync")
    outputs.append(started.stdout + started.stderr)
    assert "synced" not in started.stderr and "warning" not in started.stderr, started.stderr
    assert marker + "-claude" in guest_file(env, "au1", CLAUDE)[1]
    restarted = banger(vars_, "vm", "restart", "au1")
    outputs.append(restarted.stdout + restarted.stderr)
    assert guest_file(env, "au1", CLAUDE) == ("600 root", (home / CLAUDE).read_text())

    # --no-auth-sync copies nothing (restart: the same flag as create's, without a second VM)
    ssh(env, "au1", f"rm -f /root/{OPENCODE} /root/{CLAUDE}")
    outputs.append(banger(vars_, "vm", "restart", "au1", "--no-auth-sync").stderr)
    assert ssh(env, "au1", f"ls /root/{OPENCODE} /root/{CLAUDE}", check=False).returncode != 0

    # the secrets are in no output, no cache (images, CAS blobs, trees), no VM log or record
    assert not [o for o in outputs if marker in o]
    root = env["root"]
    assert places_holding(root / "cache", marker.encode()) == []
    disk = lambda p: p.name.startswith("disk.")  # noqa: E731  (the guest's own disk holds its files)
    assert places_holding(env["state"], marker.encode(), skip=disk) == []
    vm_dir = env["state"] / "vms" / "au1"
    assert (vm_dir / "console.log").is_file()
    banger(vars_, "vm", "rm", "--force", "au1")
