"""The files banger puts into every guest, rendered from the jinja2 templates in `templates/`.

Everything the guest runs is a POSIX sh script (images may have no Python):
    identity.sh     the host user's SSH key in root's authorized_keys at every boot (banger.ssh_key=,
                    ssh_key_word: no user's key is in the image, which is the same for everyone);
                    a persistent VM's own host name, machine id and sshd host keys, set on the
                    first boot with a new banger.id= (identity_cmdline)
    network.sh      configure the first NIC (values from NETWORK_ENV, or banger.ip= etc. on the
                    kernel command line, which wins)
    sshd-keys.sh    create sshd's ed25519 host key when the image has none
    first-boot.sh   install openssh-server with the distro's package manager (marker-driven)
    agent.sh        print `BANGER_READY <boot-id>` on the serial console once units started,
                    after the sshd host key as `BANGER_HOSTKEY <boot-id> <type> <base64>`
                    (parse_hostkey_lines); in a snapshot boot, hand over to resume.sh
    resume.sh       a snapshot boot's quiesce point: announce BANGER_SNAPSHOT_READY, wait on the
                    second serial port for a restored VM's identity (resume_message), apply it
plus systemd units (enabled by `multi-user.target.wants` links and a preset file), or, for an
image without systemd, one /etc/inittab line that runs sysv-boot.sh (busybox init, sysvinit).

For a fast boot under emulation (where every exec costs a third of a second), a systemd image also
gets a drop-in that starts sshd without waiting for basic.target (SSHD_EARLY_DROP_INS), one that
runs udev's coldplug after sshd started (UDEV_TRIGGER_DROP_IN; not when the image's network
setup itself waits for coldplug, e.g. ifupdown), and the generators that cannot
apply to a banger VM are masked (MASKED_GENERATORS).

The assets digest covers the template bytes and every render parameter except the image layout (a
function of the input image), so editing a template reruns only the inject step and the ones after
it.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from banger.core import digest as dg

ASSETS_FORMAT = "4"  # bump when the mapping below (paths, modes, which files) changes; 4: resume.sh
READY_PREFIX = "BANGER_READY"  # the agent's console line: "BANGER_READY <boot-id>"
HOSTKEY_PREFIX = "BANGER_HOSTKEY"  # the agent's key lines before it: "BANGER_HOSTKEY <boot-id> <type> <base64>"
SNAPSHOT_READY_PREFIX = "BANGER_SNAPSHOT_READY"  # resume.sh's line: "... <boot-id>", then it waits
RESUME_PREFIX = "BANGER_RESUME"  # the host's line to a restored VM, then its host key, then RESUME_END
RESUME_END = "BANGER_RESUME_END"
RESUME_CHANNEL = "/dev/ttyS1"  # the second serial port: QEMU's resume socket (hypervisor.qemu)
RESUME_CHANNEL_WORD = "banger.resume_channel"  # kernel command line: another channel (resume.sh spells it)
IDENTITY_MARKER = "/var/lib/banger/vm-id"  # the banger.id identity.sh last set up (in the guest)
VSOCK_READY_PORT = 10789  # the agent also sends the line to host CID 2 on this port
SCRIPTS_DIR = "/usr/lib/banger"
NETWORK_ENV = "/etc/banger/network.env"
FIRST_BOOT_MARKER = "/var/lib/banger/first-boot-pending"
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/banger.conf"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
INITTAB = "/etc/inittab"
SYSV_HOOK = f"{SCRIPTS_DIR}/sysv-boot.sh"
# `id:runlevels:action:process`. busybox init takes the id as the tty to run on (so it must be
# empty) and ignores runlevels; sysvinit needs a 1-4 character id and runlevels.
INITTAB_LINES = {"busybox": f"::once:{SYSV_HOOK}", "sysvinit": f"bngr:2345:once:{SYSV_HOOK}"}
WANTS_DIR = "/etc/systemd/system/multi-user.target.wants"
UNITS = ("banger-identity.service", "banger-network.service", "banger-sshd-keys.service",
         "banger-first-boot.service", "banger-agent.service")
SCRIPTS = ("identity.sh", "network.sh", "sshd-keys.sh", "first-boot.sh", "agent.sh", "resume.sh",
           "sysv-boot.sh")
PRESET = "80-banger.preset"
# units whose templates set StartupCPUWeight= (agent.sh restores their weight after the boot)
STARTUP_WEIGHTED_UNITS = ("ssh.service", "sshd.service", "banger-network.service",
                          "banger-sshd-keys.service", "banger-agent.service")
SSHD_UNITS = ("ssh.service", "sshd.service")  # Debian/Ubuntu's name, everyone else's
# distinct file names: on Debian sshd.service is an alias of ssh.service, both dirs apply to it, and
# a same-named drop-in in one would hide the other's
SSHD_EARLY_DROP_INS = tuple(f"/etc/systemd/system/{unit}.d/banger-{unit.removesuffix('.service')}-early.conf"
                            for unit in SSHD_UNITS)
UDEV_TRIGGER_DROP_IN = "/etc/systemd/system/systemd-udev-trigger.service.d/banger-after-sshd.conf"
# units that run after udev's coldplug and before network.target (ifupdown's pre-step waits for
# coldplug so that the interfaces it configures exist); with one of them, no UDEV_TRIGGER_DROP_IN
COLDPLUG_BEFORE_NETWORK = ("ifupdown-pre.service",)
# Masked with /dev/null links (systemd.generator(7)); each costs ~0.3-0.5 s of an emulated vCPU at
# every boot and has nothing to do in a VM whose one disk is a whole-disk ext4 root named by root=:
# no GPT to auto-mount, no swap to resume from, no crypttab/integritytab/veritytab devices, no
# offline update (system-update.target) and no systemd.run= on banger's kernel command line.
# Kept, because an image or a user may need them: sysv (init.d scripts without a native unit),
# rc-local, getty (the serial-console login) and debug (systemd.mask= on the command line).
GENERATOR_MASK_DIR = "/etc/systemd/system-generators"
MASKED_GENERATORS = ("systemd-gpt-auto-generator", "systemd-hibernate-resume-generator",
                     "systemd-cryptsetup-generator", "systemd-integritysetup-generator",
                     "systemd-veritysetup-generator", "systemd-system-update-generator",
                     "systemd-run-generator")


class AssetError(ValueError):
    """Bad render parameters; the message is one line."""


@dataclass(frozen=True)
class NetworkSettings:
    """Defaults fit QEMU user-mode networking; a tap setup passes banger.ip= etc. at boot."""
    address: str = "10.0.2.15/24"
    gateway: str = "10.0.2.2"
    dns: str = "10.0.2.3"

    def __post_init__(self) -> None:
        try:
            iface = ipaddress.ip_interface(self.address)
        except ValueError:
            raise AssetError(f"guest address {self.address!r} is not ADDRESS/PREFIX; use e.g. 10.0.2.15/24") from None
        if "/" not in self.address:
            raise AssetError(f"guest address {self.address!r} has no prefix length; use e.g. {iface.ip}/24")
        for what, value in (("gateway", self.gateway), ("dns", self.dns)):
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise AssetError(f"guest {what} {value!r} is not an IP address; use e.g. 10.0.2.2") from None

    def params(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class ImageLayout:
    """What the inject step found in the image (read-only debugfs probe)."""
    init: str  # "systemd", or "busybox" / "sysvinit" (an /etc/inittab hook)
    lib_dir: str = "/usr/lib"  # the dir holding systemd/system: /usr/lib, or /lib without merged /usr
    has_sshd: bool = False
    inittab: bytes | None = None  # current /etc/inittab, for the inittab hook
    # a unit of the image (COLDPLUG_BEFORE_NETWORK) orders network.target after udev's coldplug,
    # and sshd waits for network.target: coldplug then cannot wait for sshd (an ordering cycle)
    coldplug_before_network: bool = False


@dataclass(frozen=True)
class GuestFile:
    path: str
    mode: int  # permission bits; every file is uid 0 / gid 0
    data: bytes


@dataclass(frozen=True)
class GuestLink:
    path: str
    target: str


@dataclass
class GuestAssets:
    files: list[GuestFile] = field(default_factory=list)
    links: list[GuestLink] = field(default_factory=list)
    dir_modes: dict[str, int] = field(default_factory=dict)  # dirs whose mode banger sets


def template_dir() -> Path:
    """$BANGER_TEMPLATES_DIR (your own guest assets) when set; else banger/templates/ when
    installed (pyproject maps the package `banger.templates` there), else the repo's top-level
    templates/ when run from a source checkout."""
    override = os.environ.get("BANGER_TEMPLATES_DIR")
    if override:
        if not (Path(override) / "network.sh.j2").is_file():
            raise AssetError(f"BANGER_TEMPLATES_DIR={override} holds no banger templates; copy templates/ there first")
        return Path(override)
    here = Path(__file__).resolve().parents[1]  # the banger package
    installed = here / "templates"
    return installed if (installed / "network.sh.j2").is_file() else here.parent / "templates"


@lru_cache(maxsize=4)
def _environment(root: str):
    import jinja2  # only when rendering: a cached build needs the template bytes, not jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(root), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def template_bytes(root: Path | None = None) -> dict[str, bytes]:
    root = root or template_dir()
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.j2"))}


def render_params(network: NetworkSettings) -> dict:
    """Everything the templates see apart from the image layout."""
    return {
        "network": network.params(),
        "ready_prefix": READY_PREFIX,
        "hostkey_prefix": HOSTKEY_PREFIX,
        "snapshot_ready_prefix": SNAPSHOT_READY_PREFIX,
        "resume_prefix": RESUME_PREFIX,
        "resume_end": RESUME_END,
        "resume_channel": RESUME_CHANNEL,
        "identity_marker": IDENTITY_MARKER,
        "vsock_port": VSOCK_READY_PORT,
        "scripts_dir": SCRIPTS_DIR,
        "network_env": NETWORK_ENV,
        "first_boot_marker": FIRST_BOOT_MARKER,
        "units": list(UNITS),
        "sshd_drop_in_name": SSHD_EARLY_DROP_INS[0],
        "startup_weighted_units": " ".join(STARTUP_WEIGHTED_UNITS),
    }


def template_digests(root: Path | None = None) -> dict[str, str]:
    """{template file name: blake3 digest}: what the assets digest is made of, file by file."""
    return {name: dg.of_bytes(data, "blake3") for name, data in template_bytes(root).items()}


def assets_digest(network: NetworkSettings, root: Path | None = None) -> str:
    templates = template_digests(root)
    if not templates:
        raise AssetError(f"no guest templates (*.j2) in {root or template_dir()}; reinstall banger")
    return dg.of_bytes(dg.canonical({"format": ASSETS_FORMAT, "templates": templates,
                                     "params": render_params(network)}), "blake3")


def render_template(name: str, network: NetworkSettings, root: Path | None = None, *,
                    sshd_in_image: bool = False, unit: str | None = None) -> bytes:
    """`sshd_in_image` comes from the image layout (so it is not part of the assets digest);
    `unit` names the unit a drop-in template is rendered for."""
    root = root or template_dir()
    params = render_params(network) | {"template_path": f"templates/{name}", "sshd_in_image": sshd_in_image,
                                       "unit": unit}
    return _environment(str(root)).get_template(name).render(**params).encode()


def render(network: NetworkSettings, layout: ImageLayout, root: Path | None = None) -> GuestAssets:
    """The guest files for one image: scripts, config, and units or an inittab hook. No user's
    key: identity.sh adds the one the host names on the command line (ssh_key_word) at boot, so
    the image is the same whoever builds it."""
    def text(name: str, unit: str | None = None) -> bytes:
        return render_template(name, network, root, sshd_in_image=layout.has_sshd, unit=unit)

    assets = GuestAssets()
    add = assets.files.append
    for script in SCRIPTS:
        if script == "sysv-boot.sh" and layout.init == "systemd":
            continue
        add(GuestFile(f"{SCRIPTS_DIR}/{script}", 0o755, text(f"{script}.j2")))
    add(GuestFile(NETWORK_ENV, 0o644, text("network.env.j2")))
    add(GuestFile(SSHD_DROP_IN, 0o644, text("sshd_config.conf.j2")))
    if not layout.has_sshd:
        add(GuestFile(FIRST_BOOT_MARKER, 0o644, b""))
    assets.dir_modes.update({"/root": 0o700, "/root/.ssh": 0o700})

    if layout.init == "systemd":
        unit_dir = f"{layout.lib_dir}/systemd/system"
        for unit in UNITS:
            add(GuestFile(f"{unit_dir}/{unit}", 0o644, text(f"{unit}.j2")))
            assets.links.append(GuestLink(f"{WANTS_DIR}/{unit}", f"{unit_dir}/{unit}"))
        add(GuestFile(f"{layout.lib_dir}/systemd/system-preset/{PRESET}", 0o644, text(f"{PRESET}.j2")))
        for unit, drop_in in zip(SSHD_UNITS, SSHD_EARLY_DROP_INS):
            add(GuestFile(drop_in, 0o644, text("sshd-early.conf.j2", unit)))
        if not layout.coldplug_before_network:
            add(GuestFile(UDEV_TRIGGER_DROP_IN, 0o644, text("udev-trigger-after-sshd.conf.j2")))
        for generator in MASKED_GENERATORS:
            assets.links.append(GuestLink(f"{GENERATOR_MASK_DIR}/{generator}", "/dev/null"))
    elif layout.init in INITTAB_LINES:
        add(GuestFile(INITTAB, 0o644, with_inittab_hook(layout.inittab or b"", layout.init)))
    else:
        raise AssetError(f"internal: unknown init system {layout.init!r}")
    return assets


def inittab_style(inittab: bytes, init_link: str | None) -> str:
    """busybox when /sbin/init links to busybox or the inittab has busybox's `::action` lines."""
    if init_link and init_link.rstrip("/").endswith("busybox"):
        return "busybox"
    lines = inittab.decode("utf-8", "surrogateescape").splitlines()
    return "busybox" if any(line.startswith("::") for line in lines) else "sysvinit"


