"""The Anthropic Messages API runner: the only module that imports anthropic.

A stage is one streamed request (long replies don't hit the non-streaming
limits), or, for an agent with tools, a loop of them: the model's tool calls
run in the confined workspace (``tools``) and their results go back, until the
model ends its turn or ``max_turns`` is reached. Every turn is appended to the
stage's transcript (``stages/<id>.transcript.jsonl``). The body of each request
comes from ``api_request`` (what the model accepts, prompt caching, structured
outputs); a ``batch: true`` stage goes through the Message Batches API instead
(``batches``). Stages that start together with one prompt prefix take turns to
write it to the cache (``warmup``).

The SDK's own retries are off so that every attempt is seen and counted here:
429, 5xx, overloaded and connection errors are retried with exponential
backoff, honouring ``retry-after`` and the API's ``x-should-retry``. With a
budget in force, each request's worst case is reserved first (its input counted
by the token-counting endpoint). The client is the SDK's, so
``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` work exactly as they do for
the SDK. With a ``Recorder`` every exchange is saved; with a ``Replayer`` no
client is made at all and replies come from the recording.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import anthropic

from ..api_request import prefix_key, request_body
from ..fileio import replace_file
from ..models import facts_for
from ..sandbox import Confinement
from ..tools import call_tool, tool_definitions
from ..workspace import BashPolicy, Workspace
from . import AttemptRecord, AttemptReporter, Meter, StageFailure, StageRequest, StageResult, Usage
from .batches import BatchPolicy, run_batched
from .recording import Recorder, Replayer
from .warmup import CacheWarmer, Turn

__all__ = ["AnthropicRunner", "RetryPolicy", "token_counter"]


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
COUNT_ERRORS: tuple[type[BaseException], ...] = (anthropic.APIError, *TRANSPORT_ERRORS)
# A reply whose stream doesn't parse: counted as an attempt and retried like a cut connection.
MALFORMED: tuple[type[BaseException], ...] = (ValueError, anthropic.APIResponseValidationError)
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
RETRY_TYPES = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})
# What the token-counting endpoint takes of a request body.
COUNT_FIELDS = ("model", "system", "messages", "tools", "thinking", "output_config", "cache_control")
# What counting tokens adds at most on top of a request's bytes when the counting endpoint can't be reached:
# a token is at least one byte, and the API adds a system prompt of its own for tools and output formats.
COUNT_MARGIN = 2048


class _Retry(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0


@dataclass(frozen=True)
class WorkspaceSetup:
    """Where tool-using stages work: the workspace root, the environment their commands start from (scrubbed
    before use), and the folder for transcripts (``stages/`` of the task's state folder)."""

    root: Path
    environ: Mapping[str, str]
    transcripts: Path | None = None
    max_output: int = 30_000
    confinement: Confinement = field(default_factory=Confinement)  # how the bash tool's commands are confined


class AnthropicRunner:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        workspace: WorkspaceSetup | None = None,
        recorder: Recorder | None = None,
        replayer: Replayer | None = None,
        warmer: CacheWarmer | None = None,
        batches: BatchPolicy | None = None,
    ) -> None:
        self.replayer = replayer
        # max_retries=0: this runner retries, so it can count and report every attempt. A replay needs no client.
        self._client = client
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.workspace = workspace
        self.recorder = recorder
        self.warmer = warmer or CacheWarmer()
        self.batches = batches or BatchPolicy()

    async def aclose(self) -> None:
        """Close the HTTP client (if one was made): done by the run, on the loop that used it."""
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(max_retries=0)
        return self._client

    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        meter = report if isinstance(report, Meter) else Meter(report)
        policy = BashPolicy(allow=request.bash, shell=request.shell, timeout=request.bash_timeout)
        body = request_body(request, tool_definitions(request.tools, bash=policy) if request.tools else [])
        if request.batch and self.replayer is None:
            message = await run_batched(self, request.stage_id, body, meter)
            self._record(request.stage_id, body, message)
            return self._result(request, message)
        transcript = (
            _Transcript(self.workspace.transcripts / f"{request.stage_id}.transcript.jsonl")
            if (self.workspace is not None and self.workspace.transcripts is not None and request.tools)
            else None
        )
        workspace = self._workspace(request) if request.tools else None
        turns = max(1, request.max_turns) if request.tools else 1
        if transcript is not None:
            transcript.start(request)
        for turn in range(1, turns + 1):
            message = await self._exchange(request.stage_id, body, meter)
            if transcript is not None:
                transcript.write(turn, "assistant", _dump(message.content), message.stop_reason, message.usage)
            calls = [block for block in message.content if block.type == "tool_use"]
            if not calls or workspace is None or message.stop_reason in ("max_tokens", "refusal"):
                return self._result(request, message)
            if turn == turns:
                break  # no turn is left to show the model what these calls would do: don't make them
            results = []
            for call in calls:
                started, clock = time.time(), time.monotonic()
                if call.name not in request.tools:
                    text_reply, is_error = f"there is no tool {call.name!r} in this stage", True
                else:
                    reply = await call_tool(workspace, call.name, call.input)
                    text_reply, is_error = reply.text, reply.is_error
                if meter.tool is not None:
                    meter.tool(call.name, started, time.monotonic() - clock, text_reply[:200] if is_error else None)
                results.append(
                    {"type": "tool_result", "tool_use_id": call.id, "content": text_reply, "is_error": is_error}
                )
            if transcript is not None:
                transcript.write(turn, "user", results)
            body["messages"] = [
                *body["messages"],
                {"role": "assistant", "content": _dump(message.content)},
                {"role": "user", "content": results},
            ]
        raise StageFailure(
            f"the model was still calling tools after max_turns ({turns}) turns; raise max_turns for the agent "
            "(or defaults.max_turns) if the work needs more"
        )

    @staticmethod
    def _result(request: StageRequest, message: Any) -> StageResult:
        """The stage's reply: its text (for a structured reply, the JSON the contract check reads)."""
        if message.stop_reason == "max_tokens":
            raise StageFailure(
                f"the reply was cut off at max_tokens ({request.max_tokens}); raise defaults.max_tokens in the workflow"
            )
        if message.stop_reason == "refusal":
            raise StageFailure("the model declined to answer (stop_reason: refusal)")
        text = "".join(block.text for block in message.content if block.type == "text")
        return StageResult(output=text, stop_reason=message.stop_reason)

    def _workspace(self, request: StageRequest) -> Workspace:
        if self.workspace is None:
            raise StageFailure("this stage has tools, but the runner was given no workspace to run them in")
        policy = BashPolicy(allow=request.bash, shell=request.shell, timeout=request.bash_timeout)
        setup = self.workspace
        sandbox = setup.confinement.for_stage(setup.root.resolve(), request.writes, request.network)
        root = setup.root.resolve()
        protected = tuple(p.relative_to(root).as_posix() for p in setup.confinement.protected if p.is_relative_to(root))
        return Workspace(
            setup.root,
            bash=policy,
            environ=setup.environ,
            max_output=setup.max_output,
            sandbox=sandbox,
            protected=protected,
        )

    def _record(self, stage: str, body: dict[str, Any], message: Any) -> None:
        if self.recorder is not None:
            self.recorder.record(stage, body, message.model_dump(mode="json", exclude_none=True))

    async def _exchange(self, stage: str, body: dict[str, Any], meter: Meter) -> Any:
        """One model turn: from the recording when replaying, else a request retried as the policy says."""
        if self.replayer is not None:
            started = time.time()
            reply = self.replayer.reply(stage, body)
            message = anthropic.types.Message.model_validate(reply)
            meter(AttemptRecord(1, started, 0.0, _usage(message.usage), request_id="replay"))
            return message
        key = prefix_key(body)
        cacheable = _prefix_tokens(body) >= facts_for(body["model"]).cache_min_tokens
        for number in range(1, self.retry.max_attempts + 1):
            if meter.reserve is not None:
                await meter.reserve(await self.count_tokens(body), body["max_tokens"], False)
            turn = await self.warmer.before(key, cacheable)
            try:
                message = await self._attempt(number, body, meter, turn)
            except _Retry as retry:
                turn.failed()
                await self.sleep(retry.delay)
                continue
            except BaseException:
                turn.failed()
                raise
            self._record(stage, body, message)
            return message
        raise StageFailure("no attempt was made (max_attempts is 0)")

    async def count_tokens(self, body: Mapping[str, Any]) -> int:
        """The input tokens of ``body`` as the token-counting endpoint counts them (free, and at least what is
        billed); if it can't be reached, an upper bound from the request's size."""
        counted = await _count(self.client, body)
        if counted is None:
            return len(json.dumps(body, ensure_ascii=False).encode("utf-8")) + COUNT_MARGIN
        return counted

    async def call(self, what: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """A call other than a streamed message (the batch endpoints), retried as messages are."""
        for number in range(1, self.retry.max_attempts + 1):
            try:
                return await make()
            except anthropic.APIStatusError as exc:
                if not (_retryable(exc) and number < self.retry.max_attempts):
                    raise StageFailure(f"{what}: {_describe(exc, exc.response.headers.get('request-id'))}") from exc
                await self.sleep(self._delay(number, exc.response.headers))
            except TRANSPORT_ERRORS as exc:
                if number >= self.retry.max_attempts:
                    raise StageFailure(f"{what}: connection failed: {exc}") from exc
                await self.sleep(self._delay(number, None))
        raise StageFailure(f"{what}: no attempt was made (max_attempts is 0)")

    async def _attempt(self, number: int, arguments: dict[str, Any], report: AttemptReporter, turn: Turn) -> Any:
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
                        turn.begun()  # the prompt is cached from here on: requests waiting for it may go
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
        except (*TRANSPORT_ERRORS, *MALFORMED) as exc:
            if isinstance(exc, anthropic.APIConnectionError):
                error = f"connection failed: {exc}"
            elif isinstance(exc, MALFORMED):  # a broken chunk (a proxy, a cut): the next try may well be whole
                error = f"malformed reply: {type(exc).__name__}: {exc}"
            else:
                error = f"connection lost mid-reply: {type(exc).__name__}: {exc}"
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


async def _count(client: anthropic.AsyncAnthropic, body: Mapping[str, Any]) -> int | None:
    """The input tokens of a request body by the token-counting endpoint; None if it can't be reached."""
    try:
        counted = await client.messages.count_tokens(**{k: body[k] for k in COUNT_FIELDS if k in body})
    except COUNT_ERRORS:
        return None
    return int(counted.input_tokens)


def token_counter(parallel: int = 8) -> Callable[[Sequence[dict[str, Any]]], list[int | None]]:
    """A function that counts the input tokens of request bodies (for ``plan``), several at a time."""

    def count(bodies: Sequence[dict[str, Any]]) -> list[int | None]:
        async def all_of_them() -> list[int | None]:
            client = anthropic.AsyncAnthropic(max_retries=2)
            gate = asyncio.Semaphore(parallel)

            async def one(body: dict[str, Any]) -> int | None:
                async with gate:
                    return await _count(client, body)

            try:
                return list(await asyncio.gather(*(one(body) for body in bodies)))
            finally:
                await client.close()

        return asyncio.run(all_of_them())

    return count


def _prefix_tokens(body: Mapping[str, Any]) -> int:
    """A rough count of the tokens before the conversation (tools and system): about four characters each."""
    tools = json.dumps(body.get("tools") or [], ensure_ascii=False)
    system = "".join(block.get("text", "") for block in body.get("system") or [])
    return (len(tools) + len(system)) // 4


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
    """The API's own word first (``x-should-retry``, as the SDK honours it), else the status and error type."""
    said = exc.response.headers.get("x-should-retry")
    if said in ("true", "false"):
        return said == "true"
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


def _dump(content: Any) -> list[dict[str, Any]]:
    """Reply blocks as request blocks (what the next turn sends back)."""
    return [block.model_dump(mode="json", exclude_none=True, warnings=False) for block in content]


class _Transcript:
    """``stages/<id>.transcript.jsonl``: one line per turn, so a stage's work can be read and replayed by eye."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, request: StageRequest) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        first = {"turn": 0, "role": "user", "content": request.prompt, "tools": list(request.tools)}
        # Replaced, never written through: a link a command planted here is replaced, not followed.
        replace_file(self.path, (json.dumps(first, ensure_ascii=False) + "\n").encode("utf-8"))

    def write(self, turn: int, role: str, content: Any, stop_reason: str | None = None, usage: Any = None) -> None:
        line: dict[str, Any] = {"turn": turn, "role": role, "content": content, "time": round(time.time(), 3)}
        if stop_reason is not None:
            line["stop_reason"] = stop_reason
        if usage is not None:
            line["usage"] = dataclasses.asdict(_usage(usage))
        data = (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:  # no-follow: a link put in its place since start is refused, not written through
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise StageFailure(f"can't write the transcript {self.path.name}: {exc.strerror or exc}") from exc
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
