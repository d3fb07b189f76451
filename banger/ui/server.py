"""The ASGI app of `banger ui` (routes and pages) and the uvicorn server it runs on."""
from __future__ import annotations

import asyncio
import errno
import json
import socket
from functools import lru_cache
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from banger.core.config import Dirs
from banger.ui import charts, views
from banger.ui.security import Guard, Secrets, allowed_hosts

MAX_FORM = 64 * 1024  # bytes of a POST's form read at most
POLL = 0.3  # seconds between looks at a build's journal while it is streamed


class UIStartError(Exception):
    """`banger ui` cannot start (its port is taken...): one line for the user."""


def template_dir() -> Path:
    """banger/templates/ui/ when installed (pyproject maps `banger.templates` there), else the
    repo's templates/ui/ in a source checkout."""
    here = Path(__file__).resolve().parents[1]
    installed = here / "templates" / "ui"
    return installed if installed.is_dir() else here.parent / "templates" / "ui"


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.globals.update(steps_chart=charts.steps_chart, kinds_chart=charts.kinds_chart)
    return env


def make_app(dirs: Dirs, keys: Secrets):
    """The dashboard's ASGI app, guarded (token, Host, CSRF: security.py)."""

    def page(name: str, status: int = 200, **values) -> HTMLResponse:
        html = _environment().get_template(name).render(csrf=keys.csrf, **values)
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    def section(fn: Callable, *args) -> dict:
        try:
            return {"ok": fn(*args), "error": None}
        except views.UIError as exc:
            return {"ok": None, "error": str(exc)}

    async def dashboard(request: Request):
        def gather():
            return {"images": section(views.images, dirs), "builds": section(views.builds, dirs),
                    "vms": section(views.vms, dirs), "cache": section(views.cache, dirs),
                    "kernels": section(views.kernels, dirs)}

        return page("dashboard.html", msg=request.query_params.get("msg", ""), **await run_in_threadpool(gather))

    async def detail(view: Callable, name: str, template: str, request: Request, as_name: str | None = None):
        """One thing's page (an image, a VM, a build); 404 with the view's message if it is not there."""
        try:
            data = await run_in_threadpool(view, dirs, request.path_params[name])
        except views.UIError as exc:
            return page("message.html", 404, message=str(exc))
        return page(template, **({as_name: data} if as_name else data))

    async def image(request: Request):
        return await detail(views.image, "name", "image.html", request)

    async def vm(request: Request):
        return await detail(views.vm, "name", "vm.html", request, "vm")

    async def build(request: Request):
        return await detail(views.build, "id", "build.html", request, "build")

    async def build_events(request: Request):
        from banger.core import journal

        found = journal.find(dirs.state, request.path_params["id"])
        if found is None:
            return Response("no such build\n", status_code=404, media_type="text/plain")

        async def stream():
            offset = 0
            while True:
                items, offset = journal.events(found.path, offset)
                for item in items:
                    yield f"data: {json.dumps(item)}\n\n"
                if not items:
                    state, error = journal.state_of(journal.read(found.path).events)
                    if state != "running":
                        yield f"event: end\ndata: {json.dumps({'state': state, 'error': error})}\n\n"
                        return
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(POLL)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})

    async def checked_form(request: Request) -> dict | Response:
        # the forms are urlencoded (no file uploads): parsed here, without python-multipart
        body = await request.body() if int(request.headers.get("content-length") or 0) <= MAX_FORM else b""
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not keys.csrf_ok(form.get("csrf")):
            return Response("403 Forbidden: missing or wrong CSRF token; reload the page\n", status_code=403,
                            media_type="text/plain")
        return form

    def done(message: str, anchor: str) -> RedirectResponse:
        return RedirectResponse(f"/?{urlencode({'msg': message})}#{anchor}", status_code=303)

    async def vm_action(request: Request):
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        action, name = request.path_params["action"], request.path_params["name"]
        if action not in ("stop", "start", "rm"):
            return page("message.html", 404, message=f"no VM action {action!r} (stop, start or rm)")
        try:
            message = await run_in_threadpool(views.vm_action, dirs, action, name)
        except views.UIError as exc:
            return page("message.html", 400, message=str(exc))
        return done(message, "vms")

    async def cache_gc(request: Request):
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        try:
            message = await run_in_threadpool(views.gc, dirs, str(form.get("max_size", "")),
                                              str(form.get("max_age", "")))
        except views.UIError as exc:
            return page("message.html", 400, message=str(exc))
        return done(message, "cache")

    routes = [Route("/", dashboard), Route("/images/{name}", image), Route("/vms/{name}", vm),
              Route("/builds/{id}", build), Route("/builds/{id}/events", build_events),
              Route("/vms/{name}/{action}", vm_action, methods=["POST"]),
              Route("/cache/gc", cache_gc, methods=["POST"])]
    return Guard(Starlette(routes=routes), keys)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or UIStartError with one line (port taken, address not here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UIStartError(f"port {port} on {host} is in use; give another with --port N (or --port 0 "
                               "for any free one)") from None
        raise UIStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class Server:
    """A bound, not yet running dashboard: `url` holds the token; run() serves until stopped."""

    def __init__(self, dirs: Dirs, host: str = "127.0.0.1", port: int = 7777):
        import uvicorn

        self.sock = bind(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.keys = Secrets(hosts=allowed_hosts(host, self.port))
        shown = f"[{host}]" if ":" in host else host
        self.base = f"http://{shown}:{self.port}"
        self.url = f"{self.base}/?token={self.keys.token}"
        config = uvicorn.Config(make_app(dirs, self.keys), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        self.uvicorn = uvicorn.Server(config)

    def run(self) -> None:
        self.uvicorn.run(sockets=[self.sock])

    def stop(self) -> None:
        self.uvicorn.should_exit = True
