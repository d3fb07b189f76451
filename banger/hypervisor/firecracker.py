"""Boot a VM with Firecracker: configure it over its REST API on a unix socket, then start it.

Firecracker boots the uncompressed kernel (vmlinux), needs a writable disk (the build's boot
check gets a reflinked/sparse copy of the rootfs in its run dir; a kept VM brings its own disk)
and a tap device for networking (root only; a kept VM brings the tap banger.net made). A guest
`poweroff` leaves Firecracker running; SendCtrlAltDel makes the guest reboot, which ends the
Firecracker process. Its sockets are named relative to the run dir it runs in, and the API is
reached through /proc/self/fd/N/api.sock: unix socket paths are limited to 108 bytes.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from banger.core import fsutil
from banger.hypervisor.choice import tap_problem
from banger.hypervisor.vm import VM, GuestNetwork, VMError

API_TIMEOUT = 10.0
SOCKET_WAIT = 5.0
TAP_POOL = ipaddress.ip_network("172.30.0.0/16")  # one /30 per VM: host .1, guest .2
GUEST_CID = 3  # the first CID a guest may use
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"


class FirecrackerError(VMError):
    """Firecracker refused a request; the message is its fault_message on one line."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(socket_path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with fsutil.socket_path(self.socket_path) as short:  # a run dir can be deep
                sock.connect(short)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class FirecrackerAPI:
    """The subset of the Firecracker API banger uses (see the official firecracker-api.yaml)."""

    def __init__(self, socket_path: Path, timeout: float = API_TIMEOUT):
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None) -> Any:
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except OSError as exc:
            raise FirecrackerError(f"Firecracker API {method} {path} over {self.socket_path} failed: {exc}") from None
        finally:
            conn.close()
        if response.status >= 300:
            raise FirecrackerError(f"Firecracker refused {method} {path} (HTTP {response.status}): "
                                   f"{_fault_message(data)}")
        return json.loads(data) if data.strip() else None

    # ---- pre-boot configuration ------------------------------------------------------------------
    def put_logger(self, log_path: Path, level: str = "Warning") -> None:
        self.request("PUT", "/logger", {"log_path": str(log_path), "level": level})

    def put_boot_source(self, kernel: Path, boot_args: str, initrd: Path | None = None) -> None:
        body: dict[str, Any] = {"kernel_image_path": str(kernel), "boot_args": boot_args}
        if initrd is not None:
            body["initrd_path"] = str(initrd)
        self.request("PUT", "/boot-source", body)

    def put_drive(self, drive_id: str, path: Path, *, root: bool, read_only: bool = False) -> None:
        self.request("PUT", f"/drives/{drive_id}", {"drive_id": drive_id, "path_on_host": str(path),
                                                     "is_root_device": root, "is_read_only": read_only})

    def put_machine_config(self, vcpus: int, memory_mib: int) -> None:
        self.request("PUT", "/machine-config", {"vcpu_count": vcpus, "mem_size_mib": memory_mib, "smt": False})

    def put_network_interface(self, iface_id: str, tap: str, guest_mac: str) -> None:
        self.request("PUT", f"/network-interfaces/{iface_id}",
                     {"iface_id": iface_id, "host_dev_name": tap, "guest_mac": guest_mac})

    def put_vsock(self, guest_cid: int, uds_path: Path) -> None:
        self.request("PUT", "/vsock", {"guest_cid": guest_cid, "uds_path": str(uds_path)})

    # ---- actions ---------------------------------------------------------------------------------------
    def action(self, action_type: str) -> None:
        self.request("PUT", "/actions", {"action_type": action_type})

    def instance_start(self) -> None:
        self.action("InstanceStart")

    def send_ctrl_alt_del(self) -> None:
        self.action("SendCtrlAltDel")

    # ---- snapshots -------------------------------------------------------------------------------------
    def patch_vm(self, state: str) -> None:
        self.request("PATCH", "/vm", {"state": state})

    def pause(self) -> None:
        self.patch_vm("Paused")

    def resume(self) -> None:
        self.patch_vm("Resumed")

    def create_snapshot(self, snapshot_path: Path, mem_file_path: Path) -> None:
        """A full snapshot of the paused microVM: its state to snapshot_path, its memory to
        mem_file_path (post-boot, paused only)."""
        self.request("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": str(snapshot_path),
                                                 "mem_file_path": str(mem_file_path)})

    def load_snapshot(self, snapshot_path: Path, mem_file_path: Path, tap: str | None = None) -> None:
        """Load a full snapshot into a fresh Firecracker (nothing but the logger configured), paused;
        `tap`: the host device eth0 now uses (the saved one's belonged to the snapshot VM)."""
        body: dict[str, Any] = {"snapshot_path": str(snapshot_path),
                                "mem_backend": {"backend_type": "File", "backend_path": str(mem_file_path)},
                                "enable_diff_snapshots": False, "resume_vm": False}
        if tap is not None:
            body["network_overrides"] = [{"iface_id": "eth0", "host_dev_name": tap}]
        self.request("PUT", "/snapshot/load", body)

    def patch_drive(self, drive_id: str, path: Path) -> None:
        """Post-boot: reopen the drive's file; the guest is told its (new) size."""
        self.request("PATCH", f"/drives/{drive_id}", {"drive_id": drive_id, "path_on_host": str(path)})

    def describe_instance(self) -> dict:
        return self.request("GET", "/")

    def listening(self) -> bool:
        """Whether Firecracker accepts connections yet: its socket file appears at bind(), a moment
        before listen(), and a connect in between is refused."""
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.connect()
        except OSError:
            return False
        finally:
            conn.close()
        return True


