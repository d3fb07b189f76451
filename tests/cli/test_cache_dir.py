"""--cache-dir must name a banger cache: an ordinary directory is refused before anything in it
is touched; a new or empty one becomes a cache; one an earlier banger made is adopted."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger.core.cachedir import MARKER
from banger.core.store import NotACacheError, Store

REPO = Path(__file__).resolve().parents[2]


def banger(*args, env=None):
    return subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=120)


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def plain(tmp_path) -> Path:
    """Someone's ordinary directory, with a file gc would take for day-old staging."""
    docs = tmp_path / "docs"
    (docs / "staging").mkdir(parents=True)
    (docs / "thesis.tex").write_text("\\begin{document}\n")
    old = docs / "staging" / "draft-2019.txt"
    old.write_text("keep me\n")
    day_ago = time.time() - 3 * 86400
    os.utime(old, (day_ago, day_ago))
    return docs


@pytest.mark.parametrize("command", [["cache", "gc"], ["cache", "ls"], ["image", "list"]])
def test_an_ordinary_dir_as_cache_dir_is_refused_in_one_line_and_left_alone(plain, command, tmp_path):
    before = snapshot(plain)
    out = banger("--cache-dir", str(plain), *command,
                 env={"XDG_STATE_HOME": str(tmp_path / "state"), "BANGER_TREES_DIR": "cache"})
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(plain) in lines[0], out.stderr
    assert "new or empty directory" in lines[0] and "Traceback" not in out.stderr
    assert snapshot(plain) == before


def test_store_refuses_an_ordinary_dir(plain):
    before = snapshot(plain)
    with pytest.raises(NotACacheError, match="not a banger cache"):
        Store(plain)
    assert snapshot(plain) == before


def test_a_file_as_cache_dir_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    out = banger("--cache-dir", str(tmp_path / "f"), "cache", "du")
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "not a directory" in out.stderr


def test_a_new_or_empty_dir_becomes_a_cache(tmp_path):
    (tmp_path / "empty").mkdir()
    for d in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        out = banger("--cache-dir", str(d), "cache", "gc", "--json", env={"BANGER_TREES_DIR": "cache"})
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["evicted"] == 0
        assert (d / MARKER).is_file() and (d / "blobs").is_dir()


def test_a_cache_made_before_the_marker_is_adopted(tmp_path):
    old = tmp_path / "old-cache"
    store = Store(old)
    digest = store.ingest_stream([b"layer bytes"])
    (old / MARKER).unlink()  # as every cache made by an earlier banger
    out = banger("--cache-dir", str(old), "cache", "ls", "--json", env={"BANGER_TREES_DIR": "cache"})
    assert out.returncode == 0, out.stderr
    assert [row["digest"] for row in json.loads(out.stdout)] == [digest]
    assert (old / MARKER).is_file()


def test_the_checkouts_own_cache_dir_is_a_cache():
    """dodo.py builds into the checkout's cache/ (README.md, test fixtures): it ships its marker."""
    from banger.core.cachedir import check

    assert check(REPO / "cache") == "marked"


def test_the_default_cache_dir_is_banger_s_own_whatever_it_holds(tmp_path):
    default = tmp_path / "xdg" / "banger"
    (default / "demo").mkdir(parents=True)  # e.g. a first `banger demo` that failed before building
    out = banger("cache", "du", env={"BANGER_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "xdg"),
                                     "BANGER_TREES_DIR": "cache"})
    assert out.returncode == 0, out.stderr
    assert (default / MARKER).is_file() and (default / "demo").is_dir()


def test_a_cache_another_banger_is_making_meanwhile_is_not_refused(tmp_path, monkeypatch):
    """Two first builds into one new cache dir: the other one creates the marker (then its dirs)
    between this one's marker check and its listing. The listing shows the marker: a cache."""
    from banger.core import cachedir

    root = tmp_path / "c"
    root.mkdir()
    real_is = cachedir._is
    first = []

    def racing_is(path, kind):
        if path.name == cachedir.MARKER and not first:  # this banger looks before the other made it
            first.append(1)
            cachedir.open_cache(root)  # ... and the other banger runs now
            (root / "blobs").mkdir()
            return False
        return real_is(path, kind)

    monkeypatch.setattr(cachedir, "_is", racing_is)
    assert cachedir.check(root) == "marked"
