"""`kernel pull` from a catalog served by a real local http.server (127.0.0.1)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard
from typer.testing import CliRunner

from banger.kernel import bundle as kernel_bundle, catalog as kernel_catalog, sources
from banger.kernel.bundle import KernelError
from tests.conftest import need
from tests.support_kernel import fake_elf, kernel_dirs, make_bzimage, make_kernel_tree

RELEASE = "6.6.6-catalog"
REPO = Path(__file__).resolve().parents[2]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """(directory, base URL) of a real HTTP server on a free loopback port."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _depmod():
    need("depmod")


Member = tuple  # (name, bytes | None for a directory, kind, link target)


def bundle_members(top: str = "k/") -> list[Member]:
    return [(f"{top}vmlinuz", make_bzimage(RELEASE, "xz"), "file", None),
            (f"{top}initrd.img", b"a tiny initrd", "file", None),
            (f"{top}modules/{RELEASE}/kernel/demo/data.txt", b"module data\n", "file", None),
            (f"{top}modules/{RELEASE}/modules.order", b"", "file", None)]


def write_archive(path: Path, members: list[Member]) -> tuple[str, int]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
                             "chr": tarfile.CHRTYPE}[kind]
                info.linkname = target or ""
                tar.addfile(info)
    blob = zstandard.ZstdCompressor().compress(raw.getvalue())
    path.write_bytes(blob)
    return hashlib.sha256(blob).hexdigest(), len(blob)


def publish(root: Path, members: list[Member], name: str = "demo", sha: str | None = None) -> None:
    digest, size = write_archive(root / f"{name}.tar.zst", members)
    entry = {"name": name, "url": f"{name}.tar.zst", "sha256": sha or digest, "size": size,
             "version": RELEASE, "arch": "amd64"}
    (root / "catalog.json").write_text(json.dumps({"kernels": [entry]}))


def no_bundle_left(dirs, name: str = "demo") -> bool:
    kernels = dirs.state / "kernels"
    return not (kernels / name).exists() and not list((kernels / ".staging").iterdir())


def test_pull_round_trip(tmp_path, served):
    root, url = served
    publish(root, bundle_members())
    dirs = kernel_dirs(tmp_path)
    pulled = kernel_catalog.pull(dirs, "demo", f"{url}/catalog.json")
    bundle = pulled.bundle
    assert pulled.fresh and pulled.message() == f"pulled kernel demo ({RELEASE}) at {bundle.path}"
    assert bundle.version == RELEASE and bundle.manifest.source == f"{url}/demo.tar.zst"
    assert set(bundle.manifest.files) == {"vmlinuz", "vmlinux", "initrd.img", "modules"}
    assert (bundle.path / "vmlinuz").read_bytes() == make_bzimage(RELEASE, "xz")
    assert (bundle.path / "vmlinux").read_bytes() == fake_elf(RELEASE)
    assert (bundle.path / "modules" / RELEASE / "modules.dep").is_file()
    bundle.verify()
    rows = kernel_catalog.available(dirs, f"{url}/catalog.json")
    assert [(r["name"], r["state"], r["size"]) for r in rows] == [("demo", "pulled", (root / "demo.tar.zst").stat().st_size)]
    (root / "demo.tar.zst").rename(root / "away.tar.zst")  # an installed bundle needs no download
    kept = kernel_catalog.pull(dirs, "demo", f"{url}/catalog.json")
    assert not kept.fresh and kept.bundle.digest == bundle.digest
    assert kept.message() == f"kernel demo ({RELEASE}) is already pulled at {bundle.path}; use --force to pull it again"
    (root / "away.tar.zst").rename(root / "demo.tar.zst")
    again = kernel_catalog.pull(dirs, "demo", f"{url}/catalog.json", force=True)
    assert again.fresh and again.bundle.manifest.files == bundle.manifest.files


def test_pull_from_a_catalog_file_with_a_relative_path(tmp_path, served):
    root, _ = served
    publish(root, bundle_members(top=""))  # members at the archive's top level
    dirs = kernel_dirs(tmp_path)
    bundle = kernel_catalog.pull(dirs, "demo", str(root / "catalog.json")).bundle
    assert bundle.manifest.source == str(root / "demo.tar.zst")


def test_sha256_mismatch_leaves_no_bundle(tmp_path, served):
    root, url = served
    publish(root, bundle_members(), sha="0" * 64)
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError, match=r"^kernel demo: sha256 mismatch .*nothing was installed$"):
        kernel_catalog.pull(dirs, "demo", f"{url}/catalog.json")
    assert no_bundle_left(dirs)


@pytest.mark.parametrize("evil, message", [
    (("../escaped", b"x", "file", None), "points outside the bundle"),
    (("/abs/escaped", b"x", "file", None), "points outside the bundle"),
    (("k/a/../../../escaped", b"x", "file", None), "points outside the bundle"),
    (("k/link", None, "symlink", "../../escaped"), "points outside the bundle"),
    (("k/abslink", None, "symlink", "/etc/passwd"), "points outside the bundle"),
    (("k/hard", None, "link", "../escaped"), "points outside the bundle"),
    (("k/console", None, "chr", None), "is a character device"),
])
def test_unsafe_members_are_rejected(tmp_path, served, evil, message):
    root, url = served
    publish(root, [bundle_members()[0], evil, *bundle_members()[1:]])
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError, match=message):
        kernel_catalog.pull(dirs, "demo", f"{url}/catalog.json")
    assert no_bundle_left(dirs)
    assert not list(tmp_path.rglob("escaped"))


