"""The push half of the distribution API, on a RegistryClient: does the registry have a blob
(HEAD), mount one another repository of the registry holds (POST ?mount=&from=: no bytes sent),
upload one (POST an upload session, then one PUT with the bytes and their digest), put a
manifest under a tag, and fetch a small blob (a config) into memory.

A pushing client asks its token server for `repository:<name>:pull,push` (push_client); Basic
auth and docker config credentials are as for pulls. A 401/403 is one line naming the login fix.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import requests

from banger.core import digest as dg
from banger.core.errors import BuildError
from banger.oci import registry_auth as auth
from banger.oci.registry import RegistryClient

MAX_CONFIG_BYTES = 4 << 20  # a config (banger: an action record) read into memory
CHUNK_BYTES = 16 << 20  # blobs larger than this are uploaded in chunks of this size


class PushRefused(BuildError):
    """The registry will not take what banger pushes (unauthorised, denied, or an error)."""


def push_client(registry: str, repository: str, *, insecure: Iterable[str] = (),
                session: requests.Session | None = None, **kw) -> RegistryClient:
    client = RegistryClient(registry, repository, insecure=insecure, session=session, **kw)
    client.actions = "pull,push"
    return client


def _refused(client: RegistryClient, resp: requests.Response, what: str) -> BuildError:
    name = f"{client.registry}/{client.repository}"
    if resp.status_code == 401:
        return PushRefused(str(client.unauthorized()).replace("access to", "push to", 1))
    if resp.status_code == 403:
        return PushRefused(f"denied: {client.registry} does not let you push to {client.repository}; "
                           + auth.LOGIN_HINT.format(host=client.registry))
    detail = ""
    try:
        errors = resp.json().get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))[:200]
    except (ValueError, AttributeError):
        pass
    return PushRefused(f"{name} answered {resp.status_code} {resp.reason} to {what}"
                       + (f" ({detail})" if detail else ""))


def has_blob(client: RegistryClient, digest: str) -> bool:
    with client.request("HEAD", f"blobs/{digest}") as resp:
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise _refused(client, resp, f"HEAD blob {digest}")


def mount_blob(client: RegistryClient, digest: str, sources: Iterable[str]) -> str | None:
    """Ask the registry to mount blob `digest` into the client's repository from each of `sources`
    (other repositories of the same registry) in turn (OCI distribution spec: POST
    blobs/uploads/?mount=<digest>&from=<repo>). None when one did (201: nothing to send); else
    where to send the bytes: the upload session the last 202 opened, or "" (no source, or a
    registry that refused the mount: the caller opens a session). A refused mount costs only its
    request; the sessions of earlier 202s are cancelled."""
    location = ""
    for source in sources:
        if location:
            cancel_upload(client, location)
            location = ""
        with client.request("POST", f"blobs/uploads/?mount={digest}&from={source}",
                            {"Content-Length": "0"}) as resp:
            if resp.status_code == 201:
                return None
            if resp.status_code == 202:
                location = resp.headers.get("Location", "")
    return location


def cancel_upload(client: RegistryClient, location: str) -> None:
    """Drop an upload session banger will not use (best effort: the registry expires it anyway)."""
    try:
        client.request("DELETE", "blobs/uploads/", url=location).close()
    except BuildError:
        pass


def upload_blob(client: RegistryClient, path: Path, digest: str, location: str = "") -> int:
    """Upload the file as blob `digest` (the registry checks it); returns the bytes sent. A file
    over CHUNK_BYTES goes in chunks (PATCH), resumed from what the registry says it has.
    `location`: an upload session already open (mount_blob's), else one is opened."""
    if path.stat().st_size > CHUNK_BYTES:
        return _upload_chunked(client, path, digest, location)
    opened: list = []

    def body():
        opened.append(open(path, "rb"))
        return opened[-1]

    try:
        return _upload(client, body, path.stat().st_size, digest, location)
    finally:
        for f in opened:
            f.close()


def upload_bytes(client: RegistryClient, data: bytes, digest: str, location: str = "") -> int:
    return _upload(client, lambda: data, len(data), digest, location)


def _upload(client: RegistryClient, body, size: int, digest: str, location: str = "") -> int:
    """A monolithic upload: POST opens the session (unless `location` is one), one PUT sends the
    bytes and the digest."""
    location = location or _start_upload(client)
    sep = "&" if "?" in location else "?"
    with client.request("PUT", "blobs/uploads/", {"Content-Type": "application/octet-stream",
                                                  "Content-Length": str(size)},
                        body=body, url=f"{location}{sep}digest={digest}") as resp:
        if resp.status_code != 201:
            raise _refused(client, resp, f"the upload of blob {digest}")
    return size


def _start_upload(client: RegistryClient) -> str:
    with client.request("POST", "blobs/uploads/", {"Content-Length": "0"}) as resp:
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise _refused(client, resp, "starting a blob upload")
        return resp.headers["Location"]


def _received(resp: requests.Response) -> int | None:
    """How many bytes the upload holds, from a Range: 0-<last> header (None: not said)."""
    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", resp.headers.get("Range", "").strip())
    return int(m.group(1)) + 1 if m else None


def _upload_chunked(client: RegistryClient, path: Path, digest: str, location: str = "") -> int:
    size = path.stat().st_size
    location = location or _start_upload(client)
    offset, sent, resumes = 0, 0, 0
    with open(path, "rb") as f:
        while offset < size:
            n = min(CHUNK_BYTES, size - offset)
            start = offset
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                       "Content-Range": f"{start}-{start + n - 1}"}
            try:
                resp = client.request("PATCH", "blobs/uploads/", headers, url=location,
                                      body=lambda: os.pread(f.fileno(), n, start))
            except BuildError:
                resp = None  # the connection kept breaking: ask the registry what it has
            if resp is not None and resp.status_code == 202:
                with resp:
                    location = resp.headers.get("Location") or location
                    offset = _received(resp) or start + n
                sent += n
                continue
            if resp is not None and resp.status_code not in (404, 416):
                with resp:
                    raise _refused(client, resp, f"a chunk of blob {digest}")
            if resp is not None:
                resp.close()
            resumes += 1
            if resumes > 5:
                raise PushRefused(f"the upload of blob {digest} to {client.registry} kept breaking off; "
                                  "push again to retry")
            location, offset = _resume(client, location)
    sep = "&" if "?" in location else "?"
    with client.request("PUT", "blobs/uploads/", {"Content-Length": "0"},
                        url=f"{location}{sep}digest={digest}") as resp:
        if resp.status_code != 201:
            raise _refused(client, resp, f"the upload of blob {digest}")
    return sent


