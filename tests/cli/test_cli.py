"""The installed CLI: pip install . works, ships templates, and bad input gets one-line errors."""
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def banger(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO, timeout=120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install .` (not editable) into a fresh venv that sees the already-installed deps
    (this interpreter's site-packages, through a .pth: it may itself be a venv)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_deps_from_the_test_interpreter.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps",
                           str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return venv


def test_pip_install_gives_a_working_banger_with_templates(installed, tmp_path):
    exe = installed / "bin" / "banger"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "build" in out.stdout and "cache" in out.stdout
    code = ("import banger, banger.templates, pathlib; "
            "p = pathlib.Path(banger.templates.__path__[0]); "
            "print(banger.__file__); print(sorted(x.name for x in p.iterdir()))")
    probe = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True,
                           text=True, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    module_file, names = probe.stdout.splitlines()
    assert str(installed) in module_file  # the installed copy, not the checkout
    assert any(n.endswith(".j2") for n in eval(names)), names
    version = subprocess.run([str(exe), "version", "--json"], capture_output=True, text=True, cwd=tmp_path)
    data = json.loads(version.stdout)
    assert data["version"] and data["commit"] != "unknown" and data["build_date"] != "unknown"


@pytest.mark.parametrize("words, message", [
    (["debian"], "unknown build argument 'debian'"),
    (["name=x"], "no image given"),
    (["image=a", "size=lots"], "size='lots' is not a size"),
    (["image=a", "boot=maybe"], "boot='maybe'"),
    (["image=a", "hypervisor=vmware"], "hypervisor='vmware'"),
])
def test_bad_build_words_give_one_line_errors(words, message, cache_dir):
    out = banger("build", *words)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not cache_dir.exists() or not list((cache_dir / "blobs").rglob("*"))


def test_cache_dir_option_and_env_choose_the_cache(tmp_path):
    out = banger("--cache-dir", str(tmp_path / "a"), "cache", "du", "--json")
    assert json.loads(out.stdout)["path"] == str(tmp_path / "a")
    out = banger("cache", "du", "--json", env={"BANGER_CACHE_DIR": str(tmp_path / "b")})
    assert json.loads(out.stdout)["path"] == str(tmp_path / "b")
    out = banger("cache", "du", "--json", env={"BANGER_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "x")})
    assert json.loads(out.stdout)["path"] == str(tmp_path / "x" / "banger")


def test_image_show_of_unknown_name_says_how_to_list(cache_dir):
    out = banger("image", "show", "nope")
    assert out.returncode == 1 and "banger image list" in out.stderr


def test_doctor_reports_every_tool(cache_dir):
    out = banger("doctor", "--json")
    rows = json.loads(out.stdout)
    names = {c["name"] for c in rows}
    assert {"mkfs.ext4", "debugfs", "e2fsck", "qemu-system-x86_64", "firecracker", "/dev/kvm",
            "debootstrap", "skopeo", "umoci", "docker-registry", "busybox"} <= names
    missing = [c for c in rows if not c["ok"]]
    assert all(c["fix"] for c in missing)
    assert out.returncode == (1 if any(c["required"] for c in missing) else 0)


def test_doctor_exits_1_only_for_a_missing_required_tool(tmp_path, cache_dir):
    import shutil

    from banger.app.doctor import REQUIRED

    tools = [cmd for cmd, _, _ in REQUIRED]
    if any(shutil.which(t) is None for t in tools):
        pytest.skip("a required tool is missing on this host")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    out = banger("doctor", env={"PATH": str(bin_dir)})  # no optional tool, all required ones
    assert out.returncode == 0 and "\n  absent   skopeo " in out.stdout, out.stdout
    (bin_dir / "debugfs").unlink()
    out = banger("doctor", env={"PATH": str(bin_dir)})
    assert out.returncode == 1 and "\n  MISSING  debugfs " in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("1 required tool(s) MISSING: debugfs;")


@pytest.mark.parametrize("args, suggestion", [(["biuld"], "'build'"), (["kernel", "pul"], "'pull'")])
def test_a_mistyped_command_gets_one_suggestion(args, suggestion):
    out = banger(*args)
    assert out.returncode == 2
    assert out.stderr.count("Did you mean") == 1 and suggestion in out.stderr, out.stderr


UNREACHABLE = "image=127.0.0.1:1/nothing/here:1"  # refused at once: any registry error means it was tried


def _one_error_line(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


@pytest.mark.parametrize("extra", [[], ["--explain", "--json"], ["--check"]])
def test_an_unknown_kernel_is_refused_before_the_image_is_resolved(extra, cache_dir):
    out = banger("build", UNREACHABLE, "kernel=nosuch", "boot=no", *extra)
    line = _one_error_line(out)
    assert line.startswith("error: kernel 'nosuch' is not installed; ") and "registry" not in line
    assert "`banger kernel pull nosuch`" not in line and "debian-cloud-amd64" in line
    assert out.stdout == ""


@pytest.fixture
def installed_kernel(cache_dir):
    from banger.core.config import default_dirs
    from banger.kernel import sources
    from tests.support_kernel import make_kernel_tree

    tree = make_kernel_tree(cache_dir.parent / "kernel-src", "6.1.0-1-test", modules=False)
    return sources.import_dir(default_dirs(), "test-k", tree).name


def test_firecracker_that_cannot_run_is_refused_before_any_step(installed_kernel):
    import shutil

    from banger.hypervisor.choice import HypervisorError, choose

    try:
        choose("firecracker")
        pytest.skip("Firecracker can run on this host")
    except HypervisorError:
        pass
    words = ["build", UNREACHABLE, f"kernel={installed_kernel}", "hypervisor=firecracker"]
    for extra in ([], ["--explain", "--json"]):
        out = banger(*words, *extra)
        line = _one_error_line(out)
        assert line.startswith("error: hypervisor=firecracker cannot run here: ") and out.stdout == ""
        assert shutil.which("firecracker") or "`firecracker` is not on PATH" in line
    out = banger(*words, "boot=no")  # no boot, no hypervisor: the build goes on (to the registry)
    assert "registry 127.0.0.1:1" in _one_error_line(out) and "hypervisor" not in out.stderr


def test_setup_links_this_checkouts_banger_for_a_new_shell():
    """After scripts/setup.sh (as root), a new shell with Debian's PATH for root, nothing
    activated, finds /usr/local/bin/banger and it runs this checkout's venv."""
    venv_banger = REPO / ".venv" / "bin" / "banger"
    if os.geteuid() != 0 or not venv_banger.exists():
        pytest.skip("needs root and scripts/setup.sh run in this checkout")
    link = Path("/usr/local/bin/banger")
    if link.resolve() != venv_banger.resolve():
        pytest.skip(f"{link} belongs to another checkout's setup (scripts/setup.sh here relinks it)")
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    out = subprocess.run(["/bin/bash", "-c", "command -v banger && banger version"], env={"PATH": path, "HOME": "/root"},
                         capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == str(link)
    assert out.stdout.splitlines()[1].startswith("banger ")