def with_inittab_hook(inittab: bytes, style: str) -> bytes:
    """The inittab with banger's `once` line for `style` added (exactly once, replacing an old one)."""
    line = INITTAB_LINES[style]
    lines = inittab.decode("utf-8", "surrogateescape").splitlines()
    if line in lines:
        return inittab
    lines = [x for x in lines if SYSV_HOOK not in x or x.lstrip().startswith("#")] + [line]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


# ---- a persistent VM's identity (identity.sh) and host key (agent.sh) -------------------------
VM_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # one DNS label, lowercase
VM_ID = re.compile(r"[0-9a-f]{32}")  # a machine id (machine-id(5)): 128 bits in lowercase hex
HOSTKEY_LINE = re.compile(rf"\s*{HOSTKEY_PREFIX}\s+(\S+)\s+([A-Za-z0-9@.-]+)\s+([A-Za-z0-9+/]+={{0,2}})\s*")


SSH_KEY_TYPE = re.compile(r"ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa")
SSH_KEY_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def ssh_key_word(ssh_key: str) -> str:
    """`banger.ssh_key=TYPE:BASE64` for a public key line ("ssh-ed25519 AAAA... comment"): at every
    boot, identity.sh adds it to root's authorized_keys when it is not there yet."""
    parts = ssh_key.split()
    if len(parts) < 2 or not SSH_KEY_TYPE.fullmatch(parts[0]) or not SSH_KEY_BASE64.fullmatch(parts[1]):
        raise AssetError(f"{ssh_key[:40]!r}... is not an OpenSSH public key line; remove banger's managed "
                         f"key under the state dir's ssh/ and banger makes a new one")
    return f"banger.ssh_key={parts[0]}:{parts[1]}"