def _resume(client: RegistryClient, location: str) -> tuple[str, int]:
    """Where a broken-off upload goes on: from what the registry says it holds (GET on the upload),
    or, when the registry dropped the session (docker-registry does once a chunk broke off:
    its upload URL carries the offset), a new upload from byte 0."""
    with client.request("GET", "blobs/uploads/", url=location) as status:
        if status.status_code == 204 and _received(status) is not None:
            return status.headers.get("Location") or location, _received(status) or 0
        if status.status_code not in (404, 416):
            raise _refused(client, status, "asking for the state of an upload")
    return _start_upload(client), 0


def put_manifest(client: RegistryClient, tag: str, manifest: dict, media_type: str) -> str:
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    with client.request("PUT", f"manifests/{tag}", {"Content-Type": media_type},
                        body=lambda: body) as resp:
        if resp.status_code not in (200, 201):
            raise _refused(client, resp, f"the manifest for tag {tag}")
    return dg.of_bytes(body, "sha256")


def has_manifest(client: RegistryClient, tag: str, accept: str) -> str | None:
    """The digest the tag points at, or None when there is no such tag (or repository)."""
    with client.request("HEAD", f"manifests/{tag}", {"Accept": accept}) as resp:
        if resp.status_code == 200:
            return resp.headers.get("Docker-Content-Digest") or "?"
        if resp.status_code == 404:
            return None
        raise _refused(client, resp, f"HEAD manifest {tag}")


def read_small_blob(client: RegistryClient, digest: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """A small blob's bytes, sha256-verified; BuildError (one line) if it is not what it claims."""
    with client.request("GET", f"blobs/{digest}", stream=True) as resp:
        client.raise_for_status(resp, f"blob {digest}")
        data = resp.raw.read(limit + 1, decode_content=True)
    if len(data) > limit:
        raise BuildError(f"blob {digest} of {client.registry}/{client.repository} is over {limit} bytes; refusing it")
    actual = dg.of_bytes(data, dg.split(digest)[0])
    if actual != digest:
        raise BuildError(f"digest mismatch: {client.registry}/{client.repository} served {actual} for blob "
                         f"{digest}; nothing was cached")
    return data


def list_tags(client: RegistryClient, page: int = 1000, limit: int = 1_000_000) -> list[str]:
    """Every tag of the repository (following Link: rel="next" pages); [] for no repository."""
    tags: list[str] = []
    path: str | None = f"tags/list?n={page}"
    url: str | None = None
    while path or url:
        with client.request("GET", path or "tags/list", url=url) as resp:
            if resp.status_code == 404:
                return []
            client.raise_for_status(resp, "the tag list")
            try:
                tags += [str(t) for t in (resp.json().get("tags") or [])]
            except (ValueError, AttributeError):
                raise BuildError(f"{client.registry} sent a tag list that is not JSON") from None
            m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', resp.headers.get("Link", ""))
        path, url = None, (m.group(1) if m and len(tags) < limit else None)
    return tags
