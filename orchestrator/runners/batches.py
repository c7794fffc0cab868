"""``batch: true`` stages: one request sent through the Message Batches API, at half the price.

The request is submitted as a batch of one, its id recorded at once (through the
stage's ``Meter``) so that a run that stops before the batch ends (interrupted,
timed out, killed) collects the same batch when it runs again instead of paying
for the request again; the batch is polled, with a growing interval, until it
has ended, and its result is the stage's reply. A batch can take from seconds to
24 hours, so a batch stage's default ``timeout`` is a day (``BATCH_TIMEOUT``).

It never imports the SDK: the runner that owns the client (``anthropic``) is
handed in as a ``BatchApi``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from . import AttemptRecord, Meter, StageFailure, Usage

__all__ = ["BATCH_TIMEOUT", "BatchApi", "BatchPolicy", "custom_id", "run_batched"]

BATCH_TIMEOUT = 86_400.0  # seconds: the API expires a batch that has not ended within 24 hours


@dataclass(frozen=True)
class BatchPolicy:
    """How often to ask whether a batch has ended: first after ``poll`` seconds, then each wait
    half again as long, up to ``max_poll``."""

    poll: float = 2.0
    max_poll: float = 60.0


class BatchApi(Protocol):
    """What batching needs of the API runner: its client, its retried calls, token counting and sleep."""

    batches: BatchPolicy

    @property
    def client(self) -> Any: ...

    async def call(self, what: str, make: Callable[[], Awaitable[Any]]) -> Any: ...

    async def count_tokens(self, body: Mapping[str, Any]) -> int: ...

    @property
    def sleep(self) -> Callable[[float], Awaitable[None]]: ...


def custom_id(stage: str) -> str:
    """A batch request's id (``^[a-zA-Z0-9_-]{1,64}$``) for a stage id, instances (``doc[0]``) included."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", stage)[:64] or "stage"


async def run_batched(runner: BatchApi, stage: str, body: dict[str, Any], meter: Meter) -> Any:
    """Submit ``body`` (or collect the batch an earlier run submitted for it), wait for it and return its message.

    A batch an earlier run left that ended without a reply (errored, expired or cancelled: none of them
    billed) is not the stage's answer: the request is sent again in a new batch.
    """
    if meter.batch is not None:
        found = await _one_batch(runner, body, meter, meter.batch)
        if found is not None:
            return found
    request_id = custom_id(stage)
    found = await _one_batch(runner, body, meter, (None, request_id))
    if found is None:  # only a resumed batch's failure is forgiven: a fresh one's fails the stage
        raise StageFailure(f"the batch for {request_id} ended without a reply")
    return found


async def _one_batch(runner: BatchApi, body: dict[str, Any], meter: Meter, batch: tuple[str | None, str]) -> Any:
    """One batch's attempt at the request (submitted here when ``batch`` has no id), reported; its message, or
    None when an earlier run's batch ended without one (so the caller sends a new one)."""
    client = runner.client
    started, clock = time.time(), time.monotonic()
    if meter.reserve is not None:  # billed when it is processed: reserve it, resumed or not
        await meter.reserve(await runner.count_tokens(body), body["max_tokens"], True)
    batch_id, request_id = batch
    resumed = batch_id is not None
    if batch_id is None:
        created = await runner.call(
            "submitting the batch",
            lambda: client.messages.batches.create(requests=[cast(Any, {"custom_id": request_id, "params": body})]),
        )
        batch_id = created.id
        if meter.batched is not None:
            meter.batched(batch_id, request_id)
    found = await _result(runner, batch_id, request_id)
    duration = round(time.monotonic() - clock, 3)
    if found is None or found.type != "succeeded":
        if found is None:
            detail = f"batch {batch_id} ended without a result for {request_id}"
        else:
            detail = _error_text(found) if found.type == "errored" else f"the request was {found.type}"
        meter(AttemptRecord(1, started, duration, error=detail, batch=True, request_id=batch_id))
        if resumed:
            return None
        raise StageFailure(f"batch {batch_id}: {detail}")
    message = found.message
    usage = message.usage
    meter(
        AttemptRecord(
            1,
            started,
            duration,
            Usage(
                usage.input_tokens or 0,
                usage.output_tokens or 0,
                usage.cache_read_input_tokens or 0,
                usage.cache_creation_input_tokens or 0,
            ),
            request_id=batch_id,
            batch=True,
        )
    )
    return message


async def _result(runner: BatchApi, batch_id: str, request_id: str) -> Any:
    """Poll the batch until it has ended, then the result of ``request_id`` in it (None if it has none)."""
    client, policy = runner.client, runner.batches
    wait = policy.poll
    while True:
        batch = await runner.call(f"polling batch {batch_id}", lambda: client.messages.batches.retrieve(batch_id))
        if batch.processing_status == "ended":
            break
        await runner.sleep(wait)
        wait = min(wait * 1.5, policy.max_poll)
    results = await runner.call(f"reading batch {batch_id}", lambda: client.messages.batches.results(batch_id))
    async for line in results:
        if line.custom_id == request_id:
            return line.result
    return None


def _error_text(result: Any) -> str:
    error = getattr(getattr(result, "error", None), "error", None)
    kind = getattr(error, "type", None) or "error"
    message = getattr(error, "message", None) or "the request failed"
    return f"{kind}: {message}"
