"""`banger build` end to end on a real Debian bookworm image from a real registry, with the Debian
cloud kernel, booted under QEMU (TCG here) and probed over SSH. One cold boot, one boot after a
template edit; everything else is shared through session fixtures."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from banger.core.config import volatile_trees_dir
from banger.core.fsutil import remove_tree
from banger.rootfs import debugfs
from tests.support_tools import REPO, need

pytestmark = pytest.mark.slow
STEPS = ["flatten", "ext4", "ownership", "inject", "stage-kernel", "boot"]


@pytest.fixture(scope="session")
def e2e_env(tmp_path_factory, debian_bundle):
    need("qemu-system-x86_64", "mkfs.ext4", "debugfs", "e2fsck")
    root = tmp_path_factory.mktemp("e2e")
    state = root / "state" / "banger"
    state.mkdir(parents=True)
    (state / "kernels").symlink_to(debian_bundle.path.parent)
    yield {"BANGER_CACHE_DIR": str(root / "cache"), "XDG_STATE_HOME": str(root / "state"),
           "XDG_CONFIG_HOME": str(root / "config")}
    ram = volatile_trees_dir((root / "cache").resolve())  # the flattened tree banger kept in RAM
    if ram is not None:
        remove_tree(ram)


def banger(env, *args, timeout=1200):
    proc = subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, f"banger {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def statuses(result):
    return {s["step"]: s["status"] for s in result["steps"] if not s["step"].startswith("fetch:")}


@pytest.fixture(scope="session")
def cold(e2e_env, debian_image_ref):
    return json.loads(banger(e2e_env, "build", f"image={debian_image_ref}", "--json").stdout)


def test_cold_build_runs_all_seven_steps_and_the_vm_answers_over_ssh(cold, e2e_env):
    assert statuses(cold) == {s: "ran" for s in STEPS}
    fetched = [s for s in cold["steps"] if s["step"].startswith("fetch:")]
    assert len(fetched) >= 2 and all(s["status"] == "ran" for s in fetched)
    assert cold["image"] == "debian-bookworm"
    for name in ("rootfs", "kernel", "initrd", "boot-result"):
        assert os.path.isfile(cold["artifacts"][name]), name
    probe = json.loads(open(cold["artifacts"]["boot-result"]).read())
    assert probe["uid"] == 0
    assert probe["os_release"]["ID"] == "debian"
    assert probe["units"]["banger-network.service"]["active"] == "active"
    assert all(u["load"] == "loaded" and u["result"] == "success" for u in probe["units"].values()), probe["units"]
    # nothing failed: the Debian kernel's injected modules make kmod-static-nodes.service fail in
    # this image, which has no kmod, unless stage-kernel masks it (without the mask the probe lists
    # it; the probe does not wait for the rest of the boot, so the state may still be "starting")
    assert probe["failed_units"] == [] and probe["system_state"] != "degraded", probe
    mask = debugfs.run(cold["artifacts"]["rootfs"], ["stat /etc/systemd/system/kmod-static-nodes.service"])
    assert 'Fast link dest: "/dev/null"' in mask[0].output, mask[0].output
    assert probe["clean_shutdown"]
    fsck = subprocess.run(["e2fsck", "-fn", cold["artifacts"]["rootfs"]], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_second_identical_build_is_all_cached(cold, e2e_env, debian_image_ref):
    again = json.loads(banger(e2e_env, "build", f"image={debian_image_ref}", "--json").stdout)
    assert set(s["status"] for s in again["steps"]) == {"cached"}
    assert again["artifacts"] == cold["artifacts"]
    shown = json.loads(banger(e2e_env, "image", "show", "debian-bookworm", "--json").stdout)
    assert shown["artifacts"] == cold["artifacts"]
    listed = json.loads(banger(e2e_env, "image", "list", "--json").stdout)
    assert [i["name"] for i in listed] == ["debian-bookworm"]


def test_template_edit_reruns_only_inject_stage_kernel_and_boot(cold, e2e_env, debian_image_ref, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    agent = next(templates.glob("agent.sh.j2"))
    agent.write_text(agent.read_text() + "\n# edited by the template-edit test\n")
    env = {**e2e_env, "BANGER_TEMPLATES_DIR": str(templates)}
    explained = json.loads(banger(env, "build", f"image={debian_image_ref}", "--explain", "--json").stdout)
    plan = {s["step"]: s for s in explained["steps"] if not s["step"].startswith("fetch:")}
    assert [s for s in STEPS if plan[s]["status"] == "will-run"] == ["inject", "stage-kernel", "boot"]
    assert plan["inject"]["why"] == "input assets: agent.sh.j2 changed"  # the file, not two digests
    edited = json.loads(banger(env, "build", f"image={debian_image_ref}", "--json").stdout)
    assert statuses(edited) == {"flatten": "cached", "ext4": "cached", "ownership": "cached",
                                "inject": "ran", "stage-kernel": "ran", "boot": "ran"}
    assert edited["artifacts"]["rootfs"] != cold["artifacts"]["rootfs"]


def test_check_rebuilds_every_step_and_finds_the_same_bytes(cold, e2e_env, debian_image_ref):
    result = json.loads(banger(e2e_env, "build", f"image={debian_image_ref}", "--check", "--json").stdout)
    assert result["identical"], result["differences"]
    assert {"flatten", "ext4", "ownership", "inject", "stage-kernel"} <= set(result["checked"])


def test_doit_build_in_a_checkout_does_what_banger_build_does(cold, e2e_env, debian_image_ref):
    """`doit build image=REF` (dodo.py) on the warm cache: every step cached, same artifacts."""
    proc = subprocess.run([sys.executable, "-m", "doit", "build", f"image={debian_image_ref}"],
                          capture_output=True, text=True, env={**os.environ, **e2e_env}, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert cold["artifacts"]["rootfs"] in proc.stdout
    assert "ran" not in proc.stdout.split("image debian-bookworm", 1)[1]
    listing = subprocess.run([sys.executable, "-m", "doit", "list", f"image={debian_image_ref}"],
                             capture_output=True, text=True, env={**os.environ, **e2e_env}, cwd=REPO)
    assert {"fetch", "flatten", "ext4", "ownership", "inject", "stage-kernel", "boot", "build"} <= set(
        line.split()[0] for line in listing.stdout.splitlines() if line.strip())


def test_export_then_import_on_another_cache_makes_the_build_a_no_op(cold, e2e_env, debian_image_ref, tmp_path):
    """CI warms a cache and exports the image; another machine imports it and rebuilds nothing."""
    archive = tmp_path / "debian.tar.zst"
    banger(e2e_env, "build", f"image={debian_image_ref}")  # the name points at the last build: this one
    banger(e2e_env, "cache", "export", str(archive), "--image", "debian-bookworm")
    other = {**e2e_env, "BANGER_CACHE_DIR": str(tmp_path / "other-cache")}
    imported = json.loads(banger(other, "cache", "import", str(archive), "--json").stdout)
    assert imported["images"] == ["debian-bookworm"]
    rebuilt = json.loads(banger(other, "build", f"image={debian_image_ref}", "--json").stdout)
    assert set(s["status"] for s in rebuilt["steps"]) == {"cached"}, rebuilt["steps"]
    verify = json.loads(banger(other, "cache", "verify", "--json").stdout)
    assert verify["corrupt"] == [] and verify["ok"] >= len(cold["artifacts"])
