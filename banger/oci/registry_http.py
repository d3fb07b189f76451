"""HTTP policy for registry clients: which hosts get plain HTTP, retry timing, error triage."""
from __future__ import annotations

import email.utils
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

import requests
import urllib3

from banger.core.errors import BuildError


class Unreachable(BuildError):
    """The registry could not be connected to at all (refused, DNS, connect timeout)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        seconds = _retry_after_seconds(retry_after) if retry_after else None
        if seconds is None:
            seconds = self.base_delay * 2 ** attempt
        return min(max(seconds, 0.0), self.max_delay)


def _retry_after_seconds(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def is_loopback(host: str) -> bool:
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def plain_http_allowed(host: str, insecure: Iterable[str]) -> bool:
    return is_loopback(host) or host in set(insecure)


def base_url(registry: str, insecure: Iterable[str] = ()) -> str:
    return f"{'http' if plain_http_allowed(registry, insecure) else 'https'}://{registry}"


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def no_auth(request):
    # An explicit (no-op) auth stops requests from filling Authorization in from ~/.netrc.
    return request


def is_connect_failure(exc: BaseException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, urllib3.exceptions.NewConnectionError):  # refused, no route, DNS
            return True
        if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
            stack.append(e.reason)
        stack.extend(a for a in e.args if isinstance(a, BaseException))
    return False


def short_reason(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text) or re.search(r"(Connection (?:reset|aborted|refused)[^'\")]*)", text)
    return m.group(1).strip() if m else type(exc).__name__
