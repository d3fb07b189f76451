"""Step 5: inject banger's guest agents (network bootstrap, sshd installer, readiness agent,
sshd drop-in) into a copy of the ownership step's image. No user's SSH key: the image (and so
this step's key) is the same whoever builds it; identity.sh adds the key the host names on the
kernel command line at boot.

One read-only debugfs run looks at the image (init system, unit dir, sshd, which target paths
exist), then ONE batched write run creates missing dirs, replaces files (debugfs `write`
refuses to overwrite, so an existing file is `rm`ed first), sets uid/gid 0 and exact modes,
and makes the enable symlinks. The image's timestamps are pinned to the input root inode's
mtime (E2FSPROGS_FAKE_TIME), so the same inputs give the same image bytes. The result must
pass `e2fsck -fn` before it is ingested.

Images without systemd get an /etc/inittab `once` line (busybox init or sysvinit syntax) that
runs the same scripts in order; an image with neither systemd nor /etc/inittab is refused.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from banger.rootfs import debugfs, e2fs
from banger.core import fsutil
from banger.engine.tasks import Build, StepRun, step_task
from banger.core.errors import BuildError
from banger.rootfs.guest_assets import COLDPLUG_BEFORE_NETWORK, AssetError, GuestAssets, ImageLayout, NetworkSettings, assets_digest, inittab_style, render, template_digests
from banger.engine.spec import BuildSpec

STEP_VERSION = "3"  # 3: no user's SSH key in the image (nor in the key)
SYSTEMD_BINARIES = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")
SSHD_BINARIES = ("/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd", "/usr/local/sbin/sshd")
STAT_TYPE = re.compile(r"^Inode:\s*(\d+)\s+Type:\s*(\S+)")
MTIME = re.compile(r"^\s*mtime:\s*0x([0-9a-f]+)")
FAST_LINK = re.compile(r'^Fast link dest: "(.*)"$')


@dataclass(frozen=True)
class Entry:
    type: str  # "regular", "directory", "symlink", ...
    mtime: int | None = None
    link: str | None = None  # a fast symlink's target


@dataclass(frozen=True)
class InjectReport:
    files: int
    links: int
    dirs_created: int
    pinned_time: int


def stat_paths(image: Path, paths: list[str]) -> dict[str, Entry | None]:
    """Type (and mtime) of each path in the image, None when absent; one read-only debugfs run."""
    blocks = debugfs.run(image, [f"stat {debugfs.quote(p)}" for p in paths])
    found: dict[str, Entry | None] = {}
    for path, block in zip(paths, blocks):
        kind, mtime, link = None, None, None
        for line in block.output:
            if m := STAT_TYPE.match(line):
                kind = m.group(2)
            elif kind and mtime is None and (m := MTIME.match(line)):
                mtime = int(m.group(1), 16)
            elif kind and (m := FAST_LINK.match(line)):
                link = m.group(1)
        found[path] = Entry(kind, mtime, link) if kind else None
    return found


def probe_layout(image: Path, scratch: Path) -> ImageLayout:
    """Which init system the image has, where its units go, and whether sshd is installed."""
    coldplug_waiters = [f"{d}/systemd/system/{unit}" for d in ("/etc", "/usr/lib", "/lib")
                        for unit in COLDPLUG_BEFORE_NETWORK]
    paths = [*SYSTEMD_BINARIES, "/usr/lib/systemd/system", "/lib/systemd/system", *SSHD_BINARIES,
             "/etc/inittab", "/sbin/init", *coldplug_waiters]
    found = stat_paths(image, paths)
    has_sshd = any(found[p] for p in SSHD_BINARIES)
    if any(found[p] for p in SYSTEMD_BINARIES):
        def is_dir(path: str) -> bool:
            return found[path] is not None and found[path].type == "directory"

        lib_dir = "/lib" if is_dir("/lib/systemd/system") and not is_dir("/usr/lib/systemd/system") else "/usr/lib"
        return ImageLayout("systemd", lib_dir, has_sshd,
                           coldplug_before_network=any(found[p] for p in coldplug_waiters))
    if found["/etc/inittab"] and found["/etc/inittab"].type == "regular":
        copy = scratch / "inittab"
        debugfs.run(image, [f"dump /etc/inittab {debugfs.quote(str(copy))}"])
        if not copy.is_file():
            raise BuildError("could not read /etc/inittab from the image (debugfs dump failed)")
        init = found["/sbin/init"]
        inittab = copy.read_bytes()
        style = inittab_style(inittab, init.link if init else None)
        return ImageLayout(style, "/usr/lib", has_sshd, inittab)
    raise BuildError("the image has no init banger can hook: neither systemd (/usr/lib/systemd/systemd) "
                     "nor /etc/inittab; install systemd (or busybox init with an /etc/inittab) in the image")


def inject_agents(image: Path, assets: GuestAssets, scratch: Path) -> InjectReport:
    """Write `assets` into the ext4 `image` in place (it must be a private copy)."""
    targets = [f.path for f in assets.files] + [link.path for link in assets.links]
    wanted_dirs = sorted({d for t in targets for d in _ancestors(t)} | set(assets.dir_modes),
                         key=lambda p: (p.count("/"), p))
    found = stat_paths(image, ["/", *wanted_dirs, *targets])
    root = found["/"]
    pinned = root.mtime if root and root.mtime is not None else 0

    commands: list[str] = []

    def owned(path: str, mode: int | None) -> None:
        if mode is not None:
            commands.append(f"sif {debugfs.quote(path)} mode 0{mode:o}")
        commands.append(f"sif {debugfs.quote(path)} uid 0")
        commands.append(f"sif {debugfs.quote(path)} gid 0")

    created = 0
    for d in wanted_dirs:
        entry = found[d]
        if entry is None:
            commands.append(f"mkdir {debugfs.quote(d)}")
            owned(d, 0o40000 | assets.dir_modes.get(d, 0o755))
            created += 1
        elif entry.type not in ("directory", "symlink"):
            raise BuildError(f"the image has a {entry.type} file at {d} where banger needs a directory; "
                             f"remove it from the image")
        elif d in assets.dir_modes and entry.type == "directory":  # never chmod a symlink inode
            owned(d, 0o40000 | assets.dir_modes[d])

    def replace(path: str) -> None:
        entry = found[path]
        if entry is not None:
            if entry.type == "directory":
                raise BuildError(f"the image has a directory at {path} where banger writes a file; "
                                 f"remove it from the image")
            commands.append(f"rm {debugfs.quote(path)}")

    for i, f in enumerate(assets.files):
        host = scratch / f"asset-{i}"
        host.write_bytes(f.data)
        replace(f.path)
        commands.append(f"write {debugfs.quote(str(host))} {debugfs.quote(f.path)}")
        owned(f.path, 0o100000 | f.mode)
    for link in assets.links:
        replace(link.path)
        commands.append(f"symlink {debugfs.quote(link.path)} {debugfs.quote(link.target)}")
        owned(link.path, None)

    # e2fsprogs stamps new inodes and the superblock with E2FSPROGS_FAKE_TIME when it is set
    debugfs.run(image, commands, write=True, env={"E2FSPROGS_FAKE_TIME": str(max(pinned, 1))})
    return InjectReport(len(assets.files), len(assets.links), created, pinned)


def _ancestors(path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    while parent not in ("/", ""):
        yield parent
        parent = posixpath.dirname(parent)


# ---- the doit step --------------------------------------------------------------------------
def tasks(build: Build, spec: BuildSpec) -> Iterator[dict]:
    network = build.context.get("network") or NetworkSettings()

    def inputs() -> dict:
        try:
            assets = assets_digest(network)
        except AssetError as exc:
            raise BuildError(str(exc)) from None
        return {"image": build.output("ownership", "image"), "assets": assets}

    def work(run: StepRun) -> dict[str, str]:
        """inject guest agents (network, sshd installer, readiness agent)"""
        image = run.stage / "rootfs.ext4"
        fsutil.copy_sparse(run.path(run.inputs["image"]), image)
        scratch = run.stage / "assets"
        scratch.mkdir()
        layout = probe_layout(image, scratch)
        try:
            assets = render(network, layout)
        except AssetError as exc:
            raise BuildError(str(exc)) from None
        try:
            report = inject_agents(image, assets, scratch)
        except debugfs.DebugfsError as exc:
            raise BuildError(f"injecting guest agents failed: {exc}") from None
        e2fs.fsck(image)
        run.info.update({"init": layout.init, "unit_lib_dir": layout.lib_dir, "has_sshd": layout.has_sshd,
                         "files": report.files, "links": report.links, "dirs_created": report.dirs_created,
                         "pinned_time": report.pinned_time})
        return {"image": run.store.ingest_file(image)}

    yield step_task(build, name="inject", version=STEP_VERSION, work=work, inputs=inputs,
                    params=network.params(), tools=lambda: {"debugfs": e2fs.version("debugfs")},
                    deps=("ownership",), parts=lambda: {"assets": template_digests()})
