"""Named images: `<cache>/images/<name>.json`, the roots that `cache gc` keeps."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from banger.core import digest as dg
from banger.core.fsutil import atomic_write
from banger.core.records import fields_problem
from banger.core.store import TREE, Store

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")  # an image name (also a file name)


class ImageError(LookupError):
    pass


class DamagedImage(ImageError):
    """images/NAME.json is there but is not a readable image record; the message says the fix:
    building the image again under its name rewrites the record (its steps are still cached)."""

    def __init__(self, name: str, path: Path, why: str, ref: str = "REF"):
        super().__init__(f"image {name}'s record {path} is damaged ({why}); build it again with "
                         f"`banger build image={ref} name={name}` (its steps are still cached) "
                         f"or drop it with `banger image rm {name}`")
        self.name, self.why = name, why


CHECKSUM = "checksum"  # kept in `extra` (older bangers ignore extra's keys): a digest of the rest
HISTORY = "history"  # in `extra`: the image's last HISTORY_MAX builds, oldest first (see add_build)
HISTORY_MAX = 20


@dataclass
class ImageRecord:
    name: str
    ref: str
    digest: str  # manifest digest the image was built from
    built_at: float  # when its artifacts were made (a fully cached rebuild of them keeps it)
    artifacts: dict[str, str]  # artifact name -> store digest
    steps: list[dict]  # [{"step", "status", "seconds", "key"}] of the last build
    rootfs_size: int = 0
    platform: str = ""
    extra: dict = field(default_factory=dict)

    def history(self) -> list[dict]:
        """The builds kept in `extra` that have the expected shape (a record from before history
        was kept has none: its last build is `steps`)."""
        kept = self.extra.get(HISTORY)
        good = [e for e in kept if isinstance(e, dict) and isinstance(e.get("at"), (int, float))
                and isinstance(e.get("steps"), list)] if isinstance(kept, list) else []
        return good or [{"at": self.built_at, "digest": self.digest, "steps": self.steps}]

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


def add_build(previous: "ImageRecord | None", new: ImageRecord) -> ImageRecord:
    """`new` (a build's record, built_at = now) with the image's build history: the earlier
    builds from `previous` plus this one ({at, digest, steps}), the last HISTORY_MAX kept. When
    nothing ran and the artifacts are the ones `previous` names, built_at stays the time they
    were made."""
    earlier = previous.history() if previous is not None else []
    entry = {"at": new.built_at, "digest": new.digest, "steps": [dict(s) for s in new.steps]}
    new.extra[HISTORY] = (earlier + [entry])[-HISTORY_MAX:]
    if previous is not None and previous.artifacts == new.artifacts \
            and all(s["status"] == "cached" for s in new.steps):
        new.built_at = previous.built_at
    return new


def _path(store: Store, name: str) -> Path:
    if not NAME_RE.fullmatch(name):
        raise ImageError(f"{name!r} is not a valid image name (lowercase letters, digits, . _ -)")
    return store.root / "images" / f"{name}.json"


def _checksum(doc: dict) -> str:
    return dg.key_of({**doc, "extra": {k: v for k, v in doc["extra"].items() if k != CHECKSUM}})


def save(store: Store, image: ImageRecord) -> None:
    doc = asdict(image)
    doc["extra"] = {**doc["extra"], CHECKSUM: _checksum(doc)}
    atomic_write(_path(store, image.name), json.dumps(doc, indent=1, sort_keys=True).encode())


def load(store: Store, name: str) -> ImageRecord:
    path = _path(store, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"no image named {name!r}; `banger image list` shows the built ones") from None
    return parse(name, path, data)


def parse(name: str, path: Path, data: bytes) -> ImageRecord:
    """The record in `data`, or DamagedImage: a record gc would misread must not be used at all."""
    try:
        doc = json.loads(data.decode("utf-8"))
        why = _shape_problem(doc, name)
        if why is None and doc["extra"].get(CHECKSUM, _checksum(doc)) != _checksum(doc):
            why = "its checksum does not match its content"
    except UnicodeDecodeError:
        why = "not UTF-8"
    except ValueError:
        why = "not valid JSON"
    if why:
        ref = re.search(rb'"ref": *"([^"\\\s]{1,300})"', data)  # for the fix's command line, if it is legible
        raise DamagedImage(name, path, why, ref.group(1).decode("utf-8", "replace") if ref else "REF")
    return ImageRecord(**doc)


def _shape_problem(doc, name: str) -> str | None:
    if not isinstance(doc, dict):
        return "not a JSON object"
    known = set(ImageRecord.__dataclass_fields__)
    missing = {"name", "ref", "digest", "built_at", "artifacts", "steps"} - doc.keys()
    if missing or doc.keys() - known:
        return fields_problem(missing, doc.keys() - known)
    doc.setdefault("extra", {})
    number = (int, float)
    if doc["name"] != name:
        return f"it names image {doc['name']!r}"
    if not (isinstance(doc["ref"], str) and isinstance(doc["digest"], str) and isinstance(doc.get("platform", ""), str)
            and isinstance(doc["built_at"], number) and isinstance(doc.get("rootfs_size", 0), number)
            and isinstance(doc["extra"], dict) and isinstance(doc["steps"], list)
            and isinstance(doc["artifacts"], dict)):
        return "a field has the wrong type"
    if not all(isinstance(v, str) and dg.DIGEST_RE.fullmatch(v.removeprefix(TREE)) for v in doc["artifacts"].values()):
        return "an artifact is not a digest"
    if not all(isinstance(s, dict) and isinstance(s.get("key"), str) and isinstance(s.get("step"), str)
               and isinstance(s.get("status"), str) and isinstance(s.get("seconds"), number) for s in doc["steps"]):
        return "a step entry has the wrong shape"
    return None


def scan(store: Store) -> tuple[list[ImageRecord], list[DamagedImage]]:
    """Every named image: the readable records, and the damaged ones (their errors)."""
    good: list[ImageRecord] = []
    damaged: list[DamagedImage] = []
    for p in sorted((store.root / "images").glob("*.json")):
        try:
            good.append(parse(p.stem, p, p.read_bytes()))
        except DamagedImage as exc:
            damaged.append(exc)
        except FileNotFoundError:  # removed meanwhile
            continue
    return good, damaged


def all_images(store: Store) -> list[ImageRecord]:
    """The readable image records (`scan` also names the damaged ones)."""
    return scan(store)[0]


def remove(store: Store, name: str) -> None:
    path = _path(store, name)
    if not path.exists():
        raise ImageError(f"no image named {name!r}; `banger image list` shows the built ones")
    path.unlink()
