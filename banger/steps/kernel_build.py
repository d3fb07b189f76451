"""`banger kernel build`'s steps: a kernel compiled from Debian's linux-source package.

    kernel-source -> kernel-config -> kernel-compile

kernel-source: `apt-get download linux-source-X.Y` (the host's apt sources), keyed by the package
and its candidate version; output the .deb. kernel-config: allnoconfig + the microVM fragment +
olddefconfig, checked (every option asked for survived); keyed by the .deb's digest, the
fragment and the toolchain; output the .config. kernel-compile: `make vmlinux bzImage`, keyed by
the .deb, the .config and the toolchain; outputs vmlinux and bzImage. The source tree and make's
O= tree stay under <cache>/kernel-build/ (banger.kernel.compile), so a killed compile resumes
where make stopped (both go once the compile's outputs are in the store); a second build is
three cached lookups.
"""
from __future__ import annotations

import functools
import hashlib
import shutil
from typing import Callable, Iterator

from banger.core import config
from banger.core.errors import BuildError
from banger.core.fsutil import remove_tree
from banger.engine import tasks as engine
from banger.kernel import apt, compile as kcompile, kconfig
from banger.kernel.errors import KernelError

SOURCE, CONFIG, COMPILE = "kernel-source", "kernel-config", "kernel-compile"
VERSION = "1"


@functools.cache
def toolchain() -> str:
    return kcompile.compiler_version()


def _errors(fn: Callable[[engine.StepRun], dict[str, str]]) -> Callable[[engine.StepRun], dict[str, str]]:
    @functools.wraps(fn)
    def wrapped(run: engine.StepRun) -> dict[str, str]:
        try:
            return fn(run)
        except KernelError as exc:
            raise BuildError(str(exc)) from None
    return wrapped


def tasks(build: engine.Build, dirs: config.Dirs, package: str, version: str,
          fragment: dict[str, str], jobs: int) -> Iterator[dict]:
    log = build.log

    @_errors
    def fetch(run: engine.StepRun) -> dict[str, str]:
        """download the kernel source package with apt-get"""
        log(f"kernel build: downloading {package} {version} with apt-get")
        deb = apt.apt_download(package, run.stage)
        got = apt.deb_fields(deb).get("Version")
        if got != version:
            raise BuildError(f"apt-get download {package} gave version {got}, not {version}; "
                             "the apt index changed meanwhile: run the build again")
        run.info["file"] = deb.name
        return {"deb": run.store.ingest_file(deb, algorithm="sha256")}

    def source(run: engine.StepRun):
        deb_digest = run.inputs["source"]
        return kcompile.using_source(dirs.cache, run.path(deb_digest), deb_digest, log)

    @_errors
    def configure(run: engine.StepRun) -> dict[str, str]:
        """configure the kernel: allnoconfig + the microVM fragment + olddefconfig"""
        with source(run) as src:
            log("kernel build: configuring (allnoconfig + fragment + olddefconfig)")
            kcompile.configure(src, run.stage / "out", fragment)
        return {"config": run.store.ingest_file(run.stage / "out" / ".config", algorithm="sha256")}

    @_errors
    def compile_(run: engine.StepRun) -> dict[str, str]:
        """compile vmlinux and bzImage"""
        ident = hashlib.sha256(f"{run.inputs['source']} {run.inputs['config']} {toolchain()}".encode()).hexdigest()
        out = kcompile.build_root(dirs.cache) / f"out-{ident[:16]}"
        dot_config = run.path(run.inputs["config"]).read_text()
        with source(run) as src:
            vmlinux, bzimage = kcompile.compile_kernel(src, out, dot_config, jobs, log)
        run.info["release"] = kcompile.kernel_release(out)
        outputs = {}
        for role, path in (("vmlinux", vmlinux), ("bzImage", bzimage)):
            shutil.copyfile(path, run.stage / role)
            outputs[role] = run.store.ingest_file(run.stage / role, algorithm="sha256")
        # the trees were kept only for a killed compile to resume; the outputs are in the store
        remove_tree(out)
        kcompile.drop_source(dirs.cache, run.inputs["source"])
        return outputs

    yield engine.step_task(build, name=SOURCE, version=VERSION, work=fetch, inputs=lambda: {},
                           params={"package": package, "version": version},
                           doc="download the kernel source package")
    yield engine.step_task(build, name=CONFIG, version=VERSION, work=configure,
                           inputs=lambda: {"source": build.output(SOURCE, "deb")},
                           params={"fragment": kconfig.digest(fragment)},
                           tools=lambda: {"toolchain": toolchain()}, deps=(SOURCE,),
                           doc="configure the kernel")
    yield engine.step_task(build, name=COMPILE, version=VERSION, work=compile_,
                           inputs=lambda: {"source": build.output(SOURCE, "deb"),
                                           "config": build.output(CONFIG, "config")},
                           tools=lambda: {"toolchain": toolchain()}, deps=(CONFIG,),
                           spinner=False, doc="compile the kernel")
