"""Shared fixtures: temp projects, an in-process CLI runner, and no network by accident."""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import main

from .fake_anthropic import FakeAnthropic

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_real_anthropic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the SDK at a closed local port, so a test that forgets the fake fails fast, offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    yield


@pytest.fixture(autouse=True)
def _state_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The user's state folder (where the key that signs decisions lives) is the test's own, never the home's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state-home")))


@dataclass
class CliResult:
    code: int
    out: str
    err: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """Run ``orchestrate ARGS`` in-process from ``cwd``; stdout and stderr kept apart."""

    def run(*args: str, cwd: Path | None = None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        out, err = capsys.readouterr()
        code = exc.value.code
        return CliResult(code if isinstance(code, int) else 1, out, err)

    return run


class TempProject:
    """A project folder with helpers to write workflows and templates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "workflows").mkdir(parents=True)

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def workflow(self, text: str, name: str = "feature") -> Path:
        return self.write(f"workflows/{name}.yaml", text)

    def template(self, name: str, text: str) -> Path:
        return self.write(f"content/instructions/{name}", text)


@pytest.fixture
def project(tmp_path: Path) -> TempProject:
    return TempProject(tmp_path / "proj")


FEATURE = """
name: feature
description: Plan a feature, build backend and frontend in parallel, integrate, audit.
params:
  goal: {description: What to build, required: true}
defaults:
  model: claude-sonnet-5-5
  max_parallel: 4
agents:
  plan: {model: claude-opus-5-5, description: Breaks the goal into a plan}
  auditor: {model: claude-opus-5-5}
stages:
  - id: plan
    agent: plan
    prompt: "Write an implementation plan for: {{ params.goal }}"
  - id: backend
    agent: build
    needs: [plan]
  - id: frontend
    agent: frontend
    needs: [plan]
  - id: integrate
    agent: build
    needs: [backend, frontend]
  - id: audit
    agent: auditor
    needs: [integrate]
"""


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """The localhost fake of the Messages API, with the SDK (and subprocesses) pointed at it."""
    with FakeAnthropic() as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-a-secret")
        yield fake


def event_lines(out: str) -> list[str]:
    """A run's plain output lines without the clock that starts each event line."""
    return [line[10:] if line[:2].isdigit() and line[8:10] == "  " else line for line in out.splitlines()]


def started_until(
    command: list[str], root: Path, env: dict[str, str], event: str, task: str = "t"
) -> subprocess.Popen[bytes]:
    """Start ``orchestrate ...`` in ``root`` and return once the task's event log holds ``event``."""
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = root / "docs/ai" / task / "events.jsonl"
    deadline = time.monotonic() + 30
    while f'"{event}"' not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"no {event} within 30 s:\n{output}")
        time.sleep(0.05)
    return process
