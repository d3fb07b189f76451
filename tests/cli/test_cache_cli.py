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
