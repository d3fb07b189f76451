"""Where banger keeps things: XDG dirs by default, one cache dir override for everything cached."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from xdg import BaseDirectory

CACHE_ENV = "BANGER_CACHE_DIR"
TREES_ENV = "BANGER_TREES_DIR"  # where flattened trees go: a directory, or "cache" for the cache dir
KEEP_TREES_ENV = "BANGER_KEEP_TREES"  # "1": a build leaves its flattened tree in RAM (config: keep_trees)
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class Dirs:
    cache: Path  # content-addressed store, action records, image names
    state: Path  # kernels, managed ssh key, VM runtime files
    config: Path  # config.json
    trees: Path | None = None  # RAM-backed home for flattened trees (None: they stay in cache)

    @property
    def config_file(self) -> Path:
        return self.config / "config.json"


def default_dirs(cache_dir: str | os.PathLike | None = None) -> Dirs:
    """Dirs for this process: --cache-dir beats $BANGER_CACHE_DIR beats $XDG_CACHE_HOME/banger."""
    chosen = cache_dir or os.environ.get(CACHE_ENV)
    cache = Path(chosen).resolve() if chosen else default_cache()
    return Dirs(
        cache=cache,
        state=_xdg("XDG_STATE_HOME", BaseDirectory.xdg_state_home),
        config=_xdg("XDG_CONFIG_HOME", BaseDirectory.xdg_config_home),
        trees=volatile_trees_dir(cache),
    )


def default_cache() -> Path:
    """$XDG_CACHE_HOME/banger: banger's own by its name (a chosen cache dir must prove it, see
    cachedir.py)."""
    return _xdg("XDG_CACHE_HOME", BaseDirectory.xdg_cache_home)


def volatile_trees_dir(cache: Path) -> Path | None:
    """A directory on /dev/shm (tmpfs) private to this user and cache dir, unless
    $BANGER_TREES_DIR names another one or says "cache"."""
    chosen = os.environ.get(TREES_ENV)
    if chosen == "cache":
        return None
    if chosen:
        return Path(chosen).resolve()
    if not (SHM.is_dir() and os.access(SHM, os.W_OK)):
        return None
    return SHM / f"banger-{os.getuid()}-{hashlib.sha256(str(cache).encode()).hexdigest()[:16]}"


def _xdg(variable: str, imported: str) -> Path:
    # pyxdg reads the variables once at import; a later change (tests, embedding) must still count.
    return Path(os.environ.get(variable) or imported) / "banger"


def keep_trees(dirs: Dirs) -> bool:
    """Does a build leave its flattened tree in RAM afterwards? By default not: the tree only
    feeds the ext4 step, which reruns rarely (it is remade from the cached layers then), and a
    tmpfs tree holds RAM until reboot. $BANGER_KEEP_TREES=1 (or "keep_trees": true) keeps it."""
    chosen = os.environ.get(KEEP_TREES_ENV)
    if chosen is not None:
        return chosen.strip().lower() in ("1", "yes", "true")
    try:
        return bool(load_config(dirs).get("keep_trees", False))
    except Exception:  # a config error is reported where the config matters
        return False


def load_config(dirs: Dirs) -> dict:
    """User settings (e.g. {"insecure_registries": ["host:5000"], "default_kernel": "debian-cloud-amd64"})."""
    try:
        return json.loads(dirs.config_file.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {dirs.config_file} is not valid JSON ({exc}); fix or remove it")