def _fault_message(data: bytes) -> str:
    try:
        message = str(json.loads(data).get("fault_message", "")) or "no fault_message"
    except (ValueError, AttributeError):
        message = data.decode("utf-8", "replace") or "empty response"
    return " ".join(message.split())  # one line


# ---- tap networking --------------------------------------------------------------------------------
class Tap:
    """A tap device with a /30: the host end gets .1, the guest .2 (root only)."""

    def __init__(self, name: str, subnet: ipaddress.IPv4Network):
        self.name = name
        self.subnet = subnet
        hosts = list(subnet.hosts())
        self.host_ip, self.guest_ip = hosts[0], hosts[1]
        self.created = False

    @classmethod
    def allocate(cls) -> "Tap":
        problem = tap_problem()
        if problem:
            raise VMError(f"Firecracker networking needs a tap device: {problem}")
        used = _used_ipv4_networks()
        for _ in range(64):
            subnet = ipaddress.ip_network(
                f"{TAP_POOL.network_address + 4 * secrets.randbelow(TAP_POOL.num_addresses // 4)}/30")
            if not any(subnet.overlaps(net) for net in used):
                return cls(f"bgr{secrets.token_hex(4)}", subnet)
        raise VMError(f"no free /30 left in {TAP_POOL} for a tap device; remove stale bgr* links")

    @property
    def guest_network(self) -> GuestNetwork:
        return GuestNetwork(f"{self.guest_ip}/{self.subnet.prefixlen}", str(self.host_ip), None)

    @property
    def guest_mac(self) -> str:
        return "06:00:" + ":".join(f"{b:02x}" for b in self.guest_ip.packed)

    def create(self) -> None:
        _ip("tuntap", "add", "dev", self.name, "mode", "tap")
        self.created = True
        _ip("addr", "add", f"{self.host_ip}/{self.subnet.prefixlen}", "dev", self.name)
        _ip("link", "set", self.name, "up")

    def delete(self) -> None:
        if self.created:
            subprocess.run(["ip", "link", "del", self.name], capture_output=True)
            self.created = False


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise VMError(f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.returncode}")


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            nets.append(ipaddress.ip_interface(words[words.index("inet") + 1]).network)
    return nets


