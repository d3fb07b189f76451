"""`banger cache import` refuses a hostile archive in one line; `banger cache verify` finds a
forged record already in the cache."""
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import zstandard

from banger.core.store import ActionRecord, Store, action_key

REPO = Path(__file__).resolve().parents[2]


def banger(*args):
    return subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env=dict(os.environ), cwd=REPO, timeout=120)


def test_import_of_an_archive_writing_through_a_symlink_is_one_line_and_leaves_nothing(tmp_path, cache_dir):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    tree = "trees/blake3/" + "0" * 64
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, data in [(tree, tarfile.DIRTYPE, "", None), (f"{tree}/x", tarfile.SYMTYPE, str(victim), None),
                                       (f"{tree}/x", tarfile.REGTYPE, "", b"pwned")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, 0o755
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    archive = tmp_path / "evil.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    out = banger("cache", "import", str(archive))
    assert victim.read_text() == "precious"
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "appears twice" in out.stderr
    assert list((cache_dir / "staging").iterdir()) == []
    assert not list((cache_dir / "blobs").rglob("*")) and not list((cache_dir / "trees").rglob("*"))


def test_verify_fails_on_a_record_pointing_legitimate_inputs_at_another_rootfs(cache_dir):
    store = Store(cache_dir)
    records = {}
    for name in ("mine", "other"):
        image = store.ingest_stream([f"image of {name}".encode()], algorithm="blake3")
        rootfs = store.ingest_stream([f"rootfs of {name}".encode()], algorithm="blake3")
        records[name] = ActionRecord(action_key("stage", "1", {"image": image}, {}, {}), "stage", "1",
                                     {"image": image}, {}, {}, {"rootfs": rootfs})
        store.put_record(records[name])
    store.put_record(ActionRecord(**{**records["mine"].to_json(), "outputs": records["other"].outputs}))
    out = banger("cache", "verify")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"record {records['mine'].key[:12]} (stage) removed" in out.stdout
    assert store.get_record(records["mine"].key) is None


def test_a_real_build_exported_and_imported_is_all_cached_and_verifies(tmp_path):
    """The real pipeline (boot=no) on a small image: its tree (kept in the cache), sparse ext4
    images, fetch and flatten records all pass the import's checks and `cache verify`."""
    import json

    from banger.core import config
    from banger.kernel import sources
    from tests.support_kernel import make_kernel_tree
    from tests.support_registry import make_image
    from tests.support_tools import need

    need("mkfs.ext4", "debugfs", "depmod")
    layout = tmp_path / "layout"
    make_image(layout, "v1", {"etc/os-release": b"ID=moved\n", "etc/inittab": b"::sysinit:/etc/init.d/rcS\n",
                              "bin/hello": b"#!/bin/sh\necho hi\n",
                              "usr/share/doc/readme": b"x" * 5000})
    state = tmp_path / "state"
    dirs = config.Dirs(cache=tmp_path / "a", state=state / "banger", config=tmp_path / "config" / "banger")
    sources.import_dir(dirs, "k", make_kernel_tree(tmp_path / "kernel-src", "6.1.0-99-amd64"))
    base = {**os.environ, "XDG_STATE_HOME": str(state), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "BANGER_TREES_DIR": "cache"}

    def run(cache: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                              env={**base, "BANGER_CACHE_DIR": str(tmp_path / cache)}, cwd=REPO, timeout=600)

    words = ["build", f"image=oci-layout:{layout}:v1", "name=moved", "kernel=k", "boot=no", "--json"]
    built = run("a", *words)
    assert built.returncode == 0, built.stderr[-2000:]
    archive = tmp_path / "moved.tar.zst"
    assert run("a", "cache", "export", str(archive), "--image", "moved").returncode == 0
    imported = run("b", "cache", "import", str(archive), "--json")
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert result["images"] == ["moved"] and result["refused"] == [] and result["kept_local"] == []
    assert list((tmp_path / "b" / "trees").glob("*/*"))  # the flattened tree came along
    rootfs = json.loads(built.stdout)["artifacts"]["rootfs"]
    moved = tmp_path / "b" / Path(rootfs).relative_to(tmp_path / "a")
    assert moved.stat().st_blocks <= Path(rootfs).stat().st_blocks + 2048  # still sparse
    again = run("b", *words)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {s["status"] for s in json.loads(again.stdout)["steps"]} == {"cached"}
    verify = run("b", "cache", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
