"""`banger ui`: the local web dashboard (banger/ui/); starlette and uvicorn load only here."""
from __future__ import annotations

from typing import Optional

import typer

from banger.cli.common import dirs, fail, say

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ui(port: int = typer.Option(7777, "--port", help="Port on 127.0.0.1 (0: any free one)."),
       open_: bool = typer.Option(False, "--open", help="Open the dashboard in the default browser."),
       listen: Optional[str] = typer.Option(None, "--listen", metavar="ADDRESS",
                                            help="Listen on ADDRESS instead of 127.0.0.1 (others on the "
                                                 "network can reach it; they still need the token).")) -> None:
    """A local dashboard of images (their builds' steps), builds in progress, VMs, the cache and kernels."""
    from banger.ui.server import Server, UIStartError

    host = listen or "127.0.0.1"
    if listen is not None and listen not in LOOPBACK:
        say(f"warning: --listen {listen}: the dashboard is reachable from other machines (token-protected, "
            "plain HTTP); keep it on 127.0.0.1 unless you mean it")
    try:
        server = Server(dirs(), host, port)
    except UIStartError as exc:
        fail(str(exc))
    typer.echo(f"banger ui: {server.url}", err=False)
    say("(the token in the URL is the key; Ctrl-C stops it)")
    if open_:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
