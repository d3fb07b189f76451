"""A client for the OCI distribution API (pull only), on requests.

- `/v2/` ping, then Bearer tokens (anonymous or with credentials) or Basic auth, as challenged.
- HTTPS, except plain HTTP for loopback hosts and hosts in `insecure_registries`.
- Redirects are followed by hand: the Authorization header only goes to the registry's own
  origin, never to a CDN or any other host a redirect points at.
- 429/5xx and connection resets are retried with exponential backoff (Retry-After honoured), a
  bounded number of times. A refused connection or failed DNS lookup is `Unreachable` at once,
  so a build can fall back to its warm cache quickly.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from banger.core import digest as dg
from banger.oci import registry_auth as auth
from banger.oci.blob_download import STALL_ENV, BlobTimeouts, download_blob, Interrupted
from banger.core.errors import BuildError
from banger.oci.manifest import ACCEPTED, MAX_MANIFEST_BYTES
from banger.oci.reference import Reference
from banger.oci.registry_http import RetryPolicy, Unreachable, base_url, is_connect_failure, no_auth, origin, plain_http_allowed, short_reason
from banger.core.store import Store

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
RETRY_STATUSES = (429, 500, 502, 503, 504)
ACCEPT_MANIFESTS = ", ".join(ACCEPTED)
Progress = Callable[[int, int], None]


class RegistryClient:
    def __init__(self, registry: str, repository: str, *, insecure: Iterable[str] = (),
                 retry: RetryPolicy = RetryPolicy(), timeout: tuple[float, float] = (10, 60),
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                 blob_timeouts: BlobTimeouts | None = None):
        self.registry = registry
        self.repository = repository
        self.insecure = tuple(insecure)
        self.base = base_url(registry, self.insecure)
        self.retry = retry
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"User-Agent": "banger", "Accept-Encoding": "identity"})
        self.sleep = sleep
        self.blob_timeouts = blob_timeouts or BlobTimeouts.from_env()
        self._auth: str | None = None
        self._ready = False
        self._creds: auth.Credentials | None | bool = False  # False = not looked up yet
        self.actions = "pull"  # the token scope asked for: "pull,push" to push (registry_push.py)

    # ---- plumbing ----------------------------------------------------------------------------
    def _credentials(self) -> auth.Credentials | None:
        if self._creds is False:
            self._creds = auth.find_credentials(self.registry, self.repository)
        return self._creds  # type: ignore[return-value]

    def _check_scheme(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and plain_http_allowed(parts.netloc, self.insecure):
            return
        raise BuildError(f"{self.registry} sent banger to {url[:100]}, which is not HTTPS; "
                         f"add the host to insecure_registries in banger's config if that is intended")

    def _send(self, method: str, url: str, headers: dict, stream: bool,
              timeout: tuple[float, float] | None = None, body: Callable[[], object] | None = None) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            self._check_scheme(url)
            sent = dict(headers)
            if self._auth and origin(url) == origin(self.base):
                sent["Authorization"] = self._auth
            resp = self.session.request(method, url, headers=sent, stream=stream, timeout=timeout or self.timeout,
                                        allow_redirects=False, auth=no_auth, data=body() if body else None)
            if resp.status_code in REDIRECTS and resp.headers.get("Location"):
                resp.close()
                url = urljoin(url, resp.headers["Location"])
                if resp.status_code == 303 and method != "HEAD":
                    method = "GET"
                continue
            return resp
        raise BuildError(f"{self.registry}: more than {MAX_REDIRECTS} redirects for {url[:100]}")

    def with_retries(self, send: Callable[[], requests.Response], what: str) -> requests.Response:
        attempts = max(1, self.retry.attempts)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = send()
            except requests.exceptions.SSLError as exc:
                raise BuildError(f"TLS error talking to {self.registry} ({short_reason(exc)}); if it serves plain "
                                 f"HTTP, add it to insecure_registries in banger's config") from None
            except requests.RequestException as exc:
                if is_connect_failure(exc):
                    raise Unreachable(f"registry {self.registry} is unreachable ({short_reason(exc)}); "
                                      f"check the network and the image reference") from None
                if last:
                    raise BuildError(f"registry {self.registry}: {what} failed {attempts} times "
                                     f"({short_reason(exc)}); try again later") from None
                self.sleep(self.retry.delay(attempt))
                continue
            if resp.status_code in RETRY_STATUSES:
                resp.close()
                if last:
                    hint = " (rate limited; logging in raises the limit)" if resp.status_code == 429 else ""
                    raise BuildError(f"registry {self.registry} answered {resp.status_code} to {what} "
                                     f"{attempts} times{hint}; try again later")
                self.sleep(self.retry.delay(attempt, resp.headers.get("Retry-After")))
                continue
            return resp
        raise AssertionError("unreachable")

    # ---- authentication ----------------------------------------------------------------------
    def _ensure_ready(self) -> None:
        if self._ready:
            return
        resp = self.with_retries(lambda: self._send("GET", f"{self.base}/v2/", {}, False), "GET /v2/")
        with resp:
            if resp.status_code == 401:
                self._authenticate(resp.headers.get("WWW-Authenticate", ""))
            elif resp.status_code != 200:
                raise BuildError(f"{self.registry} does not look like an OCI registry (GET /v2/ answered "
                                 f"{resp.status_code}); check the image reference")
        self._ready = True

    def unauthorized(self) -> BuildError:
        creds = self._credentials()
        if creds is not None:
            return BuildError(f"unauthorized: {self.registry} refused the credentials of {creds.username!r} "
                              f"from {creds.source} for {self.repository}; "
                              + auth.LOGIN_HINT.format(host=self.registry))
        return BuildError(f"unauthorized: {self.registry} refused anonymous access to {self.repository} "
                          f"(it may not exist, or needs credentials); " + auth.LOGIN_HINT.format(host=self.registry))

    def _authenticate(self, header: str) -> None:
        challenge = auth.parse_challenge(header)
        if challenge is None:
            raise BuildError(f"{self.registry} demands an authentication scheme banger does not speak "
                             f"({header[:60]!r}); only Bearer and Basic are supported")
        creds = self._credentials()
        if challenge.scheme == "basic":
            if creds is None:
                raise self.unauthorized()
            self._auth = auth.basic_header(creds)
        else:
            self._auth = "Bearer " + self._token(challenge.params, creds)

    def _token(self, params: dict[str, str], creds: auth.Credentials | None) -> str:
        realm = params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise BuildError(f"{self.registry} sent a Bearer challenge without a usable realm ({realm[:80]!r})")
        self._check_scheme(realm)
        query = {"scope": params.get("scope") or f"repository:{self.repository}:{self.actions}"}
        if params.get("service"):
            query["service"] = params["service"]
        basic = (creds.username, creds.password) if creds else None
        resp = self.with_retries(lambda: self.session.get(realm, params=query, auth=basic or no_auth,
                                                          timeout=self.timeout), "token request")
        with resp:
            if resp.status_code in (401, 403):
                raise self.unauthorized()
            if resp.status_code != 200:
                raise BuildError(f"token server of {self.registry} answered {resp.status_code}; try again later")
            try:
                body = resp.json()
                token = body.get("token") or body.get("access_token")
            except (ValueError, AttributeError):
                token = None
        if not isinstance(token, str) or not token:
            raise BuildError(f"token server of {self.registry} returned no token")
        return token

    # ---- API ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, headers: dict | None = None, stream: bool = False,
                timeout: tuple[float, float] | None = None, body: Callable[[], object] | None = None,
                url: str | None = None) -> requests.Response:
        """A request under /v2/<repository>/ (or to `url`, e.g. an upload's Location), authenticated,
        retried, re-authenticated once on 401. `body` makes a fresh request body for each attempt."""
        self._ensure_ready()
        url = urljoin(self.base, url) if url else f"{self.base}/v2/{self.repository}/{path}"
        reauthenticated = False
        while True:
            resp = self.with_retries(lambda: self._send(method, url, headers or {}, stream, timeout, body),
                                     f"{method} {path}")
            if resp.status_code == 401 and not reauthenticated:
                header = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                self._authenticate(header)
                reauthenticated = True
                continue
            return resp

    def raise_for_status(self, resp: requests.Response, what: str) -> None:
        if resp.status_code in (200, 206):
            return
        name = f"{self.registry}/{self.repository}"
        if resp.status_code == 401:
            raise self.unauthorized()
        if resp.status_code == 403:
            raise BuildError(f"denied: {self.registry} does not let you pull {self.repository}; "
                             + auth.LOGIN_HINT.format(host=self.registry))
        if resp.status_code == 404:
            codes = _error_codes(resp) if resp.request.method != "HEAD" else set()
            if "NAME_UNKNOWN" in codes:
                raise BuildError(f"no such repository: {name}; check the image name")
            if "BLOB_UNKNOWN" in codes or what.startswith("blob"):
                raise BuildError(f"{what} is missing from {name}; the image in the registry is incomplete")
            raise self._missing_manifest(what)
        raise BuildError(f"registry {self.registry} answered {resp.status_code} {resp.reason} to {what}")

    def _missing_manifest(self, what: str) -> BuildError:
        """Registries say MANIFEST_UNKNOWN for a missing repository too: the tag list tells them apart."""
        name = f"{self.registry}/{self.repository}"
        with self.request("GET", "tags/list?n=20") as resp:
            if resp.status_code == 404:
                return BuildError(f"no such repository: {name}; check the image name")
            try:
                tags = [str(t) for t in (resp.json().get("tags") or [])][:10] if resp.status_code == 200 else []
            except (ValueError, AttributeError):
                tags = []
        have = f" (it has: {', '.join(tags)}{', ...' if len(tags) == 10 else ''})" if tags else ""
        return BuildError(f"no such image: {name} has no {what}{have}; check the tag")

    def resolve_tag(self, tag: str) -> tuple[dict, bytes | None]:
        """The descriptor a tag points at (HEAD; GET when the registry sends no digest), and the body if GOT."""
        resp = self.request("HEAD", f"manifests/{tag}", {"Accept": ACCEPT_MANIFESTS})
        with resp:
            header = resp.headers.get("Docker-Content-Digest", "")
            if resp.status_code == 200 and dg.DIGEST_RE.fullmatch(header) and header.startswith("sha256:"):
                # no size: some registries and proxies get Content-Length on HEAD wrong; the digest decides
                return {"digest": header, "mediaType": resp.headers.get("Content-Type", "").split(";")[0].strip()}, None
        body, content_type, digest = self.get_manifest(tag)
        return {"digest": digest, "mediaType": content_type, "size": len(body)}, body

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, Content-Type, sha256 digest) of a manifest; a digest reference is verified."""
        attempts = max(1, self.retry.attempts)
        for attempt in range(attempts):
            resp = self.request("GET", f"manifests/{reference}", {"Accept": ACCEPT_MANIFESTS}, stream=True)
            with resp:
                self.raise_for_status(resp, f"tag or digest {reference}")
                try:  # streamed, so that a hostile server cannot make banger buffer gigabytes
                    body = resp.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                    if attempt == attempts - 1:
                        raise BuildError(f"registry {self.registry}: reading manifest {reference} failed "
                                         f"{attempts} times ({short_reason(exc)}); try again later") from None
                    self.sleep(self.retry.delay(attempt))
                    continue
                content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
                header = resp.headers.get("Docker-Content-Digest", "")
            break
        if len(body) > MAX_MANIFEST_BYTES:
            raise BuildError(f"manifest {reference} from {self.registry} is over {MAX_MANIFEST_BYTES} bytes; refusing it")
        actual = dg.of_bytes(body, "sha256")
        for claimed in (reference if reference.startswith("sha256:") else "", header if header.startswith("sha256:") else ""):
            if claimed and claimed != actual:
                raise BuildError(f"digest mismatch: {self.registry}/{self.repository} served {actual} for manifest "
                                 f"{claimed}; nothing was cached")
        return body, content_type, actual

    def fetch_blob(self, store: Store, desc: dict, progress: Progress | None = None) -> str:
        """Stream a blob into the store (sha256-verified), resuming a partial download with Range."""
        def open_range(offset: int) -> requests.Response:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp = self.request("GET", f"blobs/{desc['digest']}", headers, stream=True,
                                timeout=(self.timeout[0], self.blob_timeouts.stall))
            if resp.status_code != 416:
                try:
                    self.raise_for_status(resp, f"blob {desc['digest']}")
                except BaseException:
                    resp.close()
                    raise
            return resp

        where = f"{self.registry}/{self.repository}"
        attempts = max(1, self.retry.attempts)
        for attempt in range(attempts):
            try:
                return download_blob(store, desc, open_range, where, progress, self.blob_timeouts)
            except Interrupted as exc:
                if attempt == attempts - 1 and exc.stalled:
                    change = "raise" if exc.stalled == STALL_ENV else "lower"
                    raise BuildError(f"download of {desc['digest']} from {where} stalled {attempts} times ({exc}); "
                                     f"run the build again to resume it (on a slow link, {change} {exc.stalled})") from None
                if attempt == attempts - 1:
                    raise BuildError(f"download of {desc['digest']} from {where} kept breaking off ({exc}); "
                                     f"run the build again to resume it") from None
                self.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")


def _error_codes(resp: requests.Response) -> set[str]:
    try:
        return {str(e.get("code")) for e in resp.json().get("errors", []) if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()


class RegistrySource:
    """An image in a registry, behind the interface fetch uses for every source."""
    kind = "registry"

    def __init__(self, ref: Reference, insecure: Iterable[str] = (), retry: RetryPolicy = RetryPolicy()):
        self.ref = ref
        self.client = RegistryClient(ref.registry, ref.repository, insecure=insecure, retry=retry)

    def resolve(self) -> tuple[dict, bytes | None]:
        if self.ref.digest:
            return {"digest": self.ref.digest}, None
        return self.client.resolve_tag(self.ref.tag or "latest")

    def manifest(self, desc: dict) -> tuple[bytes, str]:
        body, content_type, _ = self.client.get_manifest(desc["digest"])
        return body, content_type

    def fetch_blob(self, store: Store, desc: dict, progress: Progress | None = None) -> str:
        return self.client.fetch_blob(store, desc, progress)
