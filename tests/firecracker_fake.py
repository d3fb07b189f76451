"""A fake Firecracker for tests: its API is checked against the official swagger spec.

- `Spec` loads firecracker-api.yaml and validates (method, path, body) against it: path
  templates, required body, $ref, type, required, enum, minimum/maximum, and unknown
  properties (rejected, as the real Firecracker's deserializer does, unless the schema says
  `additionalProperties: true`).
- `FakeFirecracker` serves that API on a unix socket from a thread, records every request,
  answers 204 / 200 / 400 {"fault_message"} like the real one, and enforces the pre-boot rules
  banger depends on (kernel before InstanceStart, no pre-boot calls after it, paths exist) and
  the snapshot ones: pause/resume only after the start, a snapshot only of a paused microVM,
  a load only into a fresh process (nothing but the logger configured). Its "snapshot" is a
  JSON file of the configuration (drives, network interfaces, machine) and a sparse memory file;
  a load checks what the real one would open: both files, and each saved drive's path (relative
  to its working directory), each network override naming a saved interface.
- Run as a script (`firecracker_fake.py --api-sock PATH`) it stands in for the `firecracker`
  binary: the guest's "serial console" is stdout (BANGER_READY after the start, or with
  banger.snapshot=1 in the boot args BANGER_SNAPSHOT_READY), and SendCtrlAltDel ends the process. Resumed
  after a load, it plays the restored guest's resume.sh on its serial port: it reads stdin (the
  console's input) up to the host's end line, appends the bytes to $FAKE_FIRECRACKER_STDIN, and
  prints the host key line (the one the message named) and BANGER_READY.
"""
from __future__ import annotations

import json
import os
import re
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

SPEC_ENV = "BANGER_FIRECRACKER_SPEC"
RECORD_ENV = "FAKE_FIRECRACKER_RECORD"
STDIN_ENV = "FAKE_FIRECRACKER_STDIN"
PRE_BOOT_ONLY = {"/boot-source", "/drives/{drive_id}", "/machine-config", "/network-interfaces/{iface_id}",
                 "/vsock", "/logger", "/snapshot/load"}
NOT_AFTER_START = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_START = "The requested operation is not supported before starting the microVM."


def spec_path() -> Path:
    """The official spec: $BANGER_FIRECRACKER_SPEC, else the copy vendored in tests/data/."""
    if os.environ.get(SPEC_ENV):
        return Path(os.environ[SPEC_ENV])
    return Path(__file__).resolve().parent / "data" / "firecracker-api.yaml"


class SpecViolation(ValueError):
    pass


