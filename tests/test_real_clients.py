"""Proof that the real tools load what compile writes: OpenCode and Claude Code, pinned, offline.

The clients are installed from npm once into a cache folder (``.cache/clients`` in the repo,
or ``$ORCHESTRATE_CLIENTS_CACHE``). Each runs with HOME, XDG and config folders in a temp
folder and with auto-update, telemetry and model fetching off; Claude Code talks only to the
localhost fake of the Messages API. The test is skipped only when npm itself is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, CliRunner
from .fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.slow

OPENCODE = "opencode-ai@1.18.33"
CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.329"
CACHE = Path(os.environ.get("ORCHESTRATE_CLIENTS_CACHE") or REPO / ".cache" / "clients")


@dataclass(frozen=True)
class Clients:
    opencode: Path
    claude: Path


def _works(binary: Path) -> bool:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


@pytest.fixture(scope="module")
def clients() -> Clients:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed; it is needed to install the pinned OpenCode and Claude Code clients")
    folder = CACHE / f"{OPENCODE}-{CLAUDE_CODE}".replace("/", "_").replace("@", "")
    found = Clients(folder / "node_modules/.bin/opencode", folder / "node_modules/.bin/claude")
    if not (_works(found.opencode) and _works(found.claude)):
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(folder),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                OPENCODE,
                CLAUDE_CODE,
            ],
            check=True,
            timeout=900,
        )
    assert _works(found.opencode) and _works(found.claude)
    return found


def agent_files(out: Path, tool: str) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (frontmatter, body) of every generated file for ``tool``."""
    files = {}
    for path in sorted((out / tool / "agents").glob("*.md")):
        head, body = path.read_text(encoding="utf-8")[4:].split("\n---\n", 1)
        files[path.stem] = (yaml.safe_load(head), body.strip())
    assert files, f"no {tool} agents in {out}"
    return files


@pytest.fixture(params=["example", "repo"])
def compiled(request: pytest.FixtureRequest, cli: CliRunner, tmp_path: Path) -> Path:
    """The example project compiled afresh, and this repository's committed output/."""
    if request.param == "repo":
        return REPO / "output"
    out = tmp_path / "out"
    result = cli("compile", "examples/feature/workflows/feature.yaml", "--out", str(out), cwd=REPO)
    assert result.code == 0, result.err
    return out


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANTHROPIC_", "OPENCODE", "CLAUDE"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local/state"),
    )
    env.update(extra)
    return env


def opencode(clients: Clients, args: list[str], cwd: Path, env: dict[str, str], out: Path) -> str:
    """Run OpenCode with stdout going to a file: into a pipe it cuts its output off at 64 KiB."""
    with out.open("w") as handle:
        proc = subprocess.run(
            [clients.opencode, *args], cwd=cwd, env=env, stdout=handle, stderr=subprocess.PIPE, text=True, timeout=120
        )
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def test_opencode_loads_every_agent_with_its_mode_and_model(clients: Clients, compiled: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(compiled / "opencode" / "agents", project / ".opencode" / "agents")
    env = isolated_env(
        tmp_path / "home",
        OPENCODE_DISABLE_AUTOUPDATE="1",
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_SHARE="1",
        OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        OPENCODE_DISABLE_DEFAULT_PLUGINS="1",
        OPENCODE_DISABLE_CLAUDE_CODE="1",
        OPENCODE_DISABLE_EXTERNAL_SKILLS="1",
        OPENCODE_PURE="1",
    )
    config = opencode(clients, ["debug", "config", "--pure"], project, env, tmp_path / "config.json")
    loaded = json.loads(config)["agent"]
    expected = agent_files(compiled, "opencode")
    for name, (meta, body) in expected.items():
        agent = loaded[name]
        assert agent["mode"] == meta["mode"], name
        assert agent["model"] == meta["model"], name
        assert agent["description"] == meta["description"], name
        # Broken frontmatter would turn the whole file, "---" included, into the prompt.
        assert agent["prompt"].strip() == body, name
    listing = opencode(clients, ["agent", "list"], project, env, tmp_path / "agents.txt")
    lines = set(listing.splitlines())
    for name, (meta, _) in expected.items():
        assert f"{name} ({meta['mode']})" in lines


def claude_init(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        event = json.loads(line)
        if event.get("type") == "system" and event.get("subtype") == "init":
            return event
    raise AssertionError(f"no init event in:\n{stdout[:2000]}")


def test_claude_code_loads_every_subagent_with_its_model_and_tools(
    clients: Clients, compiled: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(compiled / "claude" / "agents", project / ".claude" / "agents")
    expected = agent_files(compiled, "claude")
    with FakeAnthropic() as api:
        env = isolated_env(
            tmp_path / "home",
            CLAUDE_CONFIG_DIR=str(tmp_path / "claude-config"),
            ANTHROPIC_BASE_URL=api.url,
            ANTHROPIC_API_KEY="test-key-not-secret",
            DISABLE_AUTOUPDATER="1",
            DISABLE_TELEMETRY="1",
            DISABLE_ERROR_REPORTING="1",
            DISABLE_BUG_COMMAND="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        )

        def claude(*args: str) -> dict[str, Any]:
            proc = subprocess.run(
                [clients.claude, "-p", "hi", "--output-format", "stream-json", "--verbose", "--max-turns", "1", *args],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            return claude_init(proc.stdout)

        assert set(expected) <= set(claude()["agents"])
        for name, (meta, body) in expected.items():
            before = len(api.messages())
            init = claude("--agent", name)
            assert init["model"] == meta["model"], name
            if "tools" in meta:
                # Restricted to (what this build offers of) the declared tools, instead of all of them.
                declared = {t.strip() for t in meta["tools"].split(",")}
                assert "Read" in init["tools"] and set(init["tools"]) <= declared, (name, init["tools"])
            sent = api.messages()[before:]
            assert sent, f"{name}: Claude Code sent no request to the fake API"
            assert any(body.splitlines()[0] in r.text() for r in sent), name
