"""`banger ui` in a real browser (headless chromium + selenium): the dashboard with an image built
in the test and its step chart, and a build's steps appearing live on its page."""
from __future__ import annotations

import subprocess
import sys

from selenium.webdriver.common.by import By

from tests.support_tools import REPO
from tests.ui.conftest import wait_for

PNG = b"\x89PNG\r\n\x1a\n"


def test_dashboard_shows_the_built_image_and_its_step_chart(ui_env, serve, browser, tmp_path):
    server = serve(ui_env["dirs"])
    browser.get(server.url)  # the token becomes the cookie; the page is / without it
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr.image[data-name="small"]'), "the image row")
    assert "token=" not in browser.current_url
    row = browser.find_element(By.CSS_SELECTOR, 'tr.image[data-name="small"]')
    bars = row.find_elements(By.CSS_SELECTOR, "svg.steps-chart g.step")
    names = [b.get_attribute("data-step") for b in bars]
    assert "ext4" in names and any(n.startswith("fetch:") for n in names)
    assert all(b.get_attribute("class") == "step ran" for b in bars)  # a first build: every step ran
    assert row.find_element(By.CSS_SELECTOR, "svg.steps-chart rect").size["width"] > 0
    live = browser.find_element(By.CSS_SELECTOR, 'tr.vm[data-name="live"] .vm-state')
    assert live.get_attribute("data-state") == "running"
    dashboard = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(dashboard)) and dashboard.read_bytes().startswith(PNG)
    row.find_element(By.LINK_TEXT, "small").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".build-chart svg.steps-chart"), "the image page's chart")
    shot = tmp_path / "image-page.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000


WRITER = """
import sys
from banger.core.journal import Journal
j = Journal(sys.argv[1], ["image=example", "name=live-one"])
print(j.id, flush=True)
for line in sys.stdin:
    word, _, rest = line.strip().partition(" ")
    if word == "start":
        j.write("step-start", step=rest)
    elif word == "done":
        j.write("step", step=rest, status="ran", seconds=1.5)
    elif word == "log":
        j.write("log", message=rest)
    elif word == "end":
        j.close(True)
    print("ok", flush=True)
"""


def test_a_build_in_progress_shows_its_steps_live(ui_env, serve, browser, tmp_path):
    """The build page follows the journal through server-sent events: steps written after the page
    loaded appear on it, then the build's end."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ui_env["dirs"].state)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def tell(line: str) -> None:
        writer.stdin.write(line + "\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "ok"

    try:
        build_id = writer.stdout.readline().strip()
        server = serve(ui_env["dirs"])
        browser.get(server.url)
        browser.get(f"{server.base}/builds/{build_id}")
        assert browser.find_element(By.ID, "build-state").text == "running"
        tell("start fetch:abc")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr.running[data-step="fetch:abc"]'),
                 "the running step")
        tell("log fetching layer 1 of 1")
        tell("done fetch:abc")
        tell("start ext4")
        wait_for(browser, lambda d: "fetching layer 1 of 1" in d.find_element(By.ID, "log").text, "the log line")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr.running[data-step="ext4"]'), "ext4 running")
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#steps tr")]
        assert "fetch:abc ran 1.50" in rows
        tell("done ext4")
        tell("end")
        wait_for(browser, lambda d: d.find_element(By.ID, "build-state").text == "done", "the build's end")
        assert not browser.find_elements(By.CSS_SELECTOR, "tr.running")
        shot = tmp_path / "build.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes().startswith(PNG)
    finally:
        writer.stdin.close()
        writer.wait(30)
