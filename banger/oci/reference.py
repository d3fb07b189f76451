"""Image references, parsed the way container runtimes do.

    debian:bookworm                  -> registry-1.docker.io/library/debian:bookworm
    ghcr.io/org/app                  -> ghcr.io/org/app:latest
    127.0.0.1:5000/debian@sha256:... -> by digest (a tag next to a digest is informational)
    oci-layout:DIR[:TAG]             -> a local OCI image layout (skopeo's `oci:DIR[:TAG]` output)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DOCKER_HUB = "registry-1.docker.io"
HUB_ALIASES = ("docker.io", "index.docker.io", DOCKER_HUB)
LAYOUT_PREFIX = "oci-layout:"

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
DOMAIN_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")
PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME_CHARS_RE = re.compile(r"[^a-z0-9._-]+")


class ReferenceError(ValueError):
    """The message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class Reference:
    """An image in a registry."""
    registry: str  # "registry-1.docker.io", "127.0.0.1:5000"
    repository: str  # "library/debian"
    tag: str | None  # None only when pinned by digest alone
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def default_name(self) -> str:
        base = self.repository.rsplit("/", 1)[-1]
        suffix = self.tag if self.tag else self.digest.split(":", 1)[1][:12]  # type: ignore[union-attr]
        return image_name(f"{base}-{suffix}")

    def __str__(self) -> str:
        return _with_tag_and_digest(f"{self.registry}/{self.repository}", self.tag, self.digest)


@dataclass(frozen=True)
class LayoutReference:
    """An image in a local OCI image layout directory."""
    path: Path  # absolute
    tag: str | None = None  # the org.opencontainers.image.ref.name annotation; None = the only one
    digest: str | None = None

    @property
    def default_name(self) -> str:
        if self.tag and ("/" in self.tag or ":" in self.tag):
            try:
                return parse(self.tag).default_name  # skopeo oci:DIR:debian:bookworm
            except ReferenceError:
                pass
        base = self.path.name or "image"
        if self.tag:
            return image_name(f"{base}-{self.tag}")
        if self.digest:
            return image_name(f"{base}-{self.digest.split(':', 1)[1][:12]}")
        return image_name(base)

    def __str__(self) -> str:
        return _with_tag_and_digest(f"{LAYOUT_PREFIX}{self.path}", self.tag, self.digest)


def _with_tag_and_digest(text: str, tag: str | None, digest: str | None) -> str:
    return text + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def image_name(text: str) -> str:
    """A banger image name (core.images.NAME_RE) made from free text: lowercase, odd characters -> '-'."""
    name = NAME_CHARS_RE.sub("-", text.lower()).strip("-._")[:128]
    return name or "image"


def parse(text: str) -> Reference | LayoutReference:
    text = text.strip()
    if text.startswith(LAYOUT_PREFIX):
        return _parse_layout(text[len(LAYOUT_PREFIX):], text)
    if not text:
        raise ReferenceError("empty image reference; use e.g. image=debian:bookworm")
    rest, digest = _split_digest(text, text)
    name, tag = rest, None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a ':' after the last '/' starts the tag (a port comes before a '/')
        name, tag = rest[:colon], rest[colon + 1:]
        if not TAG_RE.fullmatch(tag):
            raise ReferenceError(f"invalid tag {tag!r} in image reference {text!r}; "
                                 "tags are letters, digits, '_', '.', '-' (at most 128)")
    registry, repository = _split_registry(name, text)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def _split_digest(rest: str, text: str) -> tuple[str, str | None]:
    if "@" not in rest:
        return rest, None
    rest, _, digest = rest.rpartition("@")
    if not DIGEST_RE.fullmatch(digest):
        raise ReferenceError(f"invalid digest {digest!r} in image reference {text!r}; "
                             "use NAME@sha256:<64 hex digits>")
    if not SHA256_RE.fullmatch(digest):
        raise ReferenceError(f"unsupported digest {digest!r} in {text!r}; only lowercase sha256 digests are supported")
    return rest, digest


def _split_registry(name: str, text: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not DOMAIN_RE.fullmatch(first):
            raise ReferenceError(f"invalid registry host {first!r} in image reference {text!r}")
        registry, repository = first.lower(), remainder
    else:
        registry, repository = DOCKER_HUB, name
    if registry in HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    for component in repository.split("/"):
        if not PATH_COMPONENT_RE.fullmatch(component):
            hint = " (repository names must be lowercase)" if component != component.lower() else ""
            raise ReferenceError(f"invalid repository name {repository!r} in image reference {text!r}{hint}")
    if len(repository) > 255:
        raise ReferenceError(f"repository name in {text!r} is longer than 255 characters")
    return registry, repository


def _parse_layout(spec: str, text: str) -> LayoutReference:
    # Like skopeo's oci: transport: the directory ends at the first ':' (so it cannot hold one);
    # what follows is the ref.name annotation, which may itself contain ':' ("debian:bookworm").
    spec, digest = _split_digest(spec, text) if "@sha256:" in spec else (spec, None)
    path, sep, tag = spec.partition(":")
    if not path:
        raise ReferenceError(f"no directory in {text!r}; use oci-layout:DIR or oci-layout:DIR:TAG")
    if sep and not tag:
        raise ReferenceError(f"empty tag in {text!r}; use oci-layout:DIR or oci-layout:DIR:TAG")
    return LayoutReference(Path(os.path.abspath(os.path.expanduser(path))), tag or None, digest)
