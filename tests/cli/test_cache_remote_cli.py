"""`banger build --cache-to/--cache-from` and `banger cache push/pull` against a real
docker-registry with htpasswd (Basic) auth, credentials from each home's docker config."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from banger.core import config
from banger.devtools import registry as devregistry
from banger.kernel import sources
from tests.support_kernel import make_kernel_tree
from tests.support_registry import docker_config, make_image
from tests.support_tools import REPO, need


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    need("docker-registry", "htpasswd")
    root = tmp_path_factory.mktemp("cache-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_bytes(subprocess.run(["htpasswd", "-Bbn", "alice", "s3cret"], check=True,
                                        capture_output=True).stdout)
    reg = devregistry.start(root / "reg", htpasswd=htpasswd)
    yield reg
    reg.stop()


@pytest.fixture
def homes(tmp_path, auth_registry):
    """run(home, *args): the banger CLI with that home's cache, state and docker config."""
    need("mkfs.ext4", "debugfs", "depmod")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=remote\n", "etc/inittab": b"::sysinit:/etc/init.d/rcS\n",
                              "bin/hello": b"#!/bin/sh\necho hi\n"})

    # The homes share the state dir (and so the kernel bundle); their managed SSH keys would not
    # matter: no user's key is baked into an image.
    dirs = config.Dirs(cache=tmp_path / "unused", state=tmp_path / "state" / "banger",
                       config=tmp_path / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", "6.1.0-99-amd64"))

    def run(home: str, *args: str, password: str = "s3cret") -> subprocess.CompletedProcess:
        base = tmp_path / home
        docker_config(base / "home", auth_registry.host, "alice", password)
        env = {**os.environ, "HOME": str(base / "home"), "DOCKER_CONFIG": str(base / "home" / ".docker"),
               "BANGER_CACHE_DIR": str(base / "cache"), "XDG_STATE_HOME": str(tmp_path / "state"),
               "XDG_CONFIG_HOME": str(tmp_path / "config")}
        env.pop("REGISTRY_AUTH_FILE", None)
        return subprocess.run([sys.executable, "-m", "banger", *args], cwd=REPO, capture_output=True, text=True,
                              env=env, timeout=600)

    words = ["build", f"image=oci-layout:{layout}:v1", "name=small", "kernel=k", "boot=no", "--json"]
    return run, words


def statuses(proc: subprocess.CompletedProcess) -> dict[str, str]:
    return {s["step"]: s["status"] for s in json.loads(proc.stdout)["steps"]}


def test_cache_to_then_cache_from_into_an_empty_home_runs_no_step(homes, auth_registry):
    run, words = homes
    target = f"{auth_registry.host}/team/cache"
    a = run("a", *words, "--cache-to", target)
    assert a.returncode == 0, a.stderr[-2000:]
    assert "ran" in statuses(a).values()
    assert f"pushed small to {target}" in a.stderr

    b = run("b", *words, "--cache-from", target)
    assert b.returncode == 0, b.stderr[-2000:]
    assert set(statuses(b).values()) == {"cached"}, b.stderr
    assert json.loads(b.stdout)["artifacts"].keys() == json.loads(a.stdout)["artifacts"].keys()
    assert "warning" not in b.stderr and "pulled from" in b.stderr
    assert run("b", "cache", "verify").returncode == 0

    again = run("a", "cache", "push", target, "--image", "small", "--json")
    assert again.returncode == 0, again.stderr
    stats = json.loads(again.stdout)
    assert stats["bytes_sent"] == 0 and stats["blobs_sent"] == 0 and stats["actions_sent"] == 0

    listed = run("c", "cache", "ls", "--remote", target, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"repository": target, "images": ["small"], "actions": len(statuses(a))}

    c = run("c", "cache", "pull", target, "--image", "small", "--json")
    assert c.returncode == 0, c.stderr
    assert json.loads(c.stdout)["records_pulled"] == len(statuses(a))
    built = run("c", *words)
    assert set(statuses(built).values()) == {"cached"}, built.stderr


def test_a_push_into_a_new_repository_mounts_what_an_earlier_push_sent(homes, auth_registry):
    """`cache push` into a second repository of the registry sends no blob bytes: every blob is
    mounted from the repository this cache pushed to before (with the same Basic auth)."""
    run, words = homes
    first, second = f"{auth_registry.host}/team/mount-a", f"{auth_registry.host}/team/mount-b"
    a = run("a", *words, "--cache-to", first)
    assert a.returncode == 0, a.stderr[-2000:]
    pushed = run("a", "cache", "push", second, "--image", "small", "--json")
    assert pushed.returncode == 0, pushed.stderr
    stats = json.loads(pushed.stdout)
    assert stats["bytes_sent"] == 0 and stats["blobs_sent"] == 0 and stats["blobs_mounted"] > 0, stats
    assert stats["actions_sent"] == len(statuses(a))
    # the registry's own storage: the new repository links every blob the first one holds
    repos = auth_registry.root / "data" / "docker/registry/v2/repositories/team"
    held = {p.name for p in (repos / "mount-a" / "_layers" / "sha256").iterdir()}
    assert held and held == {p.name for p in (repos / "mount-b" / "_layers" / "sha256").iterdir()}
    c = run("c", *words, "--cache-from", second)
    assert c.returncode == 0 and set(statuses(c).values()) == {"cached"}, c.stderr


def test_an_unusable_cache_from_is_one_warning_and_the_build_goes_on(homes, auth_registry):
    run, words = homes
    wrong = run("a", *words, "--cache-from", f"{auth_registry.host}/team/cache", password="wrong")
    assert wrong.returncode == 0, wrong.stderr[-2000:]
    warnings = [line for line in wrong.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "unauthorized" in warnings[0] and "'alice'" in warnings[0], wrong.stderr
    assert "ran" in statuses(wrong).values()

    dead = f"127.0.0.1:{devregistry.free_port()}/team/cache"
    down = run("b", *words, "--cache-from", dead, "--cache-to", dead)
    assert down.returncode == 0, down.stderr[-2000:]
    warnings = [line for line in down.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 2 and all("unreachable" in w for w in warnings), down.stderr
    assert "--cache-to" in warnings[1]


def test_cache_push_and_pull_refuse_bad_arguments_in_one_line(homes, auth_registry):
    run, _ = homes
    for args, expected in [(("cache", "push", f"{auth_registry.host}/x"), "--image NAME"),
                           (("cache", "push", f"{auth_registry.host}/x:v1", "--all"), "no tag"),
                           (("cache", "pull", f"{auth_registry.host}/team/empty", "--image", "small"), "")]:
        out = run("a", *args)
        assert out.returncode == 1 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
        assert expected in out.stderr


def test_a_tampered_record_in_the_registry_is_refused_and_the_step_runs_locally(homes, auth_registry, tmp_path):
    """The record blob of the ext4 step is flipped in the registry's storage: home B says why in
    one line, runs ext4 itself (same bytes), and the later steps are still pulled."""
    from banger.app import remote_layout as layout

    run, words = homes
    target = f"{auth_registry.host}/team/tampered"
    a = run("a", *words, "--cache-to", target)
    assert a.returncode == 0, a.stderr[-2000:]
    image = json.loads((tmp_path / "a" / "cache" / "images" / "small.json").read_text())
    ext4 = next(s["key"] for s in image["steps"] if s["step"] == "ext4")
    body = auth_registry.root / "data" / "docker/registry/v2/repositories/team/tampered/_manifests/tags"
    manifest_digest = (body / layout.action_tag(ext4) / "current" / "link").read_text().strip()
    blobs = auth_registry.root / "data" / "docker/registry/v2/blobs/sha256"
    manifest = json.loads((blobs / manifest_digest[7:9] / manifest_digest[7:] / "data").read_bytes())
    config = manifest["config"]["digest"]
    data = blobs / config[7:9] / config[7:] / "data"
    data.write_bytes(data.read_bytes().replace(b'"ext4"', b'"ext5"'))

    b = run("b", *words, "--cache-from", target)
    assert b.returncode == 0, b.stderr[-2000:]
    warnings = [line for line in b.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1, b.stderr
    assert f"refused the entry for {ext4[:12]}" in warnings[0] and "digest mismatch" in warnings[0]
    assert warnings[0].endswith("the step runs locally")
    steps = statuses(b)
    assert steps["ext4"] == "ran" and steps["ownership"] == "cached", b.stderr
    assert run("b", "cache", "verify").returncode == 0


def test_with_trusted_keys_only_entries_signed_by_a_trusted_key_are_used(homes, auth_registry, tmp_path):
    run, words = homes
    config_file = tmp_path / "config" / "banger" / "config.json"
    keygen = run("a", "cache", "keygen")
    assert keygen.returncode == 0, keygen.stderr
    public = keygen.stdout.strip()
    assert public.startswith("banger-ed25519:") and "trusted_keys" in keygen.stderr
    assert run("a", "cache", "keygen").returncode == 1  # never replaced
    key_file = tmp_path / "config" / "banger" / "cache-signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600

    signed, unsigned = f"{auth_registry.host}/team/signed", f"{auth_registry.host}/team/unsigned"
    assert run("a", *words, "--cache-to", signed).returncode == 0
    key_file.rename(tmp_path / "key.away")  # the same image pushed without a key: unsigned entries
    assert run("a", "cache", "push", unsigned, "--image", "small").returncode == 0

    config_file.write_text(json.dumps({"trusted_keys": [public]}))
    b = run("b", *words, "--cache-from", signed)
    assert b.returncode == 0 and set(statuses(b).values()) == {"cached"}, b.stderr

    c = run("c", *words, "--cache-from", unsigned)
    assert c.returncode == 0, c.stderr
    warnings = [line for line in c.stderr.splitlines() if line.startswith("warning")]
    assert warnings and all("not signed and trusted_keys is set" in w for w in warnings), c.stderr
    assert "cached" not in statuses(c).values()
    pull = run("d", "cache", "pull", unsigned, "--image", "small")
    assert pull.returncode == 1 and "not signed and trusted_keys is set" in pull.stderr
    assert pull.stderr.count("\n") == 1

    other = "banger-ed25519:" + __import__("base64").b64encode(b"\1" * 32).decode()
    config_file.write_text(json.dumps({"trusted_keys": [other]}))
    e = run("e", "cache", "pull", signed, "--image", "small")
    assert e.returncode == 1 and "which is not in trusted_keys" in e.stderr, e.stderr
    config_file.unlink()