def identity_cmdline(name: str, vm_id: str, grow: bool, systemd: bool = True, ssh_key: str | None = None) -> str:
    """The kernel command line words that make a boot VM `name` with machine id `vm_id`:
    `banger.name=NAME banger.id=ID`, `banger.grow=1` when the root file system should grow to its
    device, `banger.ssh_key=TYPE:BASE64` for a public key ("ssh-ed25519 AAAA... comment") that
    root's authorized_keys must hold, and for systemd images `systemd.hostname=NAME
    systemd.machine_id=ID` (applied by systemd itself before any unit runs). identity.sh acts on
    the first boot with a new id (and on the key at every boot)."""
    if not isinstance(name, str) or not VM_NAME.fullmatch(name):
        raise AssetError(f"VM name {name!r} is not a host name: use a-z, 0-9 and inner '-', at most 63 characters")
    if not isinstance(vm_id, str) or not VM_ID.fullmatch(vm_id) or not vm_id.strip("0"):
        raise AssetError(f"VM id {vm_id!r} is not a machine id: use 32 lowercase hex digits, not all 0 "
                         f"(e.g. uuid.uuid4().hex)")
    words = [f"banger.name={name}", f"banger.id={vm_id}"]
    if grow:
        words.append("banger.grow=1")
    if ssh_key:
        words.append(ssh_key_word(ssh_key))
    if systemd:
        words += [f"systemd.hostname={name}", f"systemd.machine_id={vm_id}"]
    return " ".join(words)


