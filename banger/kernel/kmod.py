"""Kernel module metadata read straight from the .ko files, and the order to load a set in.

Each module's ELF `.modinfo` section holds NUL-separated `key=value` strings (`depends=`,
`softdep=`, `alias=`...). Reading it ourselves works for any kernel version and compression
(.ko, .ko.xz, .ko.zst, .ko.gz) without depending on the host's kmod.
"""
from __future__ import annotations

import gzip
import lzma
import os
import struct
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")

# What a microVM guest needs before it can mount an ext4 root on a virtio disk and talk to
# the host: virtio transports (PCI for QEMU, MMIO for Firecracker), block, net, ext4, vsock.
REQUIRED_FOR_BOOT = ("virtio_blk", "ext4")
WANTED_FOR_BOOT = ("virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "crc32c_generic",
                   "ext4", "vmw_vsock_virtio_transport")


class KmodError(ValueError):
    pass


def module_name(path: str | Path) -> str:
    """`kernel/fs/ext4/ext4.ko.xz` -> `ext4`; dashes and underscores are the same to the kernel."""
    base = os.path.basename(str(path))
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_module_bytes(path: Path) -> bytes:
    """The uncompressed ELF of a module file."""
    raw = Path(path).read_bytes()
    name = str(path)
    if name.endswith(".xz"):
        return lzma.decompress(raw)
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    if name.endswith(".gz"):
        return gzip.decompress(raw)
    return raw


def parse_modinfo(elf: bytes) -> dict[str, list[str]]:
    """The key -> values map of an ELF module's `.modinfo` section."""
    if elf[:4] != b"\x7fELF":
        raise KmodError("not an ELF kernel module")
    is64 = elf[4] == 2
    end = "<" if elf[5] == 1 else ">"
    if is64:
        shoff = struct.unpack_from(end + "Q", elf, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", elf, 0x3A)
        field = lambda base: struct.unpack_from(end + "IIQQQQ", elf, base)  # noqa: E731
    else:
        shoff = struct.unpack_from(end + "I", elf, 0x20)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", elf, 0x2E)
        field = lambda base: struct.unpack_from(end + "IIIIII", elf, base)  # noqa: E731
    sections = [field(shoff + i * shentsize) for i in range(shnum)]
    names_off = sections[shstrndx][4]
    info: dict[str, list[str]] = {}
    for sh_name, _type, _flags, _addr, offset, size in sections:
        name_end = elf.index(b"\0", names_off + sh_name)
        if elf[names_off + sh_name: name_end] != b".modinfo":
            continue
        for entry in elf[offset: offset + size].split(b"\0"):
            key, sep, value = entry.decode("utf-8", "replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
        return info
    raise KmodError("module has no .modinfo section")


def modinfo(path: Path) -> dict[str, list[str]]:
    try:
        return parse_modinfo(read_module_bytes(path))
    except (KmodError, struct.error, ValueError, lzma.LZMAError, OSError) as exc:
        raise KmodError(f"cannot read module info from {path}: {exc}") from None


def softdep_pre(values: list[str]) -> list[str]:
    """Module names a `softdep=pre: a b post: c` line wants loaded first."""
    names: list[str] = []
    for value in values:
        mode = None
        for word in value.split():
            if word.endswith(":"):
                mode = word[:-1]
            elif mode == "pre":
                names.append(word.replace("-", "_"))
    return names


@dataclass(frozen=True)
class Module:
    name: str
    path: Path  # absolute
    relpath: str  # relative to the modules dir of its version, e.g. kernel/fs/ext4/ext4.ko


class ModuleIndex:
    """The modules of one kernel version: `root` is `.../lib/modules/<version>`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise KmodError(f"no modules directory at {root}")
        self.files: dict[str, Module] = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for fname in files:
                if fname.endswith(SUFFIXES):
                    full = Path(dirpath) / fname
                    name = module_name(fname)
                    self.files.setdefault(name, Module(name, full, str(full.relative_to(self.root))))
        self.builtin = self._read_builtin()
        self._info: dict[str, dict[str, list[str]]] = {}
        self._aliases: dict[str, str] | None = None

    def _read_builtin(self) -> set[str]:
        try:
            lines = (self.root / "modules.builtin").read_text().split()
        except FileNotFoundError:
            return set()
        return {module_name(line) for line in lines}

    def info(self, name: str) -> dict[str, list[str]]:
        if name not in self._info:
            self._info[name] = modinfo(self.files[name].path)
        return self._info[name]

    def depends(self, name: str) -> list[str]:
        """Hard dependencies (`depends=`) of a loadable module."""
        values = self.info(name).get("depends", [])
        return [d.replace("-", "_") for v in values for d in v.split(",") if d]

    def resolve(self, name: str) -> str | None:
        """A module file name for `name` or for a plain alias of it (softdeps name aliases)."""
        name = name.replace("-", "_")
        if name in self.files or name in self.builtin:
            return name
        if self._aliases is None:
            self._aliases = {}
            for mod in self.files:
                for alias in self.info(mod).get("alias", []):
                    if not any(c in alias for c in "*?["):
                        self._aliases.setdefault(alias.replace("-", "_"), mod)
        return self._aliases.get(name)

    def load_order(self, wanted: list[str] | tuple[str, ...],
                   required: list[str] | tuple[str, ...] = ()) -> list[Module]:
        """Modules to insmod, dependencies first, for `wanted` (missing optional ones skipped).

        Built-in modules need no loading. A `required` module that is neither built in nor
        shipped raises.
        """
        order: list[Module] = []
        done: set[str] = set()
        visiting: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in done or name in self.builtin:
                return
            if name in visiting:
                raise KmodError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
            visiting.add(name)
            for dep in self.depends(name):
                if dep not in self.files and dep not in self.builtin:
                    raise KmodError(f"module {name} depends on {dep}, which is not in {self.root}")
                visit(dep, chain + (name,))
            for soft in softdep_pre(self.info(name).get("softdep", [])):
                target = self.resolve(soft)
                if target is not None:
                    visit(target, chain + (name,))
            visiting.discard(name)
            done.add(name)
            order.append(self.files[name])

        for want in wanted:
            name = want.replace("-", "_")
            if name in self.files:
                visit(name, ())
            elif name in self.builtin:
                continue
            elif name in required:
                raise KmodError(f"kernel module {name} is neither built in nor in {self.root}; "
                                "use a kernel with virtio and ext4 support")
        return order
