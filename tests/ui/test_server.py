"""`banger ui` over HTTP against the real uvicorn server: every route, and the refusals (no or
wrong token, a foreign Host header, a POST without the CSRF token or from another origin)."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import requests

from banger.core import journal
from tests.support_tools import REPO


def session(server) -> requests.Session:
    """A client that opened the printed URL: the token became its cookie."""
    s = requests.Session()
    r = s.get(server.url, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    return s


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_dashboard_shows_images_builds_vms_cache_and_kernels(ui_env, serve):
    server = serve(ui_env["dirs"])
    s = session(server)
    page = s.get(server.base + "/", timeout=60)
    assert page.status_code == 200
    html = page.text
    assert 'data-name="small"' in html and "oci-layout:" in html  # the image and its ref
    assert 'class="steps-chart"' in html and 'data-step="fetch:' in html and 'data-step="ext4"' in html
    assert re.search(r'class="build" data-state="done"', html)  # the build's journal
    assert re.search(r'data-name="live".*?data-state="running"', html, re.S)
    assert re.search(r'data-name="off".*?data-state="stopped"', html, re.S)
    assert "ssh -F " in html and "live.vm" in html  # the command to copy
    assert 'class="kinds-chart"' in html and "layers " in html  # cache by kind
    assert 'class="kernel"' in html and "6.1.0-99-amd64" in html  # the installed bundle


def test_image_page_charts_every_kept_build(ui_env, serve):
    server = serve(ui_env["dirs"])
    s = session(server)
    html = s.get(server.base + "/images/small", timeout=60).text
    assert html.count('class="build-chart"') == 1 and 'class="step ran"' in html
    assert "1 build(s) kept" in html  # history_lines, as `banger image history`
    missing = s.get(server.base + "/images/nope", timeout=30)
    assert missing.status_code == 404 and "no image named &#39;nope&#39;" in missing.text


def test_vm_page_shows_state_ssh_and_console(ui_env, serve):
    console = ui_env["dirs"].state / "vms" / "live" / "console.log"
    console.write_text("booting\nBANGER_READY here\n")
    server = serve(ui_env["dirs"])
    s = session(server)
    html = s.get(server.base + "/vms/live", timeout=30).text
    assert 'data-state="running"' in html and "live.vm" in html
    assert s.get(server.base + "/vms/ghost", timeout=30).status_code == 404


def test_build_page_and_its_event_stream(ui_env, serve):
    server = serve(ui_env["dirs"])
    s = session(server)
    (build,) = journal.all_builds(ui_env["dirs"].state)
    assert build.state == "done"
    html = s.get(f"{server.base}/builds/{build.id}", timeout=30).text
    assert 'id="build-state" class="state-done"' in html and "image=oci-layout:" in html
    stream = s.get(f"{server.base}/builds/{build.id}/events", timeout=30)
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[0]["event"] == "begin" and events[-1] == {"state": "done", "error": None}
    steps = [e["step"] for e in events if e.get("event") == "step"]
    assert "ext4" in steps and any(x.startswith("fetch:") for x in steps)
    assert s.get(f"{server.base}/builds/nope/events", timeout=30).status_code == 404
    assert s.get(f"{server.base}/builds/nope", timeout=30).status_code == 404


def test_killed_build_shows_as_killed_not_running(ui_env, serve):
    """A journal whose writer died without `end` (kill -9) is `killed`."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from banger.core.journal import Journal; "
                             "j = Journal(sys.argv[1], ['image=x']); j.write('step-start', step='fetch'); "
                             "print(j.id, flush=True); sys.stdin.read()", str(ui_env["dirs"].state)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    build_id = proc.stdout.readline().strip()
    server = serve(ui_env["dirs"])
    s = session(server)
    html = s.get(f"{server.base}/builds/{build_id}", timeout=30).text
    assert 'class="state-running"' in html and 'data-step="fetch"' in html
    proc.kill()
    proc.wait()
    html = s.get(f"{server.base}/builds/{build_id}", timeout=30).text
    assert 'class="state-killed"' in html
    events = s.get(f"{server.base}/builds/{build_id}/events", timeout=30).text
    assert '"state": "killed"' in events


def test_vm_buttons_stop_start_rm_through_the_same_functions(ui_env, serve):
    server = serve(ui_env["dirs"])
    s = session(server)
    csrf = csrf_of(s.get(server.base + "/", timeout=60).text)
    r = s.post(server.base + "/vms/off/stop", data={"csrf": csrf}, allow_redirects=False, timeout=60)
    assert r.status_code == 303 and "off%3A+stopped" in r.headers["location"]
    r = s.post(server.base + "/vms/ghost/start", data={"csrf": csrf}, timeout=60)
    assert r.status_code == 400 and "no VM named &#39;ghost&#39;" in r.text
    r = s.post(server.base + "/vms/live/rm", data={"csrf": csrf}, timeout=60)
    assert r.status_code == 400 and "live is running" in r.text  # as `banger vm rm` without --force
    r = s.post(server.base + "/vms/off/reboot", data={"csrf": csrf}, timeout=60)
    assert r.status_code == 404
    r = s.post(server.base + "/vms/off/rm", data={"csrf": csrf}, timeout=60)
    assert r.status_code == 200 and "removed off" in r.text  # followed to the dashboard
    assert not (ui_env["dirs"].state / "vms" / "off").exists()