class Spec:
    def __init__(self, path: Path):
        self.doc = yaml.safe_load(Path(path).read_text())
        assert self.doc.get("swagger") == "2.0", "expected a swagger 2.0 document"
        self.routes: list[tuple[re.Pattern, str]] = []
        for template in self.doc["paths"]:
            regex = re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(template))
            self.routes.append((re.compile(f"^{regex}$"), template))

    def route(self, path: str) -> str:
        for regex, template in self.routes:
            if regex.match(path):
                return template
        raise SpecViolation(f"no path {path!r} in the spec")

    def operation(self, method: str, path: str) -> tuple[str, dict]:
        template = self.route(path)
        op = self.doc["paths"][template].get(method.lower())
        if op is None:
            raise SpecViolation(f"{method} is not an operation of {template}")
        return template, op

    def validate_request(self, method: str, path: str, body: Any | None) -> str:
        """Raises SpecViolation; returns the path template."""
        template, op = self.operation(method, path)
        body_params = [p for p in op.get("parameters", []) if p.get("in") == "body"]
        if not body_params:
            if body is not None:
                raise SpecViolation(f"{method} {template} takes no body")
            return template
        param = body_params[0]
        if body is None:
            if param.get("required"):
                raise SpecViolation(f"{method} {template} needs a body")
            return template
        self.validate(body, param["schema"], "body")
        return template

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/definitions/"):
                raise SpecViolation(f"unsupported $ref {ref}")
            schema = self.doc["definitions"][ref.split("/")[-1]]
        return schema

    def validate(self, value: Any, schema: dict, where: str) -> None:
        schema = self.resolve(schema)
        kind = schema.get("type")
        checks = {"object": lambda v: isinstance(v, dict), "string": lambda v: isinstance(v, str),
                  "boolean": lambda v: isinstance(v, bool), "array": lambda v: isinstance(v, list),
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
        if kind is not None and not checks[kind](value):
            raise SpecViolation(f"{where}: expected {kind}, got {type(value).__name__} {value!r}")
        if "enum" in schema and value not in schema["enum"]:
            raise SpecViolation(f"{where}: {value!r} is not one of {schema['enum']}")
        if "minimum" in schema and value < schema["minimum"]:
            raise SpecViolation(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SpecViolation(f"{where}: {value} is above the maximum {schema['maximum']}")
        if kind == "array" and "items" in schema:
            for i, item in enumerate(value):
                self.validate(item, schema["items"], f"{where}[{i}]")
        if kind == "object" or "properties" in schema:
            properties = schema.get("properties", {})
            for name in schema.get("required", []):
                if name not in value:
                    raise SpecViolation(f"{where}: missing required field {name!r}")
            extra = schema.get("additionalProperties", False)
            for name, item in value.items():
                if name in properties:
                    self.validate(item, properties[name], f"{where}.{name}")
                elif extra is False:
                    raise SpecViolation(f"{where}: unknown field {name!r}")
                elif isinstance(extra, dict):
                    self.validate(item, extra, f"{where}.{name}")


@dataclass
class Recorded:
    method: str
    path: str
    template: str
    body: Any
    status: int
    fault: str | None = None


@dataclass
class FakeState:
    spec: Spec
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    started: bool = False
    boot_source: dict | None = None
    paused: bool = False
    restored: bool = False  # started by /snapshot/load
    config: dict = field(default_factory=dict)  # template -> {id: body} of what was configured
    fail: dict[str, str] = field(default_factory=dict)  # template -> fault message to answer with
    on_action: Any = None  # callable(action_type) for the binary mode
    record_path: str | None = None  # append each request as a JSON line (binary mode)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def address_string(self) -> str:  # unix sockets have no client address
        return "unix"

    def _handle(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        template, status, fault, answer = "?", 204, None, None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body, status, fault = raw.decode(errors="replace"), 400, "body is not JSON"
        if fault is None:
            try:
                template = state.spec.validate_request(self.command, self.path, body)
                if body is not None and self.headers.get("Content-Type") != "application/json":
                    raise SpecViolation("body sent without Content-Type: application/json")
            except SpecViolation as exc:
                status, fault = 400, f"spec violation: {exc}"
                state.violations.append(f"{self.command} {self.path}: {exc}")
        if fault is None:
            status, fault, answer = self._behave(template, body)
        recorded = Recorded(self.command, self.path, template, body, status, fault)
        state.requests.append(recorded)
        if state.record_path:
            with open(state.record_path, "a") as f:
                f.write(json.dumps(recorded.__dict__) + "\n")
        payload = json.dumps({"fault_message": fault} if fault else answer).encode() if (fault or answer) else b""
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        try:
            self.end_headers()
            if payload:  # a client that read a 204 may already be gone: write nothing more to it
                self.wfile.write(payload)
        finally:  # the action happened whether or not the client stayed for the answer
            if status == 204 and template == "/actions" and state.on_action:
                state.on_action(body["action_type"])
            if status == 204 and template == "/vm" and state.on_action:
                state.on_action(body["state"])

    def _behave(self, template: str, body: Any) -> tuple[int, str | None, Any]:
        """What the real Firecracker does for the requests banger sends."""
        state = self.server.state
        if template in state.fail:
            return 400, state.fail[template], None
        if self.command == "GET" and template == "/":
            return 200, None, {"app_name": "Firecracker", "id": "anonymous-instance",
                               "state": "Running" if state.started else "Not started", "vmm_version": "fake"}
        if state.started and template in PRE_BOOT_ONLY and self.command == "PUT":
            return 400, NOT_AFTER_START, None
        for key in ("kernel_image_path", "initrd_path", "path_on_host", "log_path", "snapshot_path"):
            if isinstance(body, dict) and key in body and not os.path.exists(body[key]) \
                    and template != "/snapshot/create":
                return 400, f"Cannot open {body[key]}: No such file or directory (os error 2)", None
        if template.startswith("/drives/") and body["drive_id"] != self.path.rsplit("/", 1)[1]:
            return 400, "The id from the path does not match the id from the body!", None
        if template in ("/vm", "/snapshot/create") or (template.startswith("/drives/") and self.command == "PATCH"):
            if not state.started:
                return 400, NOT_BEFORE_START, None
        if template.startswith("/drives/") and self.command == "PATCH":
            if body["drive_id"] not in state.config.get("/drives/{drive_id}", {}):
                return 400, f"Could not find block device with id {body['drive_id']}", None
        if template == "/vm":
            state.paused = body["state"] == "Paused"
        if template == "/snapshot/create":
            return _create_snapshot(state, body)
        if template == "/snapshot/load":
            return _load_snapshot(state, body)
        if template in PRE_BOOT_ONLY and template != "/logger":
            key = (body.get("drive_id") or body.get("iface_id") or "") if isinstance(body, dict) else ""
            state.config.setdefault(template, {})[key] = body
        if template == "/boot-source":
            state.boot_source = body
        if template == "/actions":
            action = body["action_type"]
            if action == "InstanceStart":
                if state.started:
                    return 400, "The requested operation is not supported after starting the microVM.", None
                if state.boot_source is None:
                    return 400, "Cannot start microvm without kernel configuration.", None
                state.started = True
            elif action == "SendCtrlAltDel" and not state.started:
                return 400, "The requested operation is not supported before starting the microVM.", None
        return 204, None, None

    do_GET = do_PUT = do_PATCH = _handle


def _create_snapshot(state: FakeState, body: dict) -> tuple[int, str | None, Any]:
    if not state.paused:
        return 400, "Cannot create a snapshot of a microVM that is not paused.", None
    for key in ("snapshot_path", "mem_file_path"):
        if not os.path.isdir(os.path.dirname(os.path.abspath(body[key]))):
            return 400, f"Cannot create {body[key]}: No such file or directory (os error 2)", None
    machine = state.config.get("/machine-config", {}).get("", {})
    with open(body["snapshot_path"], "w") as f:
        json.dump({"fake_firecracker_snapshot": 1, "boot_source": state.boot_source, "config": state.config}, f)
    with open(body["mem_file_path"], "wb") as f:  # the guest's RAM: a marker, the rest zero pages
        f.write(b"fake guest memory\n")
        f.truncate(int(machine.get("mem_size_mib", 128)) << 20)
    return 204, None, None


def _load_snapshot(state: FakeState, body: dict) -> tuple[int, str | None, Any]:
    if state.config:
        return 400, ("Loading a microVM snapshot not allowed after configuring boot-specific resources."), None
    if ("mem_backend" in body) == ("mem_file_path" in body):
        return 400, "Either mem_backend or mem_file_path must be specified, not both.", None
    memory = body["mem_backend"]["backend_path"] if "mem_backend" in body else body["mem_file_path"]
    if "mem_backend" in body and body["mem_backend"]["backend_type"] != "File":
        return 400, "the fake serves no UFFD memory backend", None
    if not os.path.exists(memory):
        return 400, f"Cannot open the memory file {memory}: No such file or directory (os error 2)", None
    try:
        with open(body["snapshot_path"]) as f:
            saved = json.load(f)
        assert saved.get("fake_firecracker_snapshot") == 1
    except (ValueError, AssertionError):
        return 400, "Cannot deserialize the microVM state: not a snapshot", None
    for drive in saved["config"].get("/drives/{drive_id}", {}).values():
        if not os.path.exists(drive["path_on_host"]):
            return 400, f"Cannot open {drive['path_on_host']}: No such file or directory (os error 2)", None
    saved_ifaces = saved["config"].get("/network-interfaces/{iface_id}", {})
    for override in body.get("network_overrides", []):
        if override["iface_id"] not in saved_ifaces:
            return 400, f"Invalid network override: no interface {override['iface_id']!r} in the snapshot", None
        saved_ifaces[override["iface_id"]]["host_dev_name"] = override["host_dev_name"]
    state.config, state.boot_source = saved["config"], saved["boot_source"]
    state.started, state.restored, state.paused = True, True, not body.get("resume_vm", False)
    return 204, None, None


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, state: FakeState):
        super().__init__(path, _Handler)
        self.state = state


class FakeFirecracker:
    """The fake API on a unix socket, served from a thread."""

    def __init__(self, socket_path: Path, spec: Spec):
        self.socket_path = Path(socket_path)
        self.state = FakeState(spec)
        self._server = _Server(str(self.socket_path), self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeFirecracker":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """Stand in for the firecracker binary: `--api-sock PATH`; stdout is the guest console."""
    if "--version" in argv:
        print(f"Firecracker v{Spec(spec_path()).doc['info']['version']}-fake")
        return 0
    sock = argv[argv.index("--api-sock") + 1]
    fake = FakeFirecracker(Path(sock), Spec(spec_path()))
    done, resumed = threading.Event(), threading.Event()

    def on_action(action: str) -> None:
        if action == "InstanceStart":
            args = fake.state.boot_source.get("boot_args", "")
            ready = "BANGER_SNAPSHOT_READY fake-boot" if "banger.snapshot=1" in args.split() else "BANGER_READY"
            print(f"[    0.000000] Linux version 0.0.0-fake-firecracker\n"
                  f"[    0.000000] Command line: {args}\n{ready}", flush=True)
        elif action == "SendCtrlAltDel":
            print("[   10.000000] reboot: Restarting system", flush=True)
            done.set()
        elif action == "Resumed" and fake.state.restored and not resumed.is_set():
            resumed.set()
            threading.Thread(target=play_resume, daemon=True).start()

    def play_resume() -> None:
        """resume.sh's part: read the host's message from the serial input, announce the VM."""
        got = b""
        while not got.endswith(b"\nBANGER_RESUME_END\n"):
            chunk = os.read(0, 4096)
            if not chunk:
                return
            got += chunk
        if os.environ.get(STDIN_ENV):
            with open(os.environ[STDIN_ENV], "ab") as f:
                f.write(got)
        words = got.split(b"\n", 1)[0].decode().split()
        key = next((w.split("=", 1)[1] for w in words if w.startswith("banger.hostkey=")), "none:none")
        print(f"BANGER_HOSTKEY fake-boot {key.replace(':', ' ', 1)}\nBANGER_READY fake-boot", flush=True)

    fake.state.on_action = on_action
    fake.state.record_path = os.environ.get(RECORD_ENV)
    with fake:
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
