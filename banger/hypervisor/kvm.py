"""Does /dev/kvm really run a vCPU at hardware speed? Run a tiny 64-bit guest and see.

On some hosts the device exists and VMs, vCPUs and even a lone `hlt` work, yet every guest
instruction is trapped and emulated: a Linux kernel then needs minutes to decompress itself.
So the test guest runs a 64-bit loop of a few million instructions (about a millisecond on real
hardware) with a store to memory in it, then reports through an I/O port and halts; not getting
there within the time budget means "not usable". It runs in a child process (this file, run as
a script, stdlib only) that is killed after a timeout; the parent reads one line of JSON.
"""
from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import platform
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

DEVICE = "/dev/kvm"

# ioctl numbers from <linux/kvm.h> (x86-64): _IO/_IOR/_IOW(0xAE, nr, struct size)
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # struct kvm_userspace_memory_region, 32 bytes
KVM_RUN = 0xAE80
KVM_SET_REGS = 0x4090AE82  # struct kvm_regs, 144 bytes
KVM_GET_SREGS = 0x8138AE83  # struct kvm_sregs, 312 bytes
KVM_SET_SREGS = 0x4138AE84
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
EXIT_REASONS = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN",
                9: "FAIL_ENTRY", 17: "INTERNAL_ERROR"}

GUEST_MEMORY = 0x200000  # one 2 MiB page, identity mapped
PML4, PDPT, PD, CODE = 0x2000, 0x3000, 0x4000, 0x1000
REPORT_PORT = 0x10
LOOPS = 1_000_000  # x3 instructions


def test_code(loops: int) -> bytes:
    """mov ecx,LOOPS; L: mov [0x5000],ecx; dec ecx; jnz L; mov al,42; out 0x10,al; hlt"""
    return (b"\xb9" + struct.pack("<I", loops) + b"\x89\x0c\x25\x00\x50\x00\x00"
            + b"\xff\xc9\x75\xf5" + b"\xb0\x2a\xe6" + bytes([REPORT_PORT]) + b"\xf4")


@dataclass(frozen=True)
class KvmStatus:
    usable: bool
    reason: str  # one line, either way


def probe(timeout: float = 1.0) -> KvmStatus:
    """Run the test guest in a child process; slow, hung or crashed there means "not usable"."""
    if platform.machine() != "x86_64":
        return KvmStatus(False, f"the KVM probe's test guest is x86-64 code; this host is {platform.machine()}")
    if not os.path.exists(DEVICE):
        return KvmStatus(False, f"{DEVICE} does not exist (no KVM on this host)")
    if not os.access(DEVICE, os.R_OK | os.W_OK):
        return KvmStatus(False, f"{DEVICE} is not readable and writable by this user (add it to the kvm group)")
    child = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "--child", str(timeout)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout + 1.0)
    except subprocess.TimeoutExpired:
        _kill(child)
        return KvmStatus(False, f"KVM_RUN did not return within {timeout + 1.0:g}s ({DEVICE} exists but its vCPUs do not run)")
    try:
        data = json.loads(out.decode().strip().splitlines()[-1])
        return KvmStatus(bool(data["usable"]), str(data["reason"]))
    except (ValueError, IndexError, KeyError):
        tail = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return KvmStatus(False, f"the KVM probe died (exit {child.returncode}): {tail}")


PROBE_CACHE_VERSION = "1"  # bump when the probe's test changes
# a "not usable" answer is asked again after this long: a loaded KVM host can miss the probe's
# deadline once, and should not run under TCG until its next reboot because of it
NEGATIVE_TTL = 3600.0


@functools.lru_cache(maxsize=1)
def cached_probe() -> KvmStatus:
    """The probe's answer, for this process and, in a small file under banger's state dir, for
    this boot of the host: the probe can take its whole second (here, where /dev/kvm emulates),
    and every `banger vm create` asks. The file is keyed by the host's boot id, /dev/kvm's inode
    and ctime and the user's ids and groups (the device's access); any change probes again, and
    a "not usable" answer is kept for NEGATIVE_TTL only."""
    key = _host_key()
    path = _cache_file()
    if key is not None and path is not None:
        try:
            data = json.loads(path.read_text())
            fresh = data["usable"] or time.time() - float(data["at"]) < NEGATIVE_TTL
            if data.get("key") == key and fresh:
                return KvmStatus(bool(data["usable"]), str(data["reason"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    status = probe()
    if key is not None and path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"key": key, "usable": status.usable, "reason": status.reason,
                                       "at": time.time()}))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only state dir: probe again next time
    return status


