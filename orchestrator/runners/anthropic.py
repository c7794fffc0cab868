"""The Anthropic Messages API runner: the only module that imports anthropic.

One stage is one streamed request (long replies don't hit the non-streaming
limits). The system prompt is the agent's rendered instructions, marked for
prompt caching; the user message is the stage's prompt. The SDK's own retries
are off so that every attempt is seen and counted here: 429, 5xx, overloaded
and connection errors are retried with exponential backoff, honouring
``retry-after``. The client is the SDK's, so ``ANTHROPIC_API_KEY`` and
``ANTHROPIC_BASE_URL`` work exactly as they do for the SDK.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import anthropic

from ..audit import VERDICT_TOOL
from . import AttemptRecord, AttemptReporter, StageFailure, StageRequest, StageResult, Usage

__all__ = ["AnthropicRunner", "RetryPolicy"]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors: a stream cut off mid-body raises them unwrapped by the SDK.
    Recent SDKs use httpx2, older ones httpx."""
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return (module.TransportError,)
    return ()


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (anthropic.APIConnectionError, *_transport_errors())
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
RETRY_TYPES = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})


class _Retry(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0


class AnthropicRunner:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # max_retries=0: this runner retries, so it can count and report every attempt.
        self.client = client if client is not None else anthropic.AsyncAnthropic(max_retries=0)
        self.retry = retry or RetryPolicy()
        self.sleep = sleep

    def _arguments(self, request: StageRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "system": [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if request.structured is not None:
            arguments["tools"] = [
                {
                    "name": VERDICT_TOOL,
                    "description": "Submit the audit verdict: pass or fail, the findings and the checklist applied.",
                    "input_schema": request.structured,
                }
            ]
            arguments["tool_choice"] = {"type": "tool", "name": VERDICT_TOOL}
        return arguments

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        arguments = self._arguments(request)
        for number in range(1, self.retry.max_attempts + 1):
            try:
                message = await self._attempt(number, arguments, report)
            except _Retry as retry:
                await self.sleep(retry.delay)
                continue
            if message.stop_reason == "max_tokens":
                raise StageFailure(
                    f"the reply was cut off at max_tokens ({request.max_tokens}); raise defaults.max_tokens "
                    "in the workflow"
                )
            text = "".join(block.text for block in message.content if block.type == "text")
            data = next(
                (
                    dict(block.input)
                    for block in message.content
                    if block.type == "tool_use" and block.name == VERDICT_TOOL and isinstance(block.input, dict)
                ),
                None,
            )
            return StageResult(output=text, data=data, stop_reason=message.stop_reason)
        raise StageFailure("no attempt was made (max_attempts is 0)")

    async def _attempt(self, number: int, arguments: dict[str, Any], report: AttemptReporter) -> Any:
        """One streamed request, reported whatever happens; ``_Retry`` when another try is due."""
        started, clock = time.time(), time.monotonic()
        usage, request_id = Usage(), None
        last = number >= self.retry.max_attempts

        def record(error: str | None = None, status: int | None = None) -> AttemptRecord:
            return AttemptRecord(number, started, round(time.monotonic() - clock, 3), usage, error, status, request_id)

        try:
            async with self.client.messages.stream(**arguments) as stream:
                request_id = getattr(stream, "request_id", None)
                async for event in stream:
                    if event.type == "message_start":
                        usage = _usage(event.message.usage)
                    elif event.type == "message_delta" and event.usage is not None:
                        # Output tokens so far: what a cancelled or cut-off attempt has already cost.
                        usage = Usage(
                            usage.input_tokens,
                            event.usage.output_tokens or usage.output_tokens,
                            usage.cache_read_tokens,
                            usage.cache_write_tokens,
                        )
                message = await stream.get_final_message()
        except asyncio.CancelledError:
            report(record("cancelled"))
            raise
        except anthropic.APIStatusError as exc:
            request_id = exc.response.headers.get("request-id") or request_id
            error = _describe(exc, request_id)
            report(record(error, exc.status_code))
            if _retryable(exc) and not last:
                raise _Retry(self._delay(number, exc.response.headers)) from exc
            raise StageFailure(error + (f" (gave up after {number} attempts)" if number > 1 else "")) from exc
        except TRANSPORT_ERRORS as exc:
            error = (
                f"connection failed: {exc}"
                if isinstance(exc, anthropic.APIConnectionError)
                else (f"connection lost mid-reply: {type(exc).__name__}: {exc}")
            )
            report(record(error))
            if not last:
                raise _Retry(self._delay(number, None)) from exc
            raise StageFailure(f"{error} (gave up after {number} attempts)") from exc
        usage = _usage(message.usage)
        request_id = getattr(message, "_request_id", None) or request_id
        report(record())
        return message

    def _delay(self, number: int, headers: Any) -> float:
        """``retry-after`` when the API sends one, else exponential backoff with jitter; capped."""
        wait = _retry_after(headers) if headers is not None else None
        if wait is None:
            wait = self.retry.base_delay * 2 ** (number - 1) * random.uniform(0.5, 1.0)
        return max(0.0, min(wait, self.retry.max_delay))


def _usage(usage: Any) -> Usage:
    return Usage(
        input_tokens=getattr(usage, "input_tokens", 0) or 0,
        output_tokens=getattr(usage, "output_tokens", 0) or 0,
        cache_read_tokens=getattr(usage, "cache_read_input_tokens", 0) or 0,
        cache_write_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
    )


def _error_type(exc: anthropic.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])
    return None


def _retryable(exc: anthropic.APIStatusError) -> bool:
    return exc.status_code in RETRY_STATUS or _error_type(exc) in RETRY_TYPES


def _describe(exc: anthropic.APIStatusError, request_id: str | None) -> str:
    kind = _error_type(exc) or type(exc).__name__
    message = exc.message
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
    text = f"HTTP {exc.status_code} {kind}: {message}"
    if exc.status_code == 401:
        text += " (check ANTHROPIC_API_KEY)"
    return text + (f" [request {request_id}]" if request_id else "")


def _retry_after(headers: Any) -> float | None:
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return float(millis) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