def test_writing_through_an_archive_symlink_is_rejected(tmp_path, served):
    root, url = served
    # the link itself stays inside, but a later member written "through" it must not be followed
    members = [("k/sub", None, "symlink", "."), ("k/sub/vmlinuz", b"x", "file", None)]
    publish(root, members)
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError, match="goes through a symlink"):
        kernel_catalog.pull(dirs, "demo", f"{url}/catalog.json")
    assert no_bundle_left(dirs)


def test_http_errors_are_clear(tmp_path, served):
    root, url = served
    publish(root, bundle_members())
    (root / "demo.tar.zst").unlink()
    dirs = kernel_dirs(tmp_path)
    with pytest.raises(KernelError, match=rf"^cannot download {url}/demo.tar.zst: HTTP 404 "):
        kernel_catalog.pull(dirs, "demo", f"{url}/catalog.json")
    assert no_bundle_left(dirs)
    with pytest.raises(KernelError, match=rf"^cannot fetch catalog {url}/missing.json: HTTP 404 "):
        kernel_catalog.pull(dirs, "demo", f"{url}/missing.json")


def test_catalog_problems_are_one_line_errors(tmp_path, served):
    root, url = served
    (root / "catalog.json").write_text(json.dumps({"kernels": [{"name": "x", "url": "x.tar.zst"}]}))
    with pytest.raises(KernelError, match="malformed .*needs a sha256"):
        kernel_catalog.load_catalog(f"{url}/catalog.json")
    publish(root, bundle_members())
    with pytest.raises(KernelError, match=r"no kernel 'other' in the catalog .*known: demo"):
        kernel_catalog.pull(kernel_dirs(tmp_path), "other", f"{url}/catalog.json")


def test_shipped_catalog_offers_the_debian_source():
    catalog = kernel_catalog.load_catalog()
    entry = catalog.find(kernel_bundle.DEFAULT_KERNEL)
    assert entry.builtin and entry.source == kernel_bundle.DEFAULT_SOURCE
    assert all(e.builtin for e in catalog.entries)  # nothing that needs a host we cannot reach


def test_cli_pull_with_catalog_url(tmp_path, served, cache_dir, monkeypatch):
    from xdg import BaseDirectory

    from banger.cli.kernel import kernel_app

    monkeypatch.setattr(BaseDirectory, "xdg_state_home", str(tmp_path / "state"))
    monkeypatch.setattr(BaseDirectory, "xdg_config_home", str(tmp_path / "config"))
    root, url = served
    publish(root, bundle_members())
    runner = CliRunner()
    result = runner.invoke(kernel_app, ["pull", "demo", "--catalog", f"{url}/catalog.json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "state" / "banger" / "kernels" / "demo" / "manifest.json").is_file()
    result = runner.invoke(kernel_app, ["list", "--available", "--catalog", f"{url}/catalog.json"])
    assert result.exit_code == 0 and "demo" in result.output and "pulled" in result.output
    (root / "demo.tar.zst").unlink()
    result = runner.invoke(kernel_app, ["pull", "demo", "--force", "--catalog", f"{url}/catalog.json"])
    assert result.exit_code == 1 and "HTTP 404" in result.output
    assert (tmp_path / "state" / "banger" / "kernels" / "demo" / "manifest.json").is_file()  # old one kept


def test_pulling_an_installed_debian_kernel_succeeds_and_says_so(tmp_path, cache_dir):
    """No download, no apt-get: the installed bundle is kept; --force is how to pull again."""
    state = tmp_path / "state"
    dirs = kernel_dirs(tmp_path)
    dirs = dataclasses.replace(dirs, state=state / "banger")
    tree = make_kernel_tree(tmp_path / "src", RELEASE, modules=False)
    installed = sources.import_dir(dirs, kernel_bundle.DEFAULT_KERNEL, tree)
    pulled = kernel_catalog.pull(dirs, kernel_bundle.DEFAULT_SOURCE)
    assert not pulled.fresh and pulled.bundle.digest == installed.digest
    by_name = kernel_catalog.pull(dirs, kernel_bundle.DEFAULT_KERNEL)  # the catalog's name for it
    assert not by_name.fresh and by_name.bundle.digest == installed.digest
    out = subprocess.run([sys.executable, "-m", "banger", "kernel", "pull", kernel_bundle.DEFAULT_SOURCE],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "XDG_STATE_HOME": str(state)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"kernel {kernel_bundle.DEFAULT_KERNEL} ({RELEASE}) is already pulled at "
                                 f"{installed.path}"), out.stdout
    assert out.stdout.strip().endswith("use --force to pull it again") and out.stderr == ""
    assert kernel_bundle.load(dirs, kernel_bundle.DEFAULT_KERNEL).digest == installed.digest
