"""The inject step on small real ext4 images (mkfs.ext4 -d), read back with real debugfs and e2fsck."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from banger.rootfs import debugfs, guest_assets as ga, sshkey
from banger.steps import inject
from banger.engine.tasks import Build
from banger.core.errors import BuildError
from banger.engine.spec import BuildSpec
from banger.core.store import ActionRecord, Store
from tests.conftest import need

NET = ga.NetworkSettings()
PINNED = 1700000000


@pytest.fixture(autouse=True)
def _tools():
    need("mkfs.ext4", "debugfs", "e2fsck")


def make_image(tmp_path: Path, files: dict[str, str], dirs: tuple[str, ...] = (),
               links: dict[str, str] | None = None, name: str = "rootfs.ext4") -> Path:
    """A 32 MiB ext4 image from a tiny tree, built the way the ext4 step does it (mkfs.ext4 -d)."""
    tree = tmp_path / (name + ".tree")
    for d in dirs:
        (tree / d).mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    for path, target in (links or {}).items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).symlink_to(target)
    tree.mkdir(parents=True, exist_ok=True)
    for p in [tree, *tree.rglob("*")]:
        os.utime(p, (PINNED, PINNED), follow_symlinks=False)
    image = tmp_path / name
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(PINNED)}
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), "-U", "5f1d3c2a-0000-4000-8000-000000000001",
                    "-E", "hash_seed=5f1d3c2a-0000-4000-8000-000000000002", str(image), "32M"],
                   check=True, env=env, capture_output=True)
    return image


def debian_like(tmp_path: Path, **kw) -> Path:
    """Merged /usr, systemd, no sshd (so first boot installs it), an authorized_keys of its own."""
    return make_image(tmp_path, {
        "etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
        "usr/lib/systemd/systemd": "placeholder",
        "usr/lib/systemd/system/ssh.service": "[Unit]\n",
        "root/.ssh/authorized_keys": "ssh-rsa AAAAold someone-else\n",
    }, dirs=("etc/ssh/sshd_config.d", "etc/systemd/system"), links={"lib": "usr/lib", "sbin": "usr/sbin"}, **kw)


def stat(image: Path, path: str) -> dict:
    block = debugfs.run(image, [f"stat {path}"])[0]
    text = "\n".join(block.output)
    m = re.search(r"Type:\s*(\S+)\s+Mode:\s*(\d+)", text)
    assert m, f"{path} not in image: {text}"
    u = re.search(r"User:\s*(\d+)\s+Group:\s*(\d+)", text)
    link = re.search(r'Fast link dest: "(.*)"', text)
    mtime = re.search(r"^\s*mtime:\s*0x([0-9a-f]+)", text, re.M)
    return {"type": m.group(1), "mode": int(m.group(2), 8), "uid": int(u.group(1)), "gid": int(u.group(2)),
            "link": link.group(1) if link else None, "mtime": int(mtime.group(1), 16)}


def cat(image: Path, path: str, tmp_path: Path) -> bytes:
    out = tmp_path / "dumped"
    out.unlink(missing_ok=True)
    debugfs.run(image, [f"dump {path} {out}"])
    assert out.exists(), f"{path} missing from image"
    return out.read_bytes()


def exists(image: Path, path: str) -> bool:
    return inject.stat_paths(image, [path])[path] is not None


def fsck_clean(image: Path) -> None:
    proc = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def do_inject(image: Path, tmp_path: Path) -> tuple[ga.ImageLayout, inject.InjectReport]:
    scratch = tmp_path / f"scratch-{image.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    layout = inject.probe_layout(image, scratch)
    report = inject.inject_agents(image, ga.render(NET, layout), scratch)
    return layout, report


# ---- the injected files ------------------------------------------------------------------------
def test_inject_systemd_image(tmp_path):
    image = debian_like(tmp_path)
    layout, report = do_inject(image, tmp_path)
    assert layout == ga.ImageLayout("systemd", "/usr/lib", has_sshd=False)
    fsck_clean(image)

    expected_modes = {
        "/usr/lib/banger/network.sh": 0o755, "/usr/lib/banger/first-boot.sh": 0o755,
        "/usr/lib/banger/agent.sh": 0o755, "/usr/lib/banger/sshd-keys.sh": 0o755,
        "/usr/lib/banger/identity.sh": 0o755,
        "/etc/banger/network.env": 0o644, "/etc/ssh/sshd_config.d/banger.conf": 0o644,
        "/var/lib/banger/first-boot-pending": 0o644,
        "/usr/lib/systemd/system-preset/80-banger.preset": 0o644,
        **{f"/usr/lib/systemd/system/{u}": 0o644 for u in ga.UNITS},
    }
    for path, mode in expected_modes.items():
        st = stat(image, path)
        assert (st["type"], st["mode"], st["uid"], st["gid"]) == ("regular", mode, 0, 0), path
    for path, mode in {"/root": 0o700, "/root/.ssh": 0o700, "/usr/lib/banger": 0o755,
                       "/var/lib/banger": 0o755, "/etc/systemd/system/multi-user.target.wants": 0o755}.items():
        st = stat(image, path)
        assert (st["type"], st["mode"], st["uid"], st["gid"]) == ("directory", mode, 0, 0), path

    # no user's key goes in (identity.sh adds the host's at boot): the image's own is left alone
    assert cat(image, "/root/.ssh/authorized_keys", tmp_path) == b"ssh-rsa AAAAold someone-else\n"
    for unit in ga.UNITS:
        st = stat(image, f"/etc/systemd/system/multi-user.target.wants/{unit}")
        assert st["type"] == "symlink" and st["uid"] == 0
        assert st["link"] == f"/usr/lib/systemd/system/{unit}"
    preset = cat(image, "/usr/lib/systemd/system-preset/80-banger.preset", tmp_path).decode()
    assert all(f"enable {u}" in preset.splitlines() for u in ga.UNITS)
    assert cat(image, "/usr/lib/banger/network.sh", tmp_path) == ga.render_template("network.sh.j2", NET)
    assert not exists(image, "/etc/inittab") and not exists(image, "/usr/lib/banger/sysv-boot.sh")
    for unit, drop_in in zip(ga.SSHD_UNITS, ga.SSHD_EARLY_DROP_INS):
        st = stat(image, drop_in)
        assert (st["type"], st["mode"], st["uid"], st["gid"]) == ("regular", 0o644, 0, 0), drop_in
        assert cat(image, drop_in, tmp_path) == ga.render_template("sshd-early.conf.j2", NET, unit=unit)
    for generator in ga.MASKED_GENERATORS:
        st = stat(image, f"{ga.GENERATOR_MASK_DIR}/{generator}")
        assert (st["type"], st["link"], st["uid"]) == ("symlink", "/dev/null", 0), generator
    assert report.links == len(ga.UNITS) + len(ga.MASKED_GENERATORS)


def test_inject_pins_timestamps_to_the_input_root(tmp_path):
    image = debian_like(tmp_path)
    root_mtime = stat(image, "/")["mtime"]
    _, report = do_inject(image, tmp_path)
    assert report.pinned_time == root_mtime == PINNED
    for path in ("/usr/lib/banger/agent.sh", "/var/lib/banger", "/usr/lib/banger/identity.sh"):
        assert stat(image, path)["mtime"] == root_mtime, path


def test_inject_is_reproducible_and_idempotent(tmp_path):
    a = debian_like(tmp_path / "a")
    b = debian_like(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()  # the fixture itself is reproducible
    do_inject(a, tmp_path / "a")
    do_inject(b, tmp_path / "b")
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(b.read_bytes()).hexdigest()
    # injecting into an already injected image replaces every file and link (rm before write)
    do_inject(a, tmp_path / "a")
    fsck_clean(a)
    assert stat(a, f"/etc/systemd/system/multi-user.target.wants/{ga.UNITS[0]}")["type"] == "symlink"


def test_image_with_sshd_gets_no_first_boot_marker(tmp_path):
    image = make_image(tmp_path, {"usr/lib/systemd/systemd": "x", "usr/sbin/sshd": "x"},
                       dirs=("usr/lib/systemd/system",), links={"sbin": "usr/sbin"})
    layout, _ = do_inject(image, tmp_path)
    assert layout.has_sshd
    assert not exists(image, ga.FIRST_BOOT_MARKER)
    assert stat(image, "/root")["mode"] == 0o700  # created when the image had no /root
    fsck_clean(image)


def test_unmerged_usr_puts_units_under_lib(tmp_path):
    image = make_image(tmp_path, {"lib/systemd/systemd": "x"}, dirs=("lib/systemd/system", "usr/lib"))
    layout, _ = do_inject(image, tmp_path)
    assert layout.lib_dir == "/lib"
    assert stat(image, f"/lib/systemd/system/{ga.UNITS[0]}")["mode"] == 0o644
    assert stat(image, f"/etc/systemd/system/multi-user.target.wants/{ga.UNITS[0]}")["link"] == \
        f"/lib/systemd/system/{ga.UNITS[0]}"
    assert exists(image, "/lib/systemd/system-preset/80-banger.preset")
    fsck_clean(image)


def test_busybox_image_without_systemd_gets_an_inittab_hook(tmp_path):
    inittab = "::sysinit:/sbin/openrc sysinit\n::wait:/sbin/openrc default\ntty1::respawn:/sbin/getty 38400 tty1\n"
    image = make_image(tmp_path, {"etc/inittab": inittab, "etc/os-release": "ID=alpine\n", "bin/busybox": "x"},
                       links={"sbin/init": "/bin/busybox"})
    layout, _ = do_inject(image, tmp_path)
    assert layout.init == "busybox"
    hook = "::once:/usr/lib/banger/sysv-boot.sh"
    assert cat(image, "/etc/inittab", tmp_path).decode() == inittab + hook + "\n"
    st = stat(image, "/usr/lib/banger/sysv-boot.sh")
    assert (st["mode"], st["uid"]) == (0o755, 0)
    assert stat(image, "/etc/inittab")["mode"] == 0o644
    assert not exists(image, "/etc/systemd/system/multi-user.target.wants")
    # a second inject keeps exactly one hook line
    do_inject(image, tmp_path)
    assert cat(image, "/etc/inittab", tmp_path).decode().count(hook) == 1
    fsck_clean(image)


def test_sysvinit_image_gets_a_line_with_id_and_runlevels(tmp_path):
    inittab = "id:2:initdefault:\nsi::sysinit:/etc/init.d/rcS\n1:2345:respawn:/sbin/getty 38400 tty1\n"
    image = make_image(tmp_path, {"etc/inittab": inittab, "sbin/init": "elf"})
    layout, _ = do_inject(image, tmp_path)
    assert layout.init == "sysvinit"
    assert cat(image, "/etc/inittab", tmp_path).decode() == inittab + "bngr:2345:once:/usr/lib/banger/sysv-boot.sh\n"
    fsck_clean(image)


def test_inittab_style_and_hook_replacement():
    assert ga.inittab_style(b"id:2:initdefault:\n", "/bin/busybox") == "busybox"
    assert ga.inittab_style(b"::sysinit:/etc/init.d/rcS\n", None) == "busybox"
    assert ga.inittab_style(b"id:2:initdefault:\nsi::sysinit:/etc/init.d/rcS\n", None) == "sysvinit"
    # an image once injected as sysvinit and now seen as busybox gets its line swapped, not doubled
    old = b"si::sysinit:/etc/init.d/rcS\nbngr:2345:once:/usr/lib/banger/sysv-boot.sh\n"
    assert ga.with_inittab_hook(old, "busybox") == b"si::sysinit:/etc/init.d/rcS\n::once:/usr/lib/banger/sysv-boot.sh\n"


def test_image_without_any_init_is_refused(tmp_path):
    image = make_image(tmp_path, {"etc/os-release": "ID=distroless\n"})
    with pytest.raises(BuildError) as err:
        do_inject(image, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "neither systemd" in message and "/etc/inittab" in message and "install systemd" in message


def test_directory_where_a_file_goes_is_refused(tmp_path):
    image = make_image(tmp_path, {"usr/lib/systemd/systemd": "x"},
                       dirs=("usr/lib/systemd/system", "etc/ssh/sshd_config.d/banger.conf"))
    with pytest.raises(BuildError, match=r"directory at /etc/ssh/sshd_config.d/banger.conf"):
        do_inject(image, tmp_path)


# ---- the assets digest -----------------------------------------------------------------------
def test_assets_digest_follows_template_bytes_and_params(tmp_path):
    copy = tmp_path / "templates"
    shutil.copytree(ga.template_dir(), copy)
    first = ga.assets_digest(NET, copy)
    assert first == ga.assets_digest(NET, copy) == ga.assets_digest(ga.NetworkSettings(), copy)
    assert first == ga.assets_digest(NET)  # the copy has the same bytes as the shipped templates
    agent = copy / "agent.sh.j2"
    agent.write_bytes(agent.read_bytes() + b"# edited\n")
    edited = ga.assets_digest(NET, copy)
    assert edited != first
    assert ga.assets_digest(ga.NetworkSettings(address="10.0.3.15/24"), copy) != edited


def test_network_settings_are_validated():
    with pytest.raises(ga.AssetError, match="not ADDRESS/PREFIX"):
        ga.NetworkSettings(address="10.0.2.300/24")
    with pytest.raises(ga.AssetError, match="no prefix length"):
        ga.NetworkSettings(address="10.0.2.15")
    with pytest.raises(ga.AssetError, match="gateway"):
        ga.NetworkSettings(gateway="router")


# ---- managed key -----------------------------------------------------------------------------
@pytest.mark.parametrize("generator", ["ssh-keygen", "cryptography"])
def test_managed_key_created_once_and_usable_by_paramiko(tmp_path, monkeypatch, generator):
    if generator == "ssh-keygen":
        need("ssh-keygen")
    else:
        real_which = shutil.which
        monkeypatch.setattr(sshkey.shutil, "which", lambda name: None if name == "ssh-keygen" else real_which(name))
    key = sshkey.ensure_key(tmp_path / "state")
    assert key.private_path == tmp_path / "state" / "ssh" / "id_ed25519"
    assert key.private_path.stat().st_mode & 0o777 == 0o600
    assert key.private_path.parent.stat().st_mode & 0o777 == 0o700
    loaded = paramiko.Ed25519Key.from_private_key_file(str(key.private_path))
    assert key.public_line == f"ssh-ed25519 {loaded.get_base64()} banger"
    assert (key.private_path.parent / "id_ed25519.pub").read_text() == key.public_line + "\n"
    before = key.private_path.read_bytes()
    assert sshkey.ensure_key(tmp_path / "state") == key
    assert key.private_path.read_bytes() == before
    assert not [p for p in key.private_path.parent.iterdir() if p.name.startswith(".")]


def test_managed_key_garbage_is_reported(tmp_path):
    path = sshkey.key_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("not a key\n")
    with pytest.raises(sshkey.SshKeyError, match="remove it and banger will create a new one"):
        sshkey.ensure_key(tmp_path)


# ---- the doit step ---------------------------------------------------------------------------
def step_build(store_root: Path, image: Path, state: Path) -> Build:
    """A Build whose ownership step already produced `image` (its record points at the blob)."""
    from banger.core.config import Dirs

    store = Store(store_root)
    staged = store.root / "staging" / "input.ext4"
    shutil.copyfile(image, staged)
    digest = store.ingest_file(staged)
    build = Build(store, log=lambda msg: None)
    build.records["ownership"] = ActionRecord(key="k", step="ownership", step_version="1", inputs={},
                                              params={}, tools={}, outputs={"image": digest})
    build.context["dirs"] = Dirs(cache=store_root, state=state, config=state / "config")
    return build


def run_inject_task(build: Build) -> str:
    [task] = list(inject.tasks(build, BuildSpec(image="test")))
    if not task["uptodate"][0]():
        result = task["actions"][0]()
        assert result is None, build.error
    return build.output("inject", "image")


def test_step_runs_caches_and_reruns_on_template_edit(tmp_path, monkeypatch):
    image = debian_like(tmp_path)
    state = tmp_path / "state"
    templates = tmp_path / "templates"
    shutil.copytree(ga.template_dir(), templates)
    monkeypatch.setattr(ga, "template_dir", lambda: templates)

    build = step_build(tmp_path / "cache", image, state)
    out = run_inject_task(build)
    assert build.report[-1].status == "ran"
    record = build.records["inject"]
    assert record.inputs["image"] == build.output("ownership", "image")
    assert record.params == NET.params() and record.info["init"] == "systemd"
    result = build.store.path(out)
    fsck_clean(result)
    # no user's key in it: another user (another state dir, another managed key) gets the very same
    # image, with the same key, from another cache
    assert sshkey.ensure_key(state).public_line != sshkey.ensure_key(tmp_path / "state2").public_line
    other = step_build(tmp_path / "cache2", image, tmp_path / "state2")
    assert run_inject_task(other) == out and other.records["inject"].key == record.key
    assert cat(result, "/root/.ssh/authorized_keys", tmp_path) == b"ssh-rsa AAAAold someone-else\n"
    assert build.store.path(build.output("ownership", "image")).read_bytes() == image.read_bytes()

    again = step_build(tmp_path / "cache", image, state)
    assert run_inject_task(again) == out
    assert again.report[-1].status == "cached"

    script = templates / "agent.sh.j2"
    script.write_text(script.read_text().replace("exit 0\n", "echo edited\nexit 0\n"))
    edited = step_build(tmp_path / "cache", image, state)
    new_out = run_inject_task(edited)
    assert edited.report[-1].status == "ran" and new_out != out
    assert b"echo edited" in cat(edited.store.path(new_out), "/usr/lib/banger/agent.sh", tmp_path)


def test_step_failure_is_one_line_and_caches_nothing(tmp_path):
    image = make_image(tmp_path, {"etc/os-release": "ID=distroless\n"})
    build = step_build(tmp_path / "cache", image, tmp_path / "state")
    [task] = list(inject.tasks(build, BuildSpec(image="test")))
    assert not task["uptodate"][0]()
    assert task["actions"][0]() is not None
    assert "neither systemd" in build.error and "\n" not in build.error
    assert "inject" not in build.records
    assert not list((tmp_path / "cache" / "actions").glob("*/*.json"))
    assert not list((tmp_path / "cache" / "staging").iterdir())


def test_fsck_rejects_a_damaged_image(tmp_path):
    from banger.rootfs import e2fs

    image = debian_like(tmp_path)
    e2fs.fsck(image)
    debugfs.run(image, ["sif /etc/os-release links_count 3"], write=True)
    with pytest.raises(e2fs.E2fsError, match=r"e2fsck found a problem .*nothing was cached"):
        e2fs.fsck(image)


def test_coldplug_stays_unordered_when_the_network_waits_for_it(tmp_path):
    """ifupdown: ifupdown-pre.service runs after udev's coldplug and before network.target, which
    ssh.service follows; ordering coldplug after sshd would make a cycle systemd breaks at random."""
    plain = debian_like(tmp_path, name="plain.ext4")
    layout, _ = do_inject(plain, tmp_path)
    assert not layout.coldplug_before_network and exists(plain, ga.UDEV_TRIGGER_DROP_IN)
    with_ifupdown = make_image(tmp_path, {
        "usr/lib/systemd/systemd": "placeholder",
        "usr/lib/systemd/system/ssh.service": "[Unit]\nAfter=network.target\n",
        "usr/lib/systemd/system/ifupdown-pre.service": "[Unit]\nAfter=systemd-udev-trigger.service\n",
    }, dirs=("etc/systemd/system",), links={"lib": "usr/lib"}, name="ifupdown.ext4")
    layout, _ = do_inject(with_ifupdown, tmp_path)
    assert layout.coldplug_before_network and not exists(with_ifupdown, ga.UDEV_TRIGGER_DROP_IN)
    for drop_in in ga.SSHD_EARLY_DROP_INS:  # sshd still starts early
        assert exists(with_ifupdown, drop_in)
