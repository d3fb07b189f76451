"""Manifest media types, manifest validation and platform selection (OCI and Docker v2 formats)."""
from __future__ import annotations

import json
import platform as host
import re
from dataclasses import dataclass

from banger.core.errors import BuildError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPTED = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
# Content types some registries and web servers put on any JSON: they say nothing about the kind.
GENERIC_TYPES = ("", "application/json", "text/plain", "application/octet-stream")
MAX_MANIFEST_BYTES = 4 << 20
SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                "armel": "arm", "i386": "386", "i686": "386", "ppc64el": "ppc64le"}
# Which variants an arch runs, most preferred first ("" = the descriptor names none).
VARIANT_COMPAT = {("arm64", "v8"): ("v8", ""), ("arm64", ""): ("", "v8"),
                  ("arm", "v7"): ("v7", "", "v6", "v5"), ("arm", "v6"): ("v6", "v5"),
                  ("arm", "v5"): ("v5",), ("arm", ""): ("v7", "", "v6", "v5"),
                  ("amd64", ""): ("", "v1")}


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def parse(body: bytes, declared: str | None, where: str) -> tuple[str, dict]:
    """(media type, document) of a manifest or index; the body must agree with what was declared.

    `declared` is what the server's Content-Type or the referring descriptor said it is.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BuildError(f"{where}: the manifest is not valid JSON; the registry or layout is broken") from None
    if not isinstance(doc, dict):
        raise BuildError(f"{where}: the manifest is not a JSON object")
    declared = (declared or "").split(";")[0].strip()
    if declared in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise BuildError(f"{where} uses the obsolete Docker schema 1 manifest; re-push it with a current tool")
    if declared in GENERIC_TYPES:
        declared = ""
    elif declared not in ACCEPTED:
        raise BuildError(f"{where}: unsupported manifest media type {declared!r}; "
                         f"banger reads OCI and Docker v2 images")
    field = doc.get("mediaType")
    if field is not None and field not in ACCEPTED:
        raise BuildError(f"{where}: unsupported manifest media type {field!r}; banger reads OCI and Docker v2 images")
    if field and declared and field != declared:
        raise BuildError(f"{where}: served as {declared} but the body says {field}; refusing a mislabelled manifest")
    media_type = field or declared or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    if is_index(media_type):
        _check_descriptors(doc.get("manifests"), where, "manifests")
    else:
        if not isinstance(doc.get("config"), dict):
            raise BuildError(f"{where}: malformed image manifest (no config descriptor)")
        _check_descriptors([doc["config"]], where, "config")
        _check_descriptors(doc.get("layers"), where, "layers")
    return media_type, doc


def _check_descriptors(descs: object, where: str, what: str) -> None:
    if not isinstance(descs, list):
        raise BuildError(f"{where}: malformed manifest ({what} is not a list)")
    for d in descs:
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
            raise BuildError(f"{where}: malformed descriptor in {what}")
        if not SHA256_RE.fullmatch(d["digest"]):
            raise BuildError(f"{where}: unsupported digest {d['digest'][:80]!r} in {what}; only sha256 is supported")
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BuildError(f"{where}: descriptor {d['digest']} in {what} has no valid size")


# ---- platforms ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def normalize(os_name: str, arch: str, variant: str = "") -> Platform:
    arch = ARCH_ALIASES.get(arch.lower(), arch.lower())
    variant = variant.lower()
    if arch == "arm64" and variant == "8":
        variant = "v8"
    if arch == "arm" and variant in ("5", "6", "7", "8"):
        variant = f"v{variant}"
    return Platform(os_name.lower(), arch, variant)


def parse_platform(text: str) -> Platform:
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BuildError(f"platform={text!r}: use OS/ARCH[/VARIANT], e.g. platform=linux/arm64")
    return normalize(*parts)


def host_platform() -> Platform:
    machine = host.machine().lower()
    if machine.startswith("armv"):
        return Platform("linux", "arm", f"v{machine[4]}")
    return normalize("linux", machine)


def of_descriptor(desc: dict) -> Platform | None:
    p = desc.get("platform")
    if not isinstance(p, dict) or not p.get("os") or not p.get("architecture"):
        return None
    return normalize(str(p["os"]), str(p["architecture"]), str(p.get("variant") or ""))


def matches(have: Platform, want: Platform) -> int | None:
    """Preference rank of `have` for a host that wants `want` (0 best), or None if it cannot run."""
    if have.os != want.os or have.architecture != want.architecture:
        return None
    compatible = VARIANT_COMPAT.get((want.architecture, want.variant), (want.variant,))
    return compatible.index(have.variant) if have.variant in compatible else None


def select(index: dict, want: Platform, where: str) -> dict:
    """The manifest descriptor of an index that best fits `want`; the error lists what there is."""
    best: tuple[int, int, dict] | None = None
    available: list[str] = []
    for position, desc in enumerate(index["manifests"]):
        have = of_descriptor(desc)
        if have is None or have.os == "unknown":  # attestations and other non-images
            continue
        available.append(str(have))
        rank = matches(have, want)
        if rank is not None and (best is None or (rank, position) < best[:2]):
            best = (rank, position, desc)
    if best is None:
        listed = ", ".join(dict.fromkeys(available)) or "none"
        raise BuildError(f"no matching platform: {where} has no image for {want} (it has: {listed}); "
                         f"pick one with platform=OS/ARCH")
    return best[2]


def check_config(config: dict, want: Platform, where: str) -> Platform:
    """The platform an image config declares; it must be one `want` can run."""
    have = normalize(str(config.get("os") or ""), str(config.get("architecture") or ""),
                     str(config.get("variant") or ""))
    if not have.os or not have.architecture:
        raise BuildError(f"{where}: the image config names no os/architecture")
    if matches(have, want) is None and matches(Platform(have.os, have.architecture), want) is None:
        raise BuildError(f"no matching platform: {where} is {have}, not {want}; "
                         f"build it with platform={have}")
    return have
