"""``batch: true`` stages: one request sent through the Message Batches API, at half the price.

The request is submitted as a batch of one, its id recorded at once (through the
stage's ``Meter``) so that an interrupted run polls the same batch when it
resumes instead of paying for the request again; then the batch is polled, with
a growing interval, until it has ended, and its result is the stage's reply. A
batch can take from seconds to 24 hours; the stage's ``timeout`` still applies.

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

__all__ = ["BatchApi", "BatchPolicy", "custom_id", "run_batched"]


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
    """Submit ``body`` (or find the batch an earlier run submitted for it), wait for it and return its message."""
    client = runner.client
    policy = runner.batches
    started, clock = time.time(), time.monotonic()
    if meter.reserve is not None:  # the batch is billed when it is processed: reserve it, resumed or not
        await meter.reserve(await runner.count_tokens(body), body["max_tokens"], True)
    if meter.batch is not None:
        batch_id, request_id = meter.batch
    else:
        request_id = custom_id(stage)
        created = await runner.call(
            "submitting the batch",
            lambda: client.messages.batches.create(requests=[cast(Any, {"custom_id": request_id, "params": body})]),
        )
        batch_id = created.id
        if meter.batched is not None:
            meter.batched(batch_id, request_id)
    wait = policy.poll
    while True:
        batch = await runner.call(f"polling batch {batch_id}", lambda: client.messages.batches.retrieve(batch_id))
        if batch.processing_status == "ended":
            break
        await runner.sleep(wait)
        wait = min(wait * 1.5, policy.max_poll)
    results = await runner.call(f"reading batch {batch_id}", lambda: client.messages.batches.results(batch_id))
    found: Any = None
    async for line in results:
        if line.custom_id == request_id:
            found = line.result
            break
    duration = round(time.monotonic() - clock, 3)
    if found is None:
        meter(AttemptRecord(1, started, duration, error=f"batch {batch_id} has no result", batch=True))
        raise StageFailure(f"batch {batch_id} ended without a result for {request_id}")
    if found.type != "succeeded":
        detail = _error_text(found) if found.type == "errored" else f"the request was {found.type}"
        meter(AttemptRecord(1, started, duration, error=detail, batch=True, request_id=batch_id))
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


def _error_text(result: Any) -> str:
    error = getattr(getattr(result, "error", None), "error", None)
    kind = getattr(error, "type", None) or "error"
    message = getattr(error, "message", None) or "the request failed"
    return f"{kind}: {message}"
