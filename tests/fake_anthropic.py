"""A fake of the Anthropic Messages API on 127.0.0.1, for the real SDK and real clients to talk to.

It runs a stdlib ``ThreadingHTTPServer`` in a thread on a free port. Replies are
chosen by what a request contains, never by arrival order (parallel stages arrive
in any order); every request is recorded so tests can assert what was sent.

    with FakeAnthropic() as api:
        api.reply("PLAN: 1. do it", when="Write an implementation plan")
        api.reply(status=429, error="rate_limit_error", headers={"retry-after": "0"}, times=1)
        ...  # point ANTHROPIC_BASE_URL at api.url
        assert api.requests[0].body["model"] == "claude-sonnet-5-5"

Endpoints: ``POST /v1/messages`` (JSON, or server-sent events when ``stream`` is
true), ``POST /v1/messages/count_tokens``, ``GET /v1/models``; any other request
gets ``200 {}`` (clients probe a few). With no rule matching, a reply is "ok",
or a passing verdict for a forced tool call.

Tool loops: ``script(when, turns)`` answers the k-th turn of a conversation (k = the
assistant messages it already holds, plus one) with ``turns[k-1]``: a text, a tool call
``{"name", "input"}`` or a list of them. The last turn repeats when a conversation runs
past the script (a model that never stops calling tools).

Faults of a streamed reply: ``drop_after=N`` sends its first N server-sent events
and then closes the connection mid-body (the client sees the stream cut off);
``stall=S`` pauses S seconds after the first event (``message_start``).

Run it on its own to try orchestrate against it:

    python tests/fake_anthropic.py --port 8787
    ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_API_KEY=fake orchestrate run ...
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]
DEFAULT_VERDICT = {
    "verdict": "pass",
    "summary": "Fake API: nothing was checked; this pass only means the run completed.",
    "findings": [],
    "checklist": [],
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    def text(self) -> str:
        """Every piece of text the request carries: system prompt and messages."""
        if not isinstance(self.body, dict):
            return ""
        parts: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, list):
                for item in value:
                    walk(item)
            elif isinstance(value, dict):
                for key in ("text", "content", "system"):
                    if key in value:
                        walk(value[key])

        walk(self.body.get("system"))
        walk(self.body.get("messages"))
        return "\n".join(parts)


@dataclass
class Rule:
    matches: Matcher
    text: str = "ok"
    status: int = 200
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tool_use: dict[str, Any] | list[dict[str, Any]] | None = None
    times: int | None = None
    delay: float = 0.0
    stop_reason: str | None = None
    usage: dict[str, int] = field(
        default_factory=lambda: {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    )
    drop_after: int | None = None  # streamed replies: close the connection after this many events
    stall: float = 0.0  # streamed replies: seconds to pause after the first event


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out, cancelled) is expected here, not an error to print."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FakeAnthropic:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.rules: list[Rule] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply(
        self,
        text: str = "ok",
        *,
        when: str | Matcher | None = None,
        status: int = 200,
        error: str | None = None,
        headers: dict[str, str] | None = None,
        tool_use: dict[str, Any] | list[dict[str, Any]] | None = None,
        times: int | None = None,
        delay: float = 0.0,
        usage: dict[str, int] | None = None,
        stop_reason: str | None = None,
        drop_after: int | None = None,
        stall: float = 0.0,
    ) -> None:
        """Add a reply for requests whose text contains ``when`` (or for which it returns True).

        ``delay`` seconds pass before the reply (the server is threaded: others go on meanwhile).
        A streamed reply with ``drop_after=N`` stops after its first N events (``message_start``
        is the first) with the connection closed mid-body; ``stall`` seconds pass after its first event.
        """
        if when is None:
            matcher: Matcher = lambda body: True  # noqa: E731
        elif isinstance(when, str):
            needle = when
            matcher = lambda body: needle in Request("POST", "", {}, body).text()  # noqa: E731
        else:
            matcher = when
        rule = Rule(matcher, text, status, error, headers or {}, tool_use, times, delay, stop_reason)
        rule.drop_after, rule.stall = drop_after, stall
        if usage is not None:
            rule.usage = {**rule.usage, **usage}
        self.rules.append(rule)

    def script(self, when: str, turns: list[Any], usage: dict[str, int] | None = None) -> None:
        """Reply to turn k of conversations containing ``when`` with ``turns[k-1]`` (see the module docstring)."""
        for number, turn in enumerate(turns, 1):
            last = number == len(turns)

            def matcher(body: dict[str, Any], number: int = number, last: bool = last) -> bool:
                if when not in Request("POST", "", {}, body).text():
                    return False
                done = sum(1 for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "assistant")
                return done + 1 == number or (last and done + 1 > number)

            if isinstance(turn, str):
                self.reply(turn, when=matcher, usage=usage)
            else:
                self.reply(when=matcher, tool_use=turn, usage=usage)

    def messages(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.path.split("?")[0].endswith("/v1/messages")]

    def _choose(self, body: dict[str, Any]) -> Rule:
        with self._lock:
            for rule in self.rules:
                if rule.times is not None and rule.times <= 0:
                    continue
                if rule.matches(body):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        forced = body.get("tool_choice") or {}
        if forced.get("type") == "tool":  # a forced tool call (the audit verdict): answer with a pass
            return Rule(lambda body: True, tool_use={"name": forced.get("name"), "input": DEFAULT_VERDICT})
        return Rule(lambda body: True)


def _handler_for(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw.decode("utf-8", "replace")

        def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", "req_fake")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _handle(self) -> None:
            body = self._body() if self.command in ("POST", "PUT", "PATCH") else None
            path = self.path.split("?", 1)[0]
            with fake._lock:
                fake.requests.append(Request(self.command, self.path, dict(self.headers.items()), body))
            if self.command == "POST" and path.endswith("/v1/messages/count_tokens"):
                return self._json({"input_tokens": 42})
            if self.command == "POST" and path.endswith("/v1/messages") and isinstance(body, dict):
                return self._message(body)
            if path.rstrip("/").endswith("/v1/models"):
                return self._json({"data": [], "has_more": False, "first_id": None, "last_id": None})
            return self._json({})

        def _message(self, body: dict[str, Any]) -> None:
            rule = fake._choose(body)
            if rule.delay:
                time.sleep(rule.delay)
            if rule.status != 200:
                error = {"type": "error", "error": {"type": rule.error or "api_error", "message": rule.text}}
                return self._json(error, rule.status, rule.headers)
            model = str(body.get("model", "claude-fake"))
            if rule.tool_use is not None:
                calls = rule.tool_use if isinstance(rule.tool_use, list) else [rule.tool_use]
                blocks = [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], **call} for call in calls]
                stop = "tool_use"
            else:
                blocks = [{"type": "text", "text": rule.text}]
                stop = rule.stop_reason or "end_turn"
            message = {
                "id": "msg_" + uuid.uuid4().hex[:24],
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": dict(rule.usage),
            }
            if not body.get("stream"):
                return self._json(message, headers=rule.headers)
            self._stream(message, blocks, rule)

        def _stream(self, message: dict[str, Any], blocks: list[dict[str, Any]], rule: Rule) -> None:
            start = {**message, "content": [], "stop_reason": None, "usage": {**rule.usage, "output_tokens": 1}}
            events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
            for index, block in enumerate(blocks):
                if block["type"] == "tool_use":
                    opening = {**block, "input": {}}
                    delta = {"type": "input_json_delta", "partial_json": json.dumps(block.get("input", {}))}
                else:
                    opening = {"type": "text", "text": ""}
                    delta = {"type": "text_delta", "text": block["text"]}
                events += [
                    ("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}),
                    ("ping", {"type": "ping"}),
                    ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
                    ("content_block_stop", {"type": "content_block_stop", "index": index}),
                ]
            events += [
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                        "usage": {"output_tokens": rule.usage["output_tokens"]},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
            chunks = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Content-Length", str(sum(len(chunk) for chunk in chunks)))
            self.send_header("request-id", "req_fake")
            self.end_headers()
            if not rule.stall and rule.drop_after is None:
                self.wfile.write(b"".join(chunks))
                return
            sent = chunks if rule.drop_after is None else chunks[: rule.drop_after]
            for number, chunk in enumerate(sent, 1):
                self.wfile.write(chunk)
                self.wfile.flush()
                if number == 1 and rule.stall:
                    time.sleep(rule.stall)
            if rule.drop_after is not None:  # cut the body short: the promised Content-Length never arrives
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="A fake of the Anthropic Messages API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--text", default="ok", help="the reply to every request")
    args = parser.parse_args()
    fake = FakeAnthropic(port=args.port)
    fake.reply(args.text, when=lambda body: not body.get("tool_choice"))
    with fake:
        print(f"fake Anthropic API on {fake.url} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
