"""`banger ui` with a real VM (QEMU under TCG, the Debian test image): the dashboard shows it
running with its ssh command, and its stop button stops it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from selenium.webdriver.common.by import By

from banger.core.config import default_dirs, volatile_trees_dir
from banger.core.fsutil import remove_tree
from tests.support_kernel import vm_home
from tests.support_tools import REPO, need
from tests.ui.conftest import wait_for

pytestmark = pytest.mark.slow


def banger(values: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "banger", *args], capture_output=True, text=True,
                          env={**os.environ, **values}, cwd=REPO, timeout=900)
    assert not check or proc.returncode == 0, f"banger {' '.join(args)}: {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def vm_env(tmp_path, monkeypatch, debian_bundle, debian_image_ref):
    need("qemu-system-x86_64", "qemu-img", "ssh", "mkfs.ext4", "debugfs")
    values = vm_home(tmp_path, debian_bundle)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    banger(values, "build", f"image={debian_image_ref}", "name=uitest", "boot=no")
    banger(values, "vm", "create", "uitest", "--name", "uivm", "--vcpus", "1", "--memory", "768M")
    yield values
    banger(values, "vm", "rm", "--force", "uivm", check=False)
    ram = volatile_trees_dir((tmp_path / "cache").resolve())
    if ram is not None:
        remove_tree(ram)


def test_stop_button_stops_a_running_vm(vm_env, serve, browser, tmp_path):
    server = serve(default_dirs())
    browser.get(server.url)
    state = 'tr.vm[data-name="uivm"] .vm-state'
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, state), "the VM's row")
    assert browser.find_element(By.CSS_SELECTOR, state).get_attribute("data-state") == "running"
    row = browser.find_element(By.CSS_SELECTOR, 'tr.vm[data-name="uivm"]')
    assert "uivm.vm" in row.find_element(By.CSS_SELECTOR, "code.ssh").text
    assert browser.find_element(By.CSS_SELECTOR, 'tr.image[data-name="uitest"] svg.steps-chart')
    row.find_element(By.CSS_SELECTOR, "button.stop").click()  # waits for the guest to power off
    wait_for(browser, lambda d: d.find_elements(By.ID, "msg") and "uivm: stopped" in d.find_element(By.ID, "msg").text,
             "the stop to finish", timeout=300)
    assert browser.find_element(By.CSS_SELECTOR, state).get_attribute("data-state") == "stopped"
    assert browser.find_elements(By.CSS_SELECTOR, 'tr.vm[data-name="uivm"] button.start')
    shot = tmp_path / "stopped.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert banger(vm_env, "vm", "list", "--all", "--quiet").stdout.split() == ["uivm"]
    assert banger(vm_env, "vm", "show", "uivm").stdout.splitlines()[2].startswith("state:    stopped")
