"""Traces of runs: the span tree and its GenAI attributes, the trace context handed to a stage's runner, and a
real OTLP/HTTP export to a local receiver."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from orchestrator import RunRequest, prepare_workflow, run_workflow_async
from orchestrator.run.prepare import run_async
from orchestrator.runners import TRACEPARENT, AttemptRecord, Meter, StageRequest, StageResult, Usage
from orchestrator.telemetry import TraceListener

from .conftest import REPO, TempProject
from .fake_anthropic import FakeAnthropic

TOOLS = """
name: notes
agents:
  reader: {template: build.md, tools: [read], max_turns: 4}
stages:
  - id: look
    agent: reader
    prompt: Read notes.txt and say what it says.
  - id: audit
    agent: auditor
    needs: [look]
"""


def at(stage: str) -> str:
    return f": stage `{stage}` of workflow"


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _by_name(found: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in found if s.name == name]


def test_a_run_with_a_tool_loop_is_a_tree_of_genai_spans(
    project: TempProject, api: FakeAnthropic, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    project.workflow(TOOLS, name="notes")
    project.write("notes.txt", "buy milk\n")
    api.script(at("look"), [{"name": "read", "input": {"path": "notes.txt"}}, "It says: buy milk."])
    prepared = prepare_workflow(project.root / "workflows/notes.yaml", RunRequest(task="t", environ=dict(os.environ)))
    outcome = asyncio.run(run_workflow_async(prepared, listeners=[TraceListener(provider)]))
    assert outcome.status == "succeeded"
    found = exporter.get_finished_spans()
    (run,) = _by_name(found, "orchestrate run notes")
    (look,) = _by_name(found, "invoke_agent reader")
    (audit,) = _by_name(found, "invoke_agent auditor")
    (tool,) = _by_name(found, "execute_tool read")
    chats = [s for s in found if s.name.startswith("chat ")]
    # The tree: run > stage > (requests, tool calls).
    assert run.parent is None
    assert look.parent is not None and look.parent.span_id == run.context.span_id
    assert audit.parent is not None and audit.parent.span_id == run.context.span_id
    assert tool.parent is not None and tool.parent.span_id == look.context.span_id
    look_chats = [c for c in chats if c.parent is not None and c.parent.span_id == look.context.span_id]
    assert len(look_chats) == 2 and len(chats) == 3  # two turns of the tool loop, and the audit's request
    assert {s.context.trace_id for s in found} == {run.context.trace_id}
    # GenAI attributes, equal to what the state recorded.
    state = json.loads((project.root / "docs/ai/t/state.json").read_text())
    assert look.attributes is not None and look.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert look.attributes["gen_ai.agent.name"] == "reader"
    assert look.attributes["gen_ai.request.model"] == state["stages"]["look"]["model"]
    first = look_chats[0].attributes
    assert first is not None and first["gen_ai.operation.name"] == "chat"
    assert first["gen_ai.provider.name"] == "anthropic"
    tokens = state["stages"]["look"]["tokens"]
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in look_chats) == tokens["input"]  # type: ignore[index,misc]
    assert sum(c.attributes["gen_ai.usage.output_tokens"] for c in look_chats) == tokens["output"]  # type: ignore[index,misc]
    cache_read = sum(c.attributes["gen_ai.usage.cache_read.input_tokens"] for c in look_chats)  # type: ignore[index,misc]
    assert cache_read == tokens["cache_read"]
    cost = sum(c.attributes["orchestrate.cost_usd"] for c in look_chats)  # type: ignore[index,misc]
    assert abs(cost - state["stages"]["look"]["cost_usd"]) < 1e-9
    assert tool.attributes is not None and tool.attributes["gen_ai.tool.name"] == "read"
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert run.attributes is not None and run.attributes["orchestrate.status"] == "succeeded"
    assert [e.name for e in run.events] == ["audit.round"]
    # Spans carry the events' times: the tool call lies within its stage.
    assert look.start_time <= tool.start_time <= tool.end_time <= look.end_time  # type: ignore[operator]


def test_a_failed_request_is_an_error_span_and_a_stage_runner_sees_the_trace_context(
    project: TempProject, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    project.workflow(TOOLS.replace("tools: [read], max_turns: 4", "max_turns: 1"), name="notes")
    seen: dict[str, str | None] = {}

    class Runner:
        async def run(self, request: StageRequest, meter: Meter) -> StageResult:
            seen[request.stage_id] = TRACEPARENT.get()
            if request.stage_id == "look" and "look" not in seen.get("failed", ""):
                seen["failed"] = "look"
                meter(AttemptRecord(1, 1.0, 0.1, Usage(10, 0), error="overloaded", status_code=529))
            meter(AttemptRecord(2, 1.2, 0.1, Usage(10, 5), request_id="req_1"))
            if request.verdict:
                return StageResult("", {"verdict": "pass", "summary": "ok", "findings": [], "checklist": []})
            return StageResult("done")

    prepared = prepare_workflow(project.root / "workflows/notes.yaml", RunRequest(task="t"))
    outcome = asyncio.run(run_async(prepared, listeners=[TraceListener(provider)], runner=Runner()))
    assert outcome.status == "succeeded", outcome
    found = exporter.get_finished_spans()
    (look,) = [s for s in found if s.attributes and s.attributes.get("orchestrate.stage") == "look"]
    failed = [s for s in found if s.status.status_code == StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].attributes is not None
    assert failed[0].attributes["http.response.status_code"] == 529
    assert failed[0].parent is not None and failed[0].parent.span_id == look.context.span_id
    # The runner ran inside its stage's span: an agent CLI gets this as TRACEPARENT.
    expected = f"00-{look.context.trace_id:032x}-{look.context.span_id:016x}-{look.context.trace_flags:02x}"
    assert seen["look"] == expected


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.received.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver.received
    finally:
        server.shutdown()


def test_a_run_sends_its_trace_over_otlp_http_to_the_endpoint_in_the_environment(
    tmp_path: Path, receiver: tuple[str, list[ExportTraceServiceRequest]]
) -> None:
    url, received = receiver
    project = tmp_path / "p"
    subprocess.run(["cp", "-r", str(REPO / "examples/feature"), str(project)], check=True)
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_SERVICE_NAME": "my-pipelines"}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "workflows/feature.yaml", "--param", "goal=x", "--offline"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names, services = [], set()
    for request in received:
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                names += [span.name for span in scope.spans]
    assert services == {"my-pipelines"}  # the standard OTEL_* variables are honoured
    assert "orchestrate run feature" in names
    assert {"invoke_agent plan", "invoke_agent backend", "invoke_agent frontend", "invoke_agent auditor"} <= set(names)