def test_gc_button_runs_cache_gc_with_its_caps(ui_env, serve):
    server = serve(ui_env["dirs"])
    s = session(server)
    csrf = csrf_of(s.get(server.base + "/", timeout=60).text)
    r = s.post(server.base + "/cache/gc", data={"csrf": csrf, "max_size": "20G", "max_age": ""}, timeout=60)
    assert r.status_code == 200 and "evicted " in r.text and "freed" in r.text
    r = s.post(server.base + "/cache/gc", data={"csrf": csrf, "max_size": "lots", "max_age": ""}, timeout=60)
    assert r.status_code == 400 and "is not a size" in r.text
    r = s.post(server.base + "/cache/gc", data={"csrf": csrf, "max_size": "", "max_age": "old"}, timeout=60)
    assert r.status_code == 400 and "not a number of days" in r.text
    assert s.get(server.base + "/images/small", timeout=30).status_code == 200  # the named image is kept


def test_no_token_wrong_token_and_foreign_host_are_refused(ui_env, serve):
    server = serve(ui_env["dirs"])
    assert requests.get(server.base + "/", timeout=30).status_code == 403
    assert requests.get(server.base + "/?token=guess", timeout=30).status_code == 403
    assert requests.get(server.base + "/", cookies={"banger_ui": "guess"}, timeout=30).status_code == 403
    # DNS rebinding: a name that resolves to 127.0.0.1 but is not this server's
    r = requests.get(server.url, headers={"Host": f"evil.example:{server.port}"}, timeout=30)
    assert r.status_code == 403 and "Host header" in r.text
    s = session(server)
    assert s.get(server.base + "/", headers={"Host": f"evil.example:{server.port}"}, timeout=30).status_code == 403
    cookie = {"Cookie": f"banger_ui={server.keys.token}"}  # (requests matches cookies to the Host header)
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        assert requests.get(server.base + "/", headers={"Host": host, **cookie}, timeout=30).status_code == 200
    for host in (f"localhost:{server.port + 1}", "127.0.0.1", f"127.0.0.2:{server.port}"):
        assert requests.get(server.base + "/", headers={"Host": host, **cookie}, timeout=30).status_code == 403
    assert s.put(server.base + "/", timeout=30).status_code == 405


def test_post_without_csrf_or_from_another_origin_is_refused(ui_env, serve):
    server = serve(ui_env["dirs"])
    s = session(server)
    csrf = csrf_of(s.get(server.base + "/", timeout=60).text)
    for data in ({}, {"csrf": "guess"}):
        r = s.post(server.base + "/vms/off/stop", data=data, timeout=30)
        assert r.status_code == 403 and "CSRF" in r.text
    r = s.post(server.base + "/vms/off/rm", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}, timeout=30)
    assert r.status_code == 403 and "cross-origin" in r.text
    r = s.post(server.base + "/cache/gc", data={}, timeout=30)
    assert r.status_code == 403
    assert (ui_env["dirs"].state / "vms" / "off").is_dir()  # nothing was done
    r = requests.post(server.base + "/vms/off/rm", data={"csrf": csrf}, timeout=30)  # csrf alone, no token
    assert r.status_code == 403 and (ui_env["dirs"].state / "vms" / "off").is_dir()


def test_cli_port_in_use_is_one_line_and_port_zero_prints_the_url(ui_env):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        proc = subprocess.run([sys.executable, "-m", "banger", "ui", "--port", str(port)], cwd=REPO,
                              env=ui_env["env"], capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: port {port} on 127.0.0.1 is in use; give another with --port N "
                                   "(or --port 0 for any free one)")
    ui = subprocess.Popen([sys.executable, "-m", "banger", "ui", "--port", "0"], cwd=REPO, env=ui_env["env"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ui.stdout.readline()
        m = re.fullmatch(r"banger ui: (http://127\.0\.0\.1:\d+)/\?token=([\w-]{40,})\n", line)
        assert m, line
        s = requests.Session()
        assert s.get(line.split(": ", 1)[1].strip(), timeout=60).status_code == 200
    finally:
        ui.terminate()
        ui.wait(30)


def test_listen_elsewhere_warns(ui_env):
    proc = subprocess.Popen([sys.executable, "-m", "banger", "ui", "--port", "0", "--listen", "127.0.0.2"], cwd=REPO,
                            env=ui_env["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("banger ui: http://127.0.0.2:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert err.startswith("warning: --listen 127.0.0.2: the dashboard is reachable from other machines")
