"""Write OCI image layouts (used to make the demo image and the test images; skopeo pushes them).

A layer is given as an uncompressed tar file; it is compressed here (gzip, zstd or none).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from banger.core.digest import of_bytes, of_file

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


@dataclass
class Layer:
    tar: Path  # uncompressed tar
    compression: str = "gzip"


@dataclass
class ImageConfig:
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    cmd: list[str] = field(default_factory=lambda: ["/bin/sh"])
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])


def _put_blob(layout: Path, path: Path) -> dict:
    digest, size = of_file(path, "sha256")
    dest = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return {"digest": digest, "size": size}


def _put_json(layout: Path, value: dict, media_type: str) -> dict:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    digest = of_bytes(data)
    dest = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _compress(src: Path, dst: Path, compression: str) -> None:
    if compression == "none":
        shutil.copyfile(src, dst)
    elif compression == "gzip":
        with open(src, "rb") as fin, gzip.GzipFile(dst, "wb", mtime=0, compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    elif compression == "zstd":
        import zstandard

        with open(src, "rb") as fin, open(dst, "wb") as fout:
            zstandard.ZstdCompressor(level=3).copy_stream(fin, fout)
    else:
        raise ValueError(f"unknown compression {compression!r}")


def write_image(layout: Path, layers: list[Layer], config: ImageConfig | None = None) -> dict:
    """Add one image (config + layers + manifest) to `layout`; returns the manifest descriptor."""
    config = config or ImageConfig()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layer_descs, diff_ids = [], []
    tmp = layout / ".tmp-layer"
    for layer in layers:
        diff_ids.append(of_file(layer.tar, "sha256")[0])
        _compress(layer.tar, tmp, layer.compression)
        layer_descs.append({"mediaType": MT_LAYER[layer.compression], **_put_blob(layout, tmp)})
        tmp.unlink()
    platform = {"architecture": config.architecture, "os": config.os}
    if config.variant:
        platform["variant"] = config.variant
    cfg = {**platform, "config": {"Cmd": config.cmd, "Env": config.env},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": _put_json(layout, cfg, MT_CONFIG), "layers": layer_descs}
    desc = _put_json(layout, manifest, MT_MANIFEST)
    desc["platform"] = platform
    return desc


def write_index(layout: Path, tag: str, manifests: list[dict], nested: bool = False) -> None:
    """Point `tag` at one manifest, or (several, or `nested`) at an image index of them."""
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    if len(manifests) == 1 and not nested:
        target = dict(manifests[0])
    else:
        target = _put_json(layout, {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}, MT_INDEX)
    target["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag] + [target]
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
