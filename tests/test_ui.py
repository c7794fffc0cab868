"""The dashboard in a real browser: Debian's chromium, driven by Playwright (no browser is downloaded).

``orchestrate ui`` runs as a subprocess over a project whose runs use the fake
Messages API. Screenshots of the task list and a task page are saved in
``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from .conftest import FEATURE, REPO, TempProject
from .fake_anthropic import FakeAnthropic

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def at(stage: str) -> str:
    return f": stage `{stage}` of workflow"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


class Dashboard:
    def __init__(self, root: Path, *more: str) -> None:
        self.port = _free_port()
        self.log = root.parent / f"ui-{self.port}.log"
        command = [sys.executable, "-m", "orchestrator", "ui", "--port", str(self.port), "--root", str(root), *more]
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def dashboard(project: TempProject) -> Iterator[Dashboard]:
    project.root.mkdir(parents=True, exist_ok=True)
    made = Dashboard(project.root)
    try:
        yield made
    finally:
        made.close()


def _run(project: TempProject, *more: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "orchestrator", "run", "workflows/feature.yaml", "--param", "goal=x", *more]
    return subprocess.Popen(
        command,
        cwd=project.root,
        env=env or dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_the_task_list_shows_every_task_and_sorts(project: TempProject, dashboard: Dashboard, browser: Browser) -> None:
    project.workflow(FEATURE)
    for task in ("add-login", "fix-typo"):
        assert _run(project, "--task", task, "--offline").wait(120) == 0
    page = browser.new_page()
    page.goto(dashboard.url + "/")
    rows = page.locator("#tasks tbody tr")
    assert [rows.nth(i).get_attribute("data-task") for i in range(rows.count())] == ["add-login", "fix-typo"]
    assert "succeeded" in rows.nth(0).inner_text() and "feature" in rows.nth(0).inner_text()
    page.locator("#tasks th", has_text="Task").click()  # sort by task, descending
    assert rows.nth(0).get_attribute("data-task") == "fix-typo"
    _shot(page, "tasks.png")
    page.locator("a", has_text="add-login").click()
    page.wait_for_url(dashboard.url + "/tasks/add-login")
    assert page.locator("svg.graph g.node").count() == 5
    assert page.locator("svg.graph g.node[data-status=succeeded]").count() == 5
    assert page.locator("#history tr").count() == 2  # its one run, under the heading row
    _shot(page, "task.png")


def test_a_running_task_updates_live_without_a_reload(
    project: TempProject, dashboard: Dashboard, browser: Browser, api: FakeAnthropic
) -> None:
    project.workflow(FEATURE)
    api.reply("the plan", when=at("plan"), delay=3)
    run = _run(project, "--task", "live")
    state = project.root / "docs/ai/live/state.json"
    deadline = time.monotonic() + 30
    while not state.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    page = browser.new_page()
    page.goto(dashboard.url + "/tasks/live")
    page.evaluate("window.loadedOnce = true")
    assert page.locator("#stage-plan").get_attribute("data-status") == "running"
    page.wait_for_selector("#run-status.s-succeeded", timeout=30_000)  # the run ends: the page follows
    assert run.wait(30) == 0
    assert page.evaluate("window.loadedOnce") is True  # the same page: updated in place, not reloaded
    assert page.locator("#stage-audit").get_attribute("data-status") == "succeeded"


GATED = FEATURE.replace(
    "  - id: frontend\n    agent: frontend\n    needs: [plan]\n",
    "  - id: frontend\n    agent: frontend\n    needs: [plan]\n    approval: true\n",
)


def test_approve_on_a_waiting_gate_lets_the_run_finish(
    project: TempProject, dashboard: Dashboard, browser: Browser, api: FakeAnthropic
) -> None:
    project.workflow(GATED)
    api.reply("the backend", when=at("backend"), delay=12)  # the run goes on (and looks for decisions) meanwhile
    run = _run(project, "--task", "gate")
    page = browser.new_page()
    deadline = time.monotonic() + 30
    while True:
        page.goto(dashboard.url + "/tasks/gate")
        if page.locator("[data-gate=frontend]").count():
            break
        assert time.monotonic() < deadline, "the gate never showed"
        time.sleep(0.3)
    page.fill("[data-gate=frontend] input[name=note]", "looks right")
    page.click("[data-gate=frontend] button.approve")
    page.wait_for_selector("#run-status.s-succeeded", timeout=40_000)
    output, _ = run.communicate(timeout=30)
    assert run.returncode == 0, output
    state = json.loads((project.root / "docs/ai/gate/state.json").read_text())
    assert state["stages"]["frontend"]["approval"]["status"] == "approved"
    assert state["stages"]["frontend"]["approval"]["note"] == "looks right"
    assert state["stages"]["integrate"]["status"] == "succeeded"


def test_a_stage_output_with_a_script_is_shown_not_run(
    project: TempProject, dashboard: Dashboard, browser: Browser, api: FakeAnthropic
) -> None:
    project.workflow(FEATURE)
    hostile = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2"> [link](javascript:pwn())'
    api.reply(hostile, when=at("plan"))
    assert _run(project, "--task", "xss").wait(120) == 0
    page = browser.new_page()
    page.goto(dashboard.url + "/tasks/xss")
    text = page.locator("#stage-plan .markdown").inner_text()
    assert "<script>window.pwned = 1</script>" in text  # shown as text
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("#stage-plan .markdown script, #stage-plan .markdown img").count() == 0
    assert page.locator("#stage-plan .markdown a[href^=javascript]").count() == 0


def test_beyond_loopback_every_request_needs_the_token(project: TempProject) -> None:

    served = Dashboard(project.root, "--host", "0.0.0.0")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(served.url + "/")
        assert refused.value.code == 401
        line = next(line for line in served.log.read_text().splitlines() if "?token=" in line)
        token = line.split("?token=")[1].split()[0]
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        page = opener.open(f"{served.url}/?token={token}").read().decode()
        assert "<h1>Tasks</h1>" in page
        with pytest.raises(urllib.error.HTTPError) as wrong:
            urllib.request.urlopen(served.url + "/?token=guess")
        assert wrong.value.code == 401
    finally:
        served.close()


def test_read_only_hides_decisions_and_refuses_them(project: TempProject, browser: Browser, api: FakeAnthropic) -> None:
    project.workflow(GATED)
    assert _run(project, "--task", "ro").wait(120) == 3  # paused at the gate
    served = Dashboard(project.root, "--read-only")
    try:
        page = browser.new_page()
        page.goto(served.url + "/tasks/ro")
        assert page.locator("[data-gate=frontend]").count() == 1
        assert page.locator("[data-gate=frontend] form").count() == 0
        request = urllib.request.Request(
            served.url + "/tasks/ro/stages/frontend/decision",
            data=b"decision=approve&csrf=x",
            headers={"Origin": served.url},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403
    finally:
        served.close()


def test_a_decision_from_another_site_is_refused(
    project: TempProject, dashboard: Dashboard, api: FakeAnthropic
) -> None:
    project.workflow(GATED)
    assert _run(project, "--task", "csrf").wait(120) == 3
    page = urllib.request.urlopen(dashboard.url + "/tasks/csrf").read().decode()
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    for origin, token in (("http://evil.example", csrf), (dashboard.url, "stale")):
        request = urllib.request.Request(
            dashboard.url + "/tasks/csrf/stages/frontend/decision",
            data=f"decision=approve&csrf={token}".encode(),
            headers={"Origin": origin},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403
    state = json.loads((project.root / "docs/ai/csrf/state.json").read_text())
    assert state["stages"]["frontend"]["approval"]["status"] == "waiting"  # nothing was decided


def test_a_port_in_use_is_a_clear_error(project: TempProject) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "ui", "--port", str(port), "--root", str(project.root)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"can't serve on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
