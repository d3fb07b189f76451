"""Registry credentials and WWW-Authenticate challenges.

Credentials come from `$REGISTRY_AUTH_FILE` (podman/skopeo's auth.json) and then
`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`: the `auths` map, whose entries carry a
base64 `auth` ("user:password") or `username`/`password`. A key may be a host, a URL
(`https://index.docker.io/v1/`) or a host with a repository prefix (most specific wins).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from banger.core.errors import BuildError
from banger.oci.reference import DOCKER_HUB, HUB_ALIASES

LOGIN_HINT = ("log in with `skopeo login {host}` or `docker login {host}` "
              "(credentials in ~/.docker/config.json, or the file named by $REGISTRY_AUTH_FILE)")
_PARAM_RE = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: Path  # the file they came from (named in errors)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" | "basic"
    params: dict[str, str]


def auth_files() -> list[Path]:
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    docker_dir = os.environ.get("DOCKER_CONFIG")
    files.append(Path(docker_dir) / "config.json" if docker_dir else Path.home() / ".docker" / "config.json")
    return files


def _key_scope(key: str) -> str:
    """'https://index.docker.io/v1/' -> 'registry-1.docker.io'; 'host/ns/repo' stays as is."""
    key = re.sub(r"^[a-z]+://", "", key.strip().lower()).rstrip("/")
    key = re.sub(r"/v[12]$", "", key)
    host, _, path = key.partition("/")
    if host in HUB_ALIASES:
        host = DOCKER_HUB
    return f"{host}/{path}" if path else host


def find_credentials(registry: str, repository: str) -> Credentials | None:
    target = f"{registry}/{repository}"
    for path in auth_files():
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise BuildError(f"cannot read registry credentials from {path} ({exc}); fix or remove it") from None
        auths = data.get("auths") if isinstance(data, dict) else None
        best: tuple[int, dict] | None = None
        for key, entry in (auths or {}).items():
            scope = _key_scope(key)
            if isinstance(entry, dict) and (target == scope or target.startswith(scope + "/")):
                if best is None or len(scope) > best[0]:
                    best = (len(scope), entry)
        if best is not None:
            creds = _decode(best[1], path, registry)
            if creds is not None:
                return creds
    return None


def _decode(entry: dict, path: Path, registry: str) -> Credentials | None:
    if entry.get("auth"):
        try:
            text = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise BuildError(f"the `auth` entry for {registry} in {path} is not base64 of user:password; "
                             "log in again to rewrite it") from None
        user, sep, password = text.partition(":")
        if not sep:
            raise BuildError(f"the `auth` entry for {registry} in {path} has no ':' between user and password")
        return Credentials(user, password, path)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]), path)
    return None  # e.g. a credential-helper entry: not supported, look further


def parse_challenge(header: str) -> Challenge | None:
    """The Bearer (preferred) or Basic challenge in a WWW-Authenticate header."""
    found: dict[str, dict[str, str]] = {}
    # Several challenges may share one header: split where a new scheme word starts.
    for part in re.split(r",?\s*(?=\b(?:Bearer|Basic)\b\s)", header.strip(), flags=re.IGNORECASE):
        scheme, _, rest = part.strip().partition(" ")
        if scheme.lower() in ("bearer", "basic"):
            params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
                      for m in _PARAM_RE.finditer(rest)}
            found.setdefault(scheme.lower(), params)
    for scheme in ("bearer", "basic"):
        if scheme in found:
            return Challenge(scheme, found[scheme])
    return None


def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
