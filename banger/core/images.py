"""Named images: `<cache>/images/<name>.json`, the roots that `cache gc` keeps."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from banger.core.fsutil import atomic_write
from banger.core.store import Store

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")  # an image name (also a file name)


class ImageError(LookupError):
    pass


@dataclass
class ImageRecord:
    name: str
    ref: str
    digest: str  # manifest digest the image was built from
    built_at: float
    artifacts: dict[str, str]  # artifact name -> store digest
    steps: list[dict]  # [{"step", "status", "seconds", "key"}] of the last build
    rootfs_size: int = 0
    platform: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self, store: Store) -> dict:
        """The shape `banger build --json` and `banger image show --json` print."""
        return {
            "image": self.name,
            "ref": self.ref,
            "digest": self.digest,
            "platform": self.platform,
            "built_at": self.built_at,
            "rootfs_size": self.rootfs_size,
            "artifacts": {k: str(store.path(v)) for k, v in self.artifacts.items()},
            "steps": [{"step": s["step"], "status": s["status"], "seconds": s["seconds"]}
                      for s in self.steps],
        }


def _path(store: Store, name: str) -> Path:
    if not NAME_RE.fullmatch(name):
        raise ImageError(f"{name!r} is not a valid image name (lowercase letters, digits, . _ -)")
    return store.root / "images" / f"{name}.json"


def save(store: Store, image: ImageRecord) -> None:
    atomic_write(_path(store, image.name), json.dumps(asdict(image), indent=1, sort_keys=True).encode())


def load(store: Store, name: str) -> ImageRecord:
    try:
        return ImageRecord(**json.loads(_path(store, name).read_text()))
    except FileNotFoundError:
        raise ImageError(f"no image named {name!r}; `banger image list` shows the built ones") from None


def all_images(store: Store) -> list[ImageRecord]:
    out = []
    for p in sorted((store.root / "images").glob("*.json")):
        try:
            out.append(ImageRecord(**json.loads(p.read_text())))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


def remove(store: Store, name: str) -> None:
    path = _path(store, name)
    if not path.exists():
        raise ImageError(f"no image named {name!r}; `banger image list` shows the built ones")
    path.unlink()
