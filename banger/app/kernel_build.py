"""`banger kernel build NAME`: run the kernel-build steps through doit (cached like every step)
and install their outputs as a kernel bundle with no modules and no initramfs."""
from __future__ import annotations

import os
import shutil
from typing import Callable

from banger.core import inflight, procs
from banger.core.config import Dirs
from banger.core.errors import BuildError
from banger.core.store import Store
from banger.engine import doit_runner
from banger.engine.tasks import Build
from banger.kernel import bundle as kernel_bundle, compile as kcompile, kconfig
from banger.kernel.bundle import Bundle, KernelError, Staged
from banger.steps import kernel_build as step

DEFAULT_SOURCE = "debian:linux-source-6.1"
DEFAULT_CONFIG = "microvm"


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def build(dirs: Dirs, name: str, source: str = DEFAULT_SOURCE, config_choice: str = DEFAULT_CONFIG,
          jobs: int | None = None, force: bool = False,
          log: Callable[[str], None] = lambda msg: None) -> tuple[Bundle, bool]:
    """The bundle, and whether anything was (re)installed. KernelError/BuildError: one line."""
    kernel_bundle.validate_name(name)
    existing = None
    try:
        existing = kernel_bundle.load(dirs, name)
    except KernelError:
        pass
    if existing is not None and not existing.manifest.info.get("built") and not force:
        raise KernelError(f"kernel {name!r} already exists and was not built by `kernel build`; "
                          "use --force to replace it or pick another name")
    if jobs is not None and jobs < 1:
        raise KernelError(f"--jobs {jobs}: give at least 1 (default: the CPUs this process may use)")
    package = kcompile.source_package(source)
    fragment, label = kconfig.load(config_choice)
    kcompile.check_toolchain()
    version = kcompile.candidate_version(package)
    jobs = jobs or default_jobs()
    b = Build(Store(dirs.cache, dirs.trees), log)
    b.context["dirs"] = dirs
    task_dicts = list(step.tasks(b, dirs, package, version, fragment, jobs))
    dep_file = b.store.root / "staging" / f"doit-kernel-{procs.owner_tag()}.json"
    try:
        with inflight.building(dirs.cache, log):
            code = doit_runner.run(b, lambda: (t for t in task_dicts), dep_file, targets=(step.COMPILE,))
    finally:
        for p in dep_file.parent.glob(dep_file.name + "*"):
            p.unlink(missing_ok=True)
    if code != 0 or step.COMPILE not in b.records:
        raise BuildError(b.error or f"the kernel build failed (doit exit code {code})")
    for r in b.report:
        log(f"kernel build: {r.step} {r.status} ({r.seconds:.1f} s)")
    compiled, configured = b.records[step.COMPILE], b.records[step.CONFIG]
    built = {"key": compiled.key, "source": source, "package_version": version, "config": label,
             "fragment": kconfig.digest(fragment), "toolchain": compiled.tools.get("toolchain", "")}
    if existing is not None and existing.manifest.info.get("built") == built:
        return existing, False
    with kernel_bundle.staging(dirs, name) as work:
        d = work / "bundle"
        d.mkdir()
        shutil.copyfile(b.store.path(compiled.outputs["bzImage"]), d / "vmlinuz")
        shutil.copyfile(b.store.path(compiled.outputs["vmlinux"]), d / "vmlinux")
        shutil.copyfile(b.store.path(configured.outputs["config"]), d / "config")
        staged = Staged(d, compiled.info["release"], arch="amd64", distro="banger",
                        info={"built": built, "modules": False, "initrd": False})
        return kernel_bundle.commit(dirs, name, staged, source=f"build:{source}+{label}", force=True), True
