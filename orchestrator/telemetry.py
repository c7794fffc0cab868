"""OpenTelemetry traces of runs (the ``orchestrate[otel]`` extra); the one home of ``opentelemetry``.

``TraceListener`` turns a run's events into spans that follow the OpenTelemetry
GenAI semantic conventions, so any OTLP backend shows a run as a tree:

- the run: ``orchestrate run <workflow>``, with its task, run id, status, tokens and cost;
- a span per stage: ``invoke_agent <agent>`` (``gen_ai.operation.name``, ``gen_ai.agent.name``,
  ``gen_ai.request.model``), ``command <stage>`` for a ``run:`` stage, ``keep <stage>`` for an
  output kept from an earlier run;
- a span per model request: ``chat <model>`` with ``gen_ai.usage.input_tokens``, ``output_tokens``,
  the cache read and creation tokens, ``gen_ai.response.id`` and the cost (``orchestrate.cost_usd``);
- a span per tool call: ``execute_tool <tool>`` (``gen_ai.tool.name``);
- approval requests and decisions, retries and audit rounds as span events.

Spans carry the events' own times, so a trace drawn from a run matches its
log. As a stage starts, its trace context is put in ``runners.TRACEPARENT`` for
the agent CLIs it runs. ``tracer_provider`` makes the exporting provider; the
OpenTelemetry SDK reads the standard ``OTEL_*`` variables itself (endpoint,
headers, service name). Imported only when a run is traced.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from .events import (
    ApprovalDecided,
    ApprovalRequested,
    AttemptFinished,
    AuditRound,
    Event,
    RunFinished,
    RunStarted,
    StageFailed,
    StageRetrying,
    StageReused,
    StageSkipped,
    StageStarted,
    StageSucceeded,
    ToolFinished,
)
from .runners import TRACEPARENT

__all__ = ["TraceListener", "tracer_provider"]

PROVIDER = "anthropic"


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def tracer_provider() -> TracerProvider:
    """A provider exporting over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the SDK's default)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.version": __version__})  # with OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "orchestrate"}))  # the SDK's default otherwise
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class TraceListener:
    """Spans from a run's events (see the module docstring); ``provider`` exports them."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.tracer = provider.get_tracer("orchestrate", __version__)
        self.run: Span | None = None
        self.stages: dict[str, Span] = {}
        self.models: dict[str, str] = {}

    def _child(self, name: str, parent: Span | None, start: float, attributes: dict[str, Any]) -> Span:
        context = trace.set_span_in_context(parent) if parent is not None else None
        return self.tracer.start_span(name, context=context, start_time=_ns(start), attributes=attributes)

    def on_event(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run = self._child(
                f"orchestrate run {event.workflow}",
                None,
                event.time,
                {
                    "orchestrate.workflow": event.workflow,
                    "orchestrate.task": event.task,
                    "orchestrate.run_id": event.run_id,
                    "orchestrate.resumed": event.resumed,
                    "orchestrate.stages": len(event.stages),
                },
            )
        elif self.run is None:
            return
        elif isinstance(event, StageStarted):
            self._stage_started(event)
        elif isinstance(event, AttemptFinished):
            self._attempt(event)
        elif isinstance(event, ToolFinished):
            span = self._child(
                f"execute_tool {event.tool}",
                self.stages.get(event.stage, self.run),
                event.started,
                {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": event.tool},
            )
            if event.error is not None:
                span.set_status(Status(StatusCode.ERROR, event.error))
                span.set_attribute("error.type", "tool_error")
            span.end(_ns(event.started + event.duration))
        elif isinstance(event, StageSucceeded):
            self._stage_ended(event.stage, event.time, None)
        elif isinstance(event, StageFailed):
            self._stage_ended(event.stage, event.time, event.error)
        elif isinstance(event, StageSkipped):
            self.run.add_event(
                "stage.skipped", {"orchestrate.stage": event.stage, "reason": event.reason}, _ns(event.time)
            )
        elif isinstance(event, StageReused):
            span = self._child(f"keep {event.stage}", self.run, event.time, {"orchestrate.stage": event.stage})
            span.set_attribute("orchestrate.kept_from_run", event.from_run)
            span.end(_ns(event.time))
        elif isinstance(event, StageRetrying):
            stage = self.stages.get(event.stage)
            if stage is not None:
                stage.add_event("stage.retry", {"attempt": event.attempt, "error": event.error}, _ns(event.time))
        elif isinstance(event, ApprovalRequested):
            self.run.add_event("approval.requested", {"orchestrate.stage": event.stage}, _ns(event.time))
        elif isinstance(event, ApprovalDecided):
            decided: dict[str, str | bool] = {"orchestrate.stage": event.stage, "approved": event.approved}
            self.run.add_event("approval.decided", decided, _ns(event.time))
        elif isinstance(event, AuditRound):
            audit: dict[str, str | int] = {"round": event.round, "verdict": event.verdict, "findings": event.findings}
            self.run.add_event("audit.round", audit, _ns(event.time))
        elif isinstance(event, RunFinished):
            self._run_finished(event)

    def _stage_started(self, event: StageStarted) -> None:
        assert self.run is not None
        if event.agent:
            name = f"invoke_agent {event.agent}"
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": event.agent,
                "gen_ai.request.model": event.model,
                "gen_ai.provider.name": PROVIDER,
            }
        else:
            name, attributes = f"command {event.stage}", {}
        attributes.update({"orchestrate.stage": event.stage, "orchestrate.reason": event.reason})
        span = self.stages[event.stage] = self._child(name, self.run, event.time, attributes)
        self.models[event.stage] = event.model
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
        TRACEPARENT.set(carrier.get("traceparent"))  # in the stage's own task: its agent CLI reads it

    def _attempt(self, event: AttemptFinished) -> None:
        attempt = event.attempt
        if not (attempt.usage.total or attempt.request_id or attempt.status_code):
            return  # a command's run, not a model request
        model = self.models.get(event.stage, "")
        usage = attempt.usage
        span = self._child(
            f"chat {model}".strip(),
            self.stages.get(event.stage, self.run),
            attempt.started,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": PROVIDER,
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
                "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
                "orchestrate.attempt": attempt.number,
                "orchestrate.batch": attempt.batch,
            },
        )
        if attempt.request_id:
            span.set_attribute("gen_ai.response.id", attempt.request_id)
        if event.cost_usd is not None:
            span.set_attribute("orchestrate.cost_usd", event.cost_usd)
        if attempt.status_code is not None:
            span.set_attribute("http.response.status_code", attempt.status_code)
        if attempt.error:
            span.set_status(Status(StatusCode.ERROR, attempt.error))
            span.set_attribute("error.type", str(attempt.status_code or "request_error"))
        span.end(_ns(attempt.started + attempt.duration))

    def _stage_ended(self, stage: str, at: float, error: str | None) -> None:
        span = self.stages.pop(stage, None)
        if span is None:
            return
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
            span.set_attribute("error.type", "stage_failed")
        span.end(_ns(at))

    def _run_finished(self, event: RunFinished) -> None:
        assert self.run is not None
        for stage in list(self.stages):
            self._stage_ended(stage, event.time, "the run ended first")
        usage = event.usage
        self.run.set_attributes(
            {
                "orchestrate.status": event.status,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
                "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
            }
        )
        if event.cost_usd is not None:
            self.run.set_attribute("orchestrate.cost_usd", event.cost_usd)
        if event.verdict is not None:
            self.run.set_attribute("orchestrate.verdict", event.verdict)
        if event.status in ("failed", "interrupted"):
            self.run.set_status(Status(StatusCode.ERROR, event.note or event.status))
        self.run.end(_ns(event.time))
        self.run = None
