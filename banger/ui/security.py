"""What guards `banger ui` like a local dev server: a secret token (in the URL printed at start,
then an HttpOnly SameSite=Strict cookie), a Host header check against DNS rebinding, and a CSRF
token (plus the Origin, when sent) on every POST."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlencode

COOKIE = "banger_ui"


@dataclass
class Secrets:
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    hosts: frozenset[str] = frozenset()  # the Host header values accepted ("127.0.0.1:7777", ...)

    def origin_ok(self, origin: str | None) -> bool:
        """A POST's Origin, when the browser sends one, must be this server."""
        return origin is None or origin in {f"http://{h}" for h in self.hosts}

    def csrf_ok(self, value: str | None) -> bool:
        return bool(value) and secrets.compare_digest(str(value), self.csrf)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    names = {host}
    if host in ("127.0.0.1", "localhost"):
        names |= {"127.0.0.1", "localhost"}
    if ":" in host and not host.startswith("["):  # IPv6 literal
        names = {f"[{host}]"}
    return frozenset(f"{n}:{port}" for n in names)


class Guard:
    """ASGI middleware: 403 unless the Host header is this server's and the request carries the
    token (query `token=`, which also sets the cookie and redirects to the URL without it, or
    the cookie)."""

    def __init__(self, app, keys: Secrets):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if headers.get("host", "") not in self.keys.hosts:
            return await _refuse(send, "this dashboard answers only at its own address (Host header refused)")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [None])[0]
        if given is not None:
            if not secrets.compare_digest(given, self.keys.token):
                return await _refuse(send, "wrong token: use the URL `banger ui` printed")
            rest = {k: v for k, v in query.items() if k != "token"}
            target = scope["path"] + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            cookie = f"{COOKIE}={self.keys.token}; HttpOnly; SameSite=Strict; Path=/"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", target.encode()), (b"set-cookie", cookie.encode()),
                                    (b"content-length", b"0")]})
            return await send({"type": "http.response.body", "body": b""})
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:
            pass
        held = jar[COOKIE].value if COOKIE in jar else ""
        if not (held and secrets.compare_digest(held, self.keys.token)):
            return await _refuse(send, "no token: open the URL `banger ui` printed (it holds ?token=...)")
        if scope["method"] not in ("GET", "HEAD", "POST"):
            return await _refuse(send, "only GET and POST", status=405)
        if scope["method"] == "POST" and not self.keys.origin_ok(headers.get("origin")):
            return await _refuse(send, "cross-origin POST refused")
        return await self.app(scope, receive, send)


async def _refuse(send, why: str, status: int = 403) -> None:
    body = f"{status} {'Forbidden' if status == 403 else 'Method Not Allowed'}: {why}\n".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
