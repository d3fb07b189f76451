"""`banger image export` as a user runs it: what it prints, --json, --force, one-line errors."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from banger.core import images
from banger.core.store import Store

REPO = Path(__file__).resolve().parents[2]


def banger(*args):
    return subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True, cwd=REPO,
                          env=os.environ, timeout=120)


def fake_image(cache: Path, name: str) -> images.ImageRecord:
    """A named image over real blobs: a sparse 16 MiB "rootfs", a "kernel" and an "initrd"."""
    store = Store(cache)
    disk = cache / "disk"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
        f.write(b"superblock")
    artifacts = {"rootfs": store.ingest_file(disk),
                 "kernel": store.ingest_stream([b"bzImage bytes"], algorithm="blake3"),
                 "initrd": store.ingest_stream([b"initrd bytes"], algorithm="blake3")}
    record = images.ImageRecord(name=name, ref=f"example/{name}:1", digest="sha256:" + "0" * 64,
                                built_at=time.time(), artifacts=artifacts, steps=[])
    images.save(store, record)
    return record


def one_line_error(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_image_export_writes_prints_and_refuses_to_overwrite(cache_dir, tmp_path):
    record = fake_image(cache_dir, "demo")
    dest = tmp_path / "out"
    out = banger("image", "export", "demo", str(dest))
    assert out.returncode == 0, out.stderr
    files = ["rootfs.ext4", "bzImage", "initrd.img", "cmdline", "run-qemu.sh"]
    lines = out.stdout.splitlines()
    assert [line.split()[1] for line in lines[:len(files)]] == [str(dest / f) for f in files]
    assert lines[0].split()[0] == "wrote" and "16.0 MiB" in lines[0] and "allocated" in lines[0]
    assert lines[len(files)] == f"next: {dest / 'run-qemu.sh'} 2222"
    assert (dest / "bzImage").read_bytes() == b"bzImage bytes"
    assert (dest / "cmdline").read_text().startswith("console=ttyS0 root=/dev/vda rw ")

    error = one_line_error(banger("image", "export", "demo", str(dest)))
    assert "already holds rootfs.ext4" in error and "--force" in error

    out = banger("image", "export", "demo", str(dest), "--force", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {f: str(dest / f) for f in files}
    assert Store(cache_dir).verify(record.artifacts["rootfs"], full=True)


def test_image_export_errors_are_one_line(cache_dir, tmp_path):
    assert "no image named 'nope'" in one_line_error(banger("image", "export", "nope", str(tmp_path / "x")))
    record = fake_image(cache_dir, "gcd")
    Store(cache_dir).remove(record.artifacts["rootfs"])
    error = one_line_error(banger("image", "export", "gcd", str(tmp_path / "x")))
    assert "no longer in the cache" in error and "banger build image=example/gcd:1" in error
    assert not (tmp_path / "x").exists()
