"""What the front ends call (the CLI today, the UI later): run, explain and --check a build
(build.py, check.py), manage the cache (cache.py), share it through an OCI registry
(cache_remote.py; its layout remote_layout.py, signatures cache_signing.py, what the CLI and
builds call cache_remote_ops.py), copy an image's boot files out of it (export.py), the demo
(demo.py) and `doctor`.
May import: banger.steps, banger.engine, the domain packages and banger.core; never banger.cli.
"""
