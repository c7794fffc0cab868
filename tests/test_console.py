"""The run views: the live table a terminal gets, and the plain lines a pipe gets."""

from __future__ import annotations

import io

from orchestrator.console import LiveView, PlainView
from orchestrator.events import RunFinished, RunStarted, StageFailed, StageSkipped, StageStarted, StageSucceeded
from orchestrator.runners import Usage

EVENTS = [
    RunStarted(1000.0, "r1", "feature", "add-login", ("plan", "build", "audit"), 2),
    StageStarted(1000.1, "plan", "plan", "claude-opus-5-5"),
    StageSucceeded(1001.6, "plan", 1.5, Usage(1200, 340), 0.0145, "PLAN"),
    StageStarted(1001.7, "build", "build", "claude-sonnet-5-5"),
    StageFailed(1002.0, "build", 0.3, "HTTP 500 api_error: boom"),
    StageSkipped(1002.0, "audit", "needs build, which failed"),
    RunFinished(1002.1, "failed", 2.1, Usage(1200, 340), 0.0145, None, ("build",), ("audit",)),
]


def test_plain_view_prints_one_line_per_event() -> None:
    out = io.StringIO()
    view = PlainView(out)
    for event in EVENTS:
        view.on_event(event)
    lines = [line.split("  ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "run r1: feature, task add-login, 3 stages, up to 2 at once",
        "plan: started (plan, claude-opus-5-5)",
        "plan: succeeded in 1.5 s, 1,200 in / 340 out, $0.0145",
        "build: started (build, claude-sonnet-5-5)",
        "build: failed after 0.3 s: HTTP 500 api_error: boom",
        "audit: skipped: needs build, which failed",
        "run failed in 2.1 s",
    ]


def test_live_view_shows_every_stage_with_status_time_and_tokens() -> None:
    out = io.StringIO()
    view = LiveView(out, width=160)
    for event in EVENTS:
        view.on_event(event)
    text = out.getvalue()
    for expected in (
        "feature: add-login",
        "plan",
        "succeeded",
        "1,200 / 340",
        "$0.0145",
        "failed",
        "skipped",
        "needs build, which failed",
    ):
        assert expected in text, expected
