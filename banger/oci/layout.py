"""A local OCI image layout directory (e.g. `skopeo copy ... oci:DIR:TAG` output) as an image source.

Same interface as registry.RegistrySource: resolve() -> top descriptor, manifest(desc) -> body,
fetch_blob(store, desc) -> digest. Nothing in the layout is trusted: every blob is verified.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from banger.core import digest as dg
from banger.core.errors import BuildError
from banger.oci.manifest import MAX_MANIFEST_BYTES, OCI_INDEX, SHA256_RE
from banger.oci.reference import LayoutReference
from banger.core.store import Store, StoreError

REF_NAME = "org.opencontainers.image.ref.name"


class LayoutSource:
    kind = "oci-layout"

    def __init__(self, ref: LayoutReference):
        self.ref = ref
        self.root = ref.path
        self._synthetic: dict[str, bytes] = {}  # index.json itself, when it is the image index

    def _blob(self, digest: str) -> Path:
        alg, hexpart = dg.split(digest)
        path = self.root / "blobs" / alg / hexpart
        if not path.is_file():
            raise BuildError(f"blob {digest} is missing from the OCI layout {self.root}; re-create the layout")
        return path

    def _index(self) -> tuple[bytes, dict]:
        if not (self.root / "oci-layout").is_file() or not (self.root / "index.json").is_file():
            raise BuildError(f"{self.root} is not an OCI image layout (no oci-layout or index.json); "
                             f"make one with `skopeo copy docker://IMAGE oci:{self.root}:TAG`")
        body = (self.root / "index.json").read_bytes()
        try:
            index = json.loads(body)
            manifests = index["manifests"]
            assert isinstance(manifests, list) and all(isinstance(m, dict) for m in manifests)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise BuildError(f"{self.root}/index.json is not a valid OCI index; re-create the layout") from None
        return body, index

    def resolve(self) -> tuple[dict, bytes | None]:
        if self.ref.digest:
            return {"digest": self.ref.digest}, None
        desc, body = self._select()
        if not isinstance(desc.get("digest"), str) or not SHA256_RE.fullmatch(desc["digest"]):
            raise BuildError(f"{self.root}/index.json names an invalid or non-sha256 digest; re-create the layout")
        return desc, body

    def _select(self) -> tuple[dict, bytes | None]:
        body, index = self._index()
        manifests = index["manifests"]
        tags = [m.get("annotations", {}).get(REF_NAME) for m in manifests]
        if self.ref.tag:
            chosen = [m for m, t in zip(manifests, tags) if t == self.ref.tag]
            if not chosen:
                listed = ", ".join(sorted(t for t in tags if t)) or "none"
                raise BuildError(f"no tag {self.ref.tag!r} in the OCI layout {self.root} (it has: {listed}); "
                                 f"use oci-layout:DIR:TAG")
            return dict(chosen[-1]), None
        if len(manifests) == 1:
            return dict(manifests[0]), None
        if manifests and not any(tags):  # an untagged multi-platform layout: index.json is the index
            digest = dg.of_bytes(body, "sha256")
            self._synthetic[digest] = body
            return {"mediaType": OCI_INDEX, "digest": digest, "size": len(body)}, body
        listed = ", ".join(sorted(t for t in tags if t)) or "none"
        raise BuildError(f"the OCI layout {self.root} holds {len(manifests)} images (tags: {listed}); "
                         f"pick one with oci-layout:DIR:TAG")

    def manifest(self, desc: dict) -> tuple[bytes, str]:
        digest = desc["digest"]
        if digest in self._synthetic:
            return self._synthetic[digest], OCI_INDEX
        path = self._blob(digest)
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BuildError(f"manifest {digest} in {self.root} is over {MAX_MANIFEST_BYTES} bytes; refusing it")
        body = path.read_bytes()
        actual = dg.of_bytes(body, "sha256")
        if actual != digest:
            raise BuildError(f"digest mismatch: manifest {digest} in the OCI layout {self.root} hashes to "
                             f"{actual}; nothing was cached")
        return body, ""  # a layout stores no content type; the referring descriptor declares it

    def fetch_blob(self, store: Store, desc: dict, progress: Callable[[int, int], None] | None = None) -> str:
        digest = desc["digest"]
        if store.verify(digest):
            return digest
        path = self._blob(digest)
        total = desc.get("size") or path.stat().st_size

        def chunks() -> Iterator[bytes]:
            done = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                    yield chunk

        try:
            return store.ingest_stream(chunks(), expected=digest, size=desc.get("size"))
        except StoreError as exc:
            raise BuildError(f"blob {digest} in the OCI layout {self.root} is corrupt ({exc})") from None