def _host_key() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        st = os.stat(DEVICE)
    except OSError:
        return None  # no device: probe() answers at once anyway
    return json.dumps([PROBE_CACHE_VERSION, boot, st.st_ino, st.st_rdev, st.st_ctime_ns, os.geteuid(),
                       os.getegid(), sorted(os.getgroups()), platform.machine()])


def _cache_file():
    try:
        from banger.core.config import default_dirs  # not at import: this file also runs as a bare script
        return default_dirs().state / "kvm-probe.json"
    except Exception:
        return None


def _kill(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        child.wait(timeout=2.0)
    except subprocess.TimeoutExpired:  # stuck in the kernel; it dies when KVM_RUN returns
        pass


class _Alarm(Exception):
    pass


def _segment(sregs: bytearray, index: int, selector: int, code: bool) -> None:
    """A flat ring-0 segment: 64-bit code (L=1) or data (D/B=1) in struct kvm_segment."""
    seg_type, db, long = (11, 0, 1) if code else (3, 1, 0)
    # base, limit, selector, type, present, dpl, db, s, l, g, avl, unusable, padding
    struct.pack_into("QIHBBBBBBBBBx", sregs, index * 24, 0, 0xFFFFFFFF, selector,
                     seg_type, 1, 0, db, 1, long, 1, 0, 0)


def _run_test_guest(budget: float, loops: int = LOOPS) -> KvmStatus:
    import fcntl

    kvm = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    version = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
    if version != 12:
        return KvmStatus(False, f"KVM API version {version}, expected 12")
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)

    memory = mmap.mmap(-1, GUEST_MEMORY, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                       mmap.PROT_READ | mmap.PROT_WRITE)
    struct.pack_into("Q", memory, PML4, PDPT | 0x3)  # present | writable
    struct.pack_into("Q", memory, PDPT, PD | 0x3)
    struct.pack_into("Q", memory, PD, 0x83)  # a 2 MiB page at 0
    code = test_code(loops)
    memory[CODE:CODE + len(code)] = code
    host_addr = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("IIQQQ", 0, 0, 0, GUEST_MEMORY, host_addr))

    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    sregs = bytearray(fcntl.ioctl(vcpu, KVM_GET_SREGS, bytes(312)))
    _segment(sregs, 0, 0x08, code=True)  # cs
    for index in range(1, 6):  # ds es fs gs ss
        _segment(sregs, index, 0x10, code=False)
    # cr0 (PE|MP|ET|NE|WP|AM|PG), cr2, cr3, cr4 (PAE), cr8, efer (LME|LMA)
    struct.pack_into("QQQQQQ", sregs, 224, 0x80050033, 0, PML4, 0x20, 0, 0x500)
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)
    struct.pack_into("Q", regs, 6 * 8, 0x8000)  # rsp
    struct.pack_into("QQ", regs, 16 * 8, CODE, 0x2)  # rip, rflags (bit 1 is always set)
    fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))

    def on_alarm(signum, frame):
        raise _Alarm()

    too_slow = KvmStatus(False, f"{DEVICE} exists but a vCPU did not finish a test loop of {3 * loops:,} "
                                f"instructions within {budget:g}s (guest code is trapped or emulated, not run natively)")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, budget)
    exits = []
    try:
        while len(exits) < 4:
            fcntl.ioctl(vcpu, KVM_RUN, 0)
            exits.append(struct.unpack_from("I", run, 8)[0])
            if exits[-1] != KVM_EXIT_IO:
                break
    except _Alarm:
        return too_slow
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.monotonic() - start
    port = struct.unpack_from("H", run, 34)[0]  # kvm_run.io.port (after direction, size)
    if exits != [KVM_EXIT_IO, KVM_EXIT_HLT] or port != REPORT_PORT:
        names = ", ".join("KVM_EXIT_" + EXIT_REASONS.get(e, str(e)) for e in exits)
        return KvmStatus(False, f"the KVM test guest exited with {names} instead of IO then HLT")
    if struct.unpack_from("I", memory, 0x5000)[0] != 1:
        return KvmStatus(False, "the KVM test guest ran but its memory writes are missing")
    return KvmStatus(True, f"{DEVICE} ran a test loop of {3 * loops:,} instructions in {seconds * 1000:.1f} ms")


def _child_main(timeout: float) -> None:
    try:
        status = _run_test_guest(timeout)
    except OSError as exc:
        status = KvmStatus(False, f"KVM ioctl failed: {exc.strerror or exc} (errno {exc.errno})")
    print(json.dumps({"usable": status.usable, "reason": status.reason}), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child_main(float(sys.argv[2]))
