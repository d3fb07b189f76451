"""`banger ui`: a local web dashboard of images (and their builds' step charts), builds in
progress (live, from their journals), VMs, the cache and kernels.

Owns the ASGI app and its routes (server.py), the guard every request passes: token, Host
header, CSRF (security.py), what each page shows, gathered by calling the same functions the CLI
commands call (views.py), and the SVG charts drawn on the server (charts.py). Its HTML is the
jinja2 text in templates/ui/. Starlette and uvicorn are imported here only, and this package only
when `banger ui` runs.
May import: banger.vm, banger.app, banger.steps, banger.engine, the domain packages and
banger.core; never banger.cli.
"""