# ---- the VM ----------------------------------------------------------------------------------------
class FirecrackerVM(VM):
    backend = "firecracker"

    def __init__(self, choice, config):
        super().__init__(choice, config)
        self.api_socket = self.run_dir / "api.sock"
        self.vsock_socket = self.run_dir / "vsock.sock"
        # a kept VM brings its own disk; the build's boot check gets a throwaway copy
        self.disk = self.config.disk or self.run_dir / "rootfs.ext4"
        self.api = FirecrackerAPI(self.api_socket)
        self.firecracker_log = self.run_dir / "firecracker.log"  # its logger (stderr is vmm.log)
        self.tap: Tap | None = None

    def vmm_logs(self) -> list[Path]:
        return [self.vmm_log, self.firecracker_log]

    def boot_args(self) -> str:
        # is_root_device makes Firecracker add root=/dev/vda itself
        words = [BOOT_ARGS]
        if self.config.rootfs is not None or self.config.disk is not None:
            words.append("rw")
        if self.network is not None:
            words.append(self.network.cmdline())
        if self.config.cmdline:
            words.append(self.config.cmdline)
        return " ".join(words)

    def _launch(self) -> None:
        cfg = self.config
        kernel = cfg.vmlinux or cfg.kernel
        if cfg.tap is not None:  # a tap on banger's bridge, made by the caller
            self.network = cfg.tap.network
        elif cfg.network:
            self.tap = Tap.allocate()
            self.tap.create()
            self.network = self.tap.guest_network
        if cfg.disk is None and cfg.rootfs is not None:
            fsutil.copy_sparse(cfg.rootfs, self.disk)  # Firecracker writes to its disk
        self.firecracker_log.touch()  # Firecracker's logger does not create its file
        stdin = None
        if cfg.resume_fifo is not None:  # the serial port's input: a fresh FIFO, held open read-write
            cfg.resume_fifo.unlink(missing_ok=True)  # (by Firecracker too: it never blocks or ends)
            os.mkfifo(cfg.resume_fifo, 0o600)
            stdin = os.open(cfg.resume_fifo, os.O_RDWR | os.O_CLOEXEC)
        try:
            with open(self.console_log, "ab") as console:  # the guest's serial console is stdout
                # relative to the run dir Firecracker runs in: unix socket paths are limited to 108 bytes
                self._spawn([self.choice.binary, "--api-sock", self.api_socket.name], stdout=console, stdin=stdin)
        finally:
            if stdin is not None:
                os.close(stdin)
        self._wait_for_api()
        if cfg.restore_state is not None:  # a saved microVM: it loads paused (resume_guest lets it run)
            self.api.put_logger(self.firecracker_log)
            self.api.load_snapshot(cfg.restore_state, cfg.restore_memory, cfg.tap.name if cfg.tap else None)
        else:
            self.configure(kernel)
            self.api.instance_start()
        if self.network is not None:
            self._ssh = (self.network.address.split("/")[0], 22)

    def _disk_path(self) -> Path:
        if self.config.portable_disk and self.disk.parent == self.run_dir:
            return Path(self.disk.name)  # Firecracker runs in the run dir
        return self.disk

    def configure(self, kernel: Path) -> None:
        """Every pre-boot request, in order (the contract test checks each against the spec)."""
        cfg = self.config
        self.api.put_logger(self.firecracker_log)
        self.api.put_machine_config(cfg.vcpus, cfg.memory_mib)
        self.api.put_boot_source(kernel, self.boot_args(), cfg.initrd)
        if cfg.rootfs is not None or cfg.disk is not None:
            self.api.put_drive("rootfs", self._disk_path(), root=True)
        if cfg.tap is not None:
            self.api.put_network_interface("eth0", cfg.tap.name, cfg.tap.mac)
        elif self.tap is not None:
            self.api.put_network_interface("eth0", self.tap.name, self.tap.guest_mac)
        self.api.put_vsock(GUEST_CID, Path(self.vsock_socket.name))  # Firecracker binds it: relative too

    def _wait_for_api(self) -> None:
        deadline = time.monotonic() + SOCKET_WAIT
        while not self.api.listening():
            if not self.running:
                raise self.failure(f"firecracker exited with code {self.exit_code()} before "
                                   f"opening its API socket")
            if time.monotonic() >= deadline:
                raise self.failure(f"firecracker did not open its API socket {self.api_socket} "
                                   f"within {SOCKET_WAIT:g}s")
            time.sleep(0.01)

    def shutdown(self, poweroff, timeout: float) -> bool:
        """The guest's poweroff would leave Firecracker running: send Ctrl-Alt-Del instead."""
        if self.running:
            with contextlib.suppress(VMError):
                self.api.send_ctrl_alt_del()
        return self.wait_exit(timeout)

    # ---- snapshots: the API, and the serial port's input as the resume channel ---------------
    def save_machine(self, stage: Path, timeout: float) -> dict[str, Path]:
        """Pause, then a full snapshot (memory and microVM state) into stage; stop() ends it (its
        disk file was written through: there is no cache to flush)."""
        memory, vmstate = stage / "memory.bin", stage / "vmstate.bin"
        try:
            self.api.pause()
            FirecrackerAPI(self.api_socket, timeout=max(API_TIMEOUT, timeout)).create_snapshot(vmstate, memory)
        except FirecrackerError as exc:
            raise self.failure(str(exc)) from None
        for path in (memory, vmstate):
            if not path.is_file() or path.stat().st_size == 0:
                raise VMError(f"Firecracker saved no {path.name}; see {self.firecracker_log}")
        return {"memory": memory, "vmstate": vmstate}

    def wait_loaded(self, timeout: float) -> None:
        """/snapshot/load answered when the state was loaded (in _launch)."""

    def resume_guest(self, grow_to: int | None = None) -> None:
        self.api.resume()
        if grow_to is not None:  # the disk file is already that size: reopening it notifies the guest
            self.api.patch_drive("rootfs", self._disk_path())

    def send_resume(self, message: bytes):
        """Into the FIFO that is Firecracker's stdin (the guest reads it on ttyS0)."""
        fd = os.open(self.config.resume_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # ENXIO: no reader
        os.set_blocking(fd, True)
        channel = os.fdopen(fd, "wb", buffering=0)
        try:
            channel.write(message)
        except OSError:
            channel.close()
            raise
        return channel

    def _cleanup(self) -> None:
        if self.tap is not None:
            self.tap.delete()
        kept_disk = self.config.disk is not None  # the VM's own disk outlives each boot
        fifo = (self.config.resume_fifo,) if self.config.resume_fifo is not None else ()
        for path in (self.api_socket, self.vsock_socket) + fifo + (() if kept_disk else (self.disk,)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for stray in self.run_dir.glob(f"{self.vsock_socket.name}_*"):  # guest-initiated vsock sockets
            with contextlib.suppress(FileNotFoundError):
                stray.unlink()