def parse_hostkey_lines(lines: Iterable[str], boot_id: str | None = None) -> list[str]:
    """The sshd host keys ("ssh-ed25519 AAAA...") in the agent's console lines, in order, each
    once (the line can reach the log through two consoles); with `boot_id`, only that boot's. A
    line whose base64 is not a key blob of the type it names is skipped."""
    keys: list[str] = []
    for line in lines:
        m = HOSTKEY_LINE.fullmatch(line)
        if not m or (boot_id is not None and m.group(1) != boot_id):
            continue
        key = f"{m.group(2)} {m.group(3)}"
        if key not in keys and _blob_names(m.group(3), m.group(2)):
            keys.append(key)
    return keys


def _blob_names(data: str, key_type: str) -> bool:
    """An SSH public key blob starts with its type as an SSH string (uint32 length, bytes)."""
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    size = int.from_bytes(blob[:4], "big")
    return len(blob) > 4 and blob[4:4 + size] == key_type.encode()


# ---- a VM restored from a snapshot (resume.sh) ----------------------------------------------------
SNAPSHOT_WORD = "banger.snapshot=1"  # on a snapshot boot's kernel command line


MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def resume_message(name: str, vm_id: str, ssh_key: str, host_private_key: bytes, host_public_key: str,
                   *, clock: float, seed: bytes, grow_to_sectors: int | None = None,
                   network=None, mac: str | None = None) -> bytes:
    """What the host sends a restored VM on its resume channel (see resume.sh): one line of
    words (identity_cmdline's, the clock, fresh entropy, the new sshd host key's public half,
    the disk's new size, a bridge VM's address and MAC: `network` has .address (ADDR/PREFIX),
    .gateway and .dns (or None), e.g. hypervisor.vm.GuestNetwork), then the host key's OpenSSH
    private key lines, then RESUME_END."""
    words = identity_cmdline(name, vm_id, grow_to_sectors is not None, systemd=False, ssh_key=ssh_key).split()
    parts = host_public_key.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519" or not SSH_KEY_BASE64.fullmatch(parts[1]):
        raise AssetError(f"{host_public_key[:40]!r}... is not an ed25519 public key line")
    words += [f"banger.time={clock:.3f}", f"banger.seed={seed.hex()}", f"banger.hostkey={parts[0]}:{parts[1]}"]
    if grow_to_sectors is not None:
        words.append(f"banger.disk_sectors={int(grow_to_sectors)}")
    if network is not None:
        if mac is None or not MAC.fullmatch(mac):
            raise AssetError(f"MAC address {mac!r} is not six lowercase hex pairs (e.g. 52:54:00:12:34:56)")
        NetworkSettings(network.address, network.gateway, network.dns or network.gateway)  # validates
        words += [f"banger.ip={network.address}", f"banger.gw={network.gateway}", f"banger.mac={mac}"]
        if network.dns:
            words.append(f"banger.dns={network.dns}")
    key_lines = host_private_key.decode("ascii").strip().splitlines()
    if not key_lines or not key_lines[0].startswith("-----BEGIN OPENSSH PRIVATE KEY-----"):
        raise AssetError("the restored VM's host key is not an OpenSSH private key")
    return ("\n".join([f"{RESUME_PREFIX} {' '.join(words)}", *key_lines, RESUME_END]) + "\n").encode("ascii")
