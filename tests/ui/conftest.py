"""Fixtures for `banger ui` tests: a real build (small_build) with its journal, VM records as
banger writes them, and the real uvicorn server on a free loopback port, in a thread."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from banger.app.build import run_build
from banger.core.store import Store
from banger.ui.server import Server
from tests.support_builds import small_build  # noqa: F401  (fixture)
from tests.vm.conftest import VMEnv, as_running, write_record


@pytest.fixture
def ui_env(small_build, tmp_path, monkeypatch):  # noqa: F811
    """A built image `small` (its journal kept), and VMs: `off` (stopped), `live` (running: a
    `sleep` stands in for its VMM)."""
    dirs, env, spec = small_build
    env = {**env, "BANGER_SSH_CONFIG": str(tmp_path / "ssh_config"), "HOME": str(tmp_path / "home"),
           "BANGER_TREES_DIR": "cache"}
    for key in ("BANGER_CACHE_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "BANGER_SSH_CONFIG", "HOME",
                "BANGER_TREES_DIR"):
        monkeypatch.setenv(key, env[key])
    image = run_build(spec, dirs)
    vm_env = VMEnv(dirs=dirs, store=Store(dirs.cache), image=image, vars=env)
    write_record(vm_env, "off", state="stopped", reason="the guest powered off", boots=1)
    sleeper = subprocess.Popen(["sleep", "300"])
    live = write_record(vm_env, "live")
    from banger.vm import records

    records.save(dirs.state, as_running(live, sleeper.pid))
    yield {"dirs": dirs, "env": env, "image": image, "spec": spec}
    sleeper.kill()
    sleeper.wait()


@pytest.fixture
def serve():
    """serve(dirs) -> a running Server (real uvicorn, 127.0.0.1, a free port), stopped afterwards."""
    running: list[tuple[Server, threading.Thread]] = []

    def start(dirs, host: str = "127.0.0.1") -> Server:
        server = Server(dirs, host, 0)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.uvicorn.started:
            assert thread.is_alive(), "the ui server thread died"
            assert time.monotonic() < deadline, "the ui server did not start in 60 s"
            time.sleep(0.05)
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.stop()
        thread.join(30)


CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"


@pytest.fixture
def browser(tmp_path):
    """Headless Debian chromium driven by selenium; anything but loopback goes to a dead proxy."""
    import shutil

    binary, driver = shutil.which(CHROMIUM), shutil.which(CHROMEDRIVER)
    if not binary or not driver:
        pytest.skip("no chromium/chromedriver here: install Debian's chromium and chromium-driver "
                    "(scripts/setup.sh) to run the browser tests")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps",
                 "--disable-domain-reliability", "--proxy-server=http://127.0.0.1:9",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    drv = webdriver.Chrome(options=options, service=Service(driver, log_output=str(tmp_path / "chromedriver.log")))
    drv.set_page_load_timeout(300)
    yield drv
    drv.quit()


def wait_for(driver, condition, what: str, timeout: float = 120):
    """Wait (generously) until condition(driver) is true; fail naming `what`."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=f"waited {timeout:g} s for {what}")
