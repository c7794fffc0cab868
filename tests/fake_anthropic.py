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
true), ``POST /v1/messages/count_tokens``, the Message Batches API (create, retrieve,
``/results``, ``/cancel`` under ``/v1/messages/batches``), ``GET /v1/models``; any
other request gets ``200 {}`` (clients probe a few).

The contract: what each model accepts comes from ``orchestrator.models`` (``facts_for``),
the one home of the model facts, so the fake and the request builder change together;
what the API does with it is implemented here, after Anthropic's docs
(platform.claude.com/docs/en: api/errors, build-with-claude/thinking-troubleshooting,
prompt-caching, structured-outputs, batch-processing, token-counting), with the API's
error messages (the constants below say which are documented, observed or made up).
Refused, on messages, count_tokens and batched requests alike: an unknown or retired
model (404); ``max_tokens`` above the model's output limit; a ``thinking.type`` or
``output_config.effort`` it does not take, or thinking off above its allowed effort;
a forced ``tool_choice`` it refuses, or with manual thinking; sampling parameters and
assistant prefills where refused; ``output_config.format`` without structured outputs,
or with a schema outside what they compile; more than 4 cache breakpoints; thinking
blocks of the latest assistant turn that differ from the ones issued (their signatures
are checkable), or a tool-use turn that dropped them while thinking is on.

Replies: a matching rule's text or tool call wins; with none, a forced tool call or an
output format gets a conforming value (``DEFAULT_VERDICT`` for a verdict schema), else
"ok". A thinking reply starts with an empty thinking block (display "omitted") and a
signature; a forced tool call skips it (as Haiku 5.5 does).

Tokens and caching: ceil(len/4) per text (tools, tool calls and results on their JSON),
plus ``TOOLS_OVERHEAD`` with tools and ``FORMAT_OVERHEAD`` with an output format.
Breakpoints (``cache_control`` blocks, and the top-level automatic one on the last
block) write the prefix up to them when it reaches the model's minimum; reads look back
20 blocks from each breakpoint and take the longest hit; an entry is readable once the
reply that wrote it has begun (``message_start``, or the whole non-streamed reply) and
expires 5 minutes after its last use, on ``fake.clock`` (``time.monotonic``; a test may
replace it). Usage reports that, unless a rule gives ``usage=`` (reported as given).
Each ``Request`` records ``usage``, ``prefix_tokens`` (tools and system),
``conversation_tokens`` (messages), ``cache_read``/``cache_write`` (the simulation's),
``batch`` and ``status``.

Batches: ``fake.batches`` (id -> ``Batch``) holds them. A batch ends ``fake.batch_delay``
seconds (default 0) after its creation: the next look at it answers its requests like
non-streamed ones, each recorded with ``batch=True`` (path
``/v1/messages/batches/{id}/requests/{custom_id}``, which ``messages()`` leaves out);
a request the contract refuses is an ``errored`` result.

Tool loops: ``script(when, turns)`` answers the k-th turn of a conversation (k = the
assistant messages it already holds, plus one) with ``turns[k-1]``: a text, a tool call
``{"name", "input"}`` or a list of them. The last turn repeats when a conversation runs
past the script (a model that never stops calling tools).

Faults: ``delay=S`` waits S seconds before a reply (or a rule's error, which carries its
``headers``, ``x-should-retry`` included); a streamed reply with ``drop_after=N`` sends
its first N server-sent events and then closes the connection mid-body; ``stall=S``
pauses S seconds after its first event (``message_start``).

Run it on its own to try orchestrate against it:

    python tests/fake_anthropic.py --port 8787
    ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_API_KEY=fake orchestrate run ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

try:
    from orchestrator.models import EFFORTS, ModelFacts, facts_for
except ImportError:  # run as a script from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from orchestrator.models import EFFORTS, ModelFacts, facts_for

Matcher = Callable[[dict[str, Any]], bool]
DEFAULT_VERDICT = {
    "verdict": "pass",
    "summary": "Fake API: nothing was checked; this pass only means the run completed.",
    "findings": [],
    "checklist": [],
}
DEFAULT_USAGE = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
REQUEST_ID = "req_fake"
TOOLS_OVERHEAD = 300  # tokens of the tool-use system prompt the API adds to a request with tools
FORMAT_OVERHEAD = 100  # tokens of the system prompt that explains an output_config.format
LOOKBACK = 20  # positions a cache read checks per breakpoint, the breakpoint included
MAX_BREAKPOINTS = 4
TTLS = {"5m": 300.0, "1h": 3600.0}
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
THINKING = ("thinking", "redacted_thinking")

# Documented messages (api/errors, thinking-troubleshooting), verbatim.
ADAPTIVE_HINT = 'Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
THINKING_REFUSED = {
    "enabled": f'"thinking.type.enabled" is not supported for this model. {ADAPTIVE_HINT}',
    "disabled": f'"thinking.type.disabled" is not supported for this model. {ADAPTIVE_HINT}',
    "disabled_preview": '"thinking.type.disabled" is not supported for this model. Thinking defaults to adaptive mode '
    'when not specified; use "thinking.type.enabled" with "budget_tokens" for extended thinking.',
    "disabled_between_tools": 'To turn thinking off on this model, send "thinking": {"type": "between_tools"} instead '
    'of {"type": "disabled"}. The model does not think before responding. The short updates it writes between '
    "tool calls come back as thinking blocks.",
    "between_tools": '"thinking.type.between_tools" is not supported for this model.',
    "adaptive": "adaptive thinking is not supported on this model",
}
OFF_EFFORT = (
    "output_config.effort '{effort}' is not supported when thinking is disabled on this model. "
    "Use effort '{ceiling}' or below, or enable thinking."
)
FORCED_REFUSED = 'tool_choice: type "tool" and "any" are not supported for this model.'
PREFILL_REFUSED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)
THINKING_MODIFIED = (
    "`thinking` or `redacted_thinking` blocks in the latest assistant message cannot be modified. "
    "These blocks must remain as they were in the original response."
)
RECURSIVE_SCHEMA = "Too many recursive definitions in schema"
# Observed API messages (third-party reports; the docs don't quote them).
FORCED_WITH_THINKING = "Thinking may not be enabled when tool_choice forces tool use."
SAMPLING_REFUSED = "`{name}` is deprecated for this model."
TOO_MANY_BREAKPOINTS = "A maximum of 4 blocks with cache_control may be provided. Found {found}."
THINKING_DROPPED = (
    "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` "
    "is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of "
    "`tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid "
    "this requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)
SCHEMA_OPEN = "For 'object' type, 'additionalProperties' must be explicitly set to false"
SCHEMA_OPEN_VALUE = (
    "For 'object' type, 'additionalProperties: {value}' is not supported. Please set 'additionalProperties' to false"
)
SCHEMA_KEYWORD = "For '{kind}' type, property '{keyword}' is not supported"
SCHEMA_ANY_KEYWORD = "Property '{keyword}' is not supported"
SCHEMA_MIN_ITEMS = "For 'array' type, 'minItems' values other than 0 or 1 are not supported"
# Undocumented: the API's text for these is unknown; these say what is wrong.
EFFORT_REFUSED = "output_config.effort: '{effort}' is not supported by {model}; it takes {levels}."
FORMAT_REFUSED = "output_config.format: structured outputs are not supported by {model}."
SCHEMA_FORMAT = "For 'string' type, format '{value}' is not supported"
SCHEMA_EXTERNAL_REF = "External $ref '{ref}' is not supported"
BATCH_STREAM = "stream: streaming is not supported for requests in a Message Batch."
BATCH_MAX_TOKENS = "max_tokens: requests in a Message Batch need max_tokens of at least 1."

# Structured outputs refuse these keywords (constraints the grammar can't enforce, and conditionals).
_BOUNDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength"}
_SIZES = {"maxItems", "uniqueItems", "minProperties", "maxProperties", "patternProperties"}
_LOGIC = {"not", "if", "then", "else", "dependentRequired", "dependentSchemas", "oneOf"}
_UNSUPPORTED_KEYWORDS = frozenset(_BOUNDS | _SIZES | _LOGIC)
_STRING_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "date": "2026-01-01",
    "duration": "P1D",
    "email": "fake@example.com",
    "hostname": "example.com",
    "uri": "https://example.com/",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    usage: dict[str, Any] | None = None  # the usage reported (None: no model reply, e.g. an error or count_tokens)
    prefix_tokens: int = 0  # tools + system (with the API's overheads)
    conversation_tokens: int = 0  # messages
    cache_read: int = 0  # the prompt cache simulation's read and write, even when a rule reports other usage
    cache_write: int = 0
    batch: bool = False  # a request of a Message Batch (path /v1/messages/batches/{id}/requests/{custom_id})
    status: int | None = None

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
    usage: dict[str, int] | None = None  # reported as given (over DEFAULT_USAGE); None: computed
    drop_after: int | None = None  # streamed replies: close the connection after this many events
    garble: int | None = None  # streamed replies: the event at this index carries data that is not JSON
    stall: float = 0.0  # streamed replies: seconds to pause after the first event


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.kind, "message": self.message}, "request_id": REQUEST_ID}


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


# --- tokens -------------------------------------------------------------------------------------------------


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _bare(block: Any) -> Any:
    """A block without its cache_control: what is counted and cached."""
    return {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block


def block_tokens(block: Any) -> int:
    if isinstance(block, str):
        return tokens(block)
    if not isinstance(block, dict):
        return tokens(_canon(block))
    kind = block.get("type")
    if kind == "text":
        return tokens(str(block.get("text", "")))
    if kind in THINKING:  # earlier turns' thinking is not counted; the fake's own is empty
        return 0
    if kind == "tool_use":
        return tokens(_canon({"name": block.get("name"), "input": block.get("input")}))
    if kind == "tool_result":
        return tokens(_canon(block.get("content", "")))
    return tokens(_canon(_bare(block)))


@dataclass(frozen=True)
class Block:
    """One cacheable block of a prompt, in cache order (tools, system, messages)."""

    where: str
    tokens: int
    key: str  # what the cache hashes
    ttl: float | None  # seconds, when the block carries cache_control
    eligible: bool  # may carry the automatic breakpoint (not thinking, not an empty text)


def _ttl(block: Any) -> float | None:
    if not isinstance(block, dict):
        return None
    control = block.get("cache_control")
    if isinstance(control, dict):
        return TTLS.get(str(control.get("ttl", "5m")), TTLS["5m"])
    if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        return next((t for t in map(_ttl, block["content"]) if t is not None), None)
    return None


def prompt_blocks(body: dict[str, Any]) -> list[Block]:
    out = [Block("tools", tokens(_canon(_bare(t))), _canon(_bare(t)), _ttl(t), True) for t in body.get("tools") or []]
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or []:
        out.append(Block("system", block_tokens(block), _canon(_bare(block)), _ttl(block), block != ""))
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate([content] if isinstance(content, str) else content or []):
            kind = block.get("type") if isinstance(block, dict) else "text"
            empty = block == "" or (kind == "text" and isinstance(block, dict) and not block.get("text"))
            key = _canon([message.get("role"), j == 0, _bare(block)])
            out.append(Block("messages", block_tokens(block), key, _ttl(block), kind not in THINKING and not empty))
    return out


def overhead(body: dict[str, Any]) -> int:
    return (TOOLS_OVERHEAD if body.get("tools") else 0) + (FORMAT_OVERHEAD if _format(body) else 0)


def _format(body: dict[str, Any]) -> Any:
    config = body.get("output_config")
    return config.get("format") if isinstance(config, dict) else None


def _thinking_type(body: dict[str, Any]) -> str | None:
    thinking = body.get("thinking")
    return thinking.get("type") if isinstance(thinking, dict) else None


def thinking_active(body: dict[str, Any], facts: ModelFacts) -> bool:
    kind = _thinking_type(body)
    return facts.thinking_default == "adaptive" if kind is None else kind in ("adaptive", "enabled")


def sign(thinking: str, nonce: str | None = None) -> str:
    """An opaque signature for a thinking block, that any fake can check (a restarted one too)."""
    nonce = nonce or uuid.uuid4().hex[:16]
    return f"sig_{nonce}{hashlib.sha256(f'fake-anthropic:{nonce}:{thinking}'.encode()).hexdigest()[:32]}"


def signed(block: dict[str, Any]) -> bool:
    signature = block.get("signature")
    if block.get("type") != "thinking" or not isinstance(signature, str) or len(signature) != 52:
        return False
    return sign(str(block.get("thinking")), signature[4:20]) == signature


def _forced(body: dict[str, Any]) -> bool:
    choice = body.get("tool_choice")
    return isinstance(choice, dict) and choice.get("type") in ("any", "tool")


# --- the contract ---------------------------------------------------------------------------------------------


def check_contract(body: Any, *, counting: bool = False) -> ModelFacts:
    """The facts of the request's model, or the ApiError the API answers the request with."""
    if not isinstance(body, dict):
        raise invalid("The request body is not a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required")
    facts = facts_for(model)
    if not facts.known or facts.retired:
        raise ApiError(404, "not_found_error", f"model: {model}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise invalid("messages: at least one message is required")
    if not counting:
        _check_max_tokens(body, facts)
    _check_thinking(body, facts)
    _check_effort(body, facts)
    _check_tool_choice(body, facts)
    _check_sampling(body, facts)
    if messages[-1].get("role") == "assistant" and not facts.prefill:
        raise invalid(PREFILL_REFUSED)
    _check_format(body, facts)
    blocks = prompt_blocks(body)
    found = sum(block.ttl is not None for block in blocks) + (1 if isinstance(body.get("cache_control"), dict) else 0)
    if found > MAX_BREAKPOINTS:
        raise invalid(TOO_MANY_BREAKPOINTS.format(found=found))
    return facts


def _check_max_tokens(body: dict[str, Any], facts: ModelFacts) -> None:
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise invalid("max_tokens: Field required")
    if facts.max_output is not None and limit > facts.max_output:
        raise invalid(
            f"max_tokens: {limit} > {facts.max_output}, which is the maximum allowed number of output tokens "
            f"for {body['model']}"
        )


def _check_thinking(body: dict[str, Any], facts: ModelFacts) -> None:
    kind = _thinking_type(body)
    if kind is None:
        return
    if kind not in facts.thinking_types:
        if kind == "disabled" and facts.thinking_off == "between_tools":
            raise invalid(THINKING_REFUSED["disabled_between_tools"])
        if kind == "disabled" and "enabled" in facts.thinking_types:
            raise invalid(THINKING_REFUSED["disabled_preview"])
        raise invalid(THINKING_REFUSED.get(kind, f'"thinking.type.{kind}" is not supported for this model.'))
    effort = _effort(body)
    ceiling = facts.off_max_effort
    if kind == facts.thinking_off and ceiling and effort in EFFORTS and EFFORTS.index(effort) > EFFORTS.index(ceiling):
        raise invalid(OFF_EFFORT.format(effort=effort, ceiling=facts.off_max_effort))


def _effort(body: dict[str, Any]) -> Any:
    config = body.get("output_config")
    return config.get("effort") if isinstance(config, dict) else None


def _check_effort(body: dict[str, Any], facts: ModelFacts) -> None:
    effort = _effort(body)
    if effort is not None and effort not in facts.efforts:
        levels = ", ".join(facts.efforts) or "no effort setting"
        raise invalid(EFFORT_REFUSED.format(effort=effort, model=body["model"], levels=levels))


def _check_tool_choice(body: dict[str, Any], facts: ModelFacts) -> None:
    if not _forced(body):
        return
    if not facts.forced_tool_choice:
        raise invalid(FORCED_REFUSED)
    if _thinking_type(body) == "enabled":
        raise invalid(FORCED_WITH_THINKING)


def _check_sampling(body: dict[str, Any], facts: ModelFacts) -> None:
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None and not facts.sampling:
            raise invalid(SAMPLING_REFUSED.format(name=name))


def _check_format(body: dict[str, Any], facts: ModelFacts) -> None:
    form = _format(body)
    if form is None:
        return
    if not facts.structured_outputs:
        raise invalid(FORMAT_REFUSED.format(model=body["model"]))
    if not isinstance(form, dict) or form.get("type") != "json_schema" or not isinstance(form.get("schema"), dict):
        raise invalid("output_config.format: expected {'type': 'json_schema', 'schema': {...}}")
    problem = schema_problem(form["schema"])
    if problem:
        raise invalid(problem if problem == RECURSIVE_SCHEMA else f"output_config.format.schema: {problem}")


def schema_problem(schema: dict[str, Any]) -> str | None:
    """What structured outputs refuse in ``schema`` (the docs' supported subset), or None."""
    if _recursive(schema):
        return RECURSIVE_SCHEMA
    return _node_problem(schema)


def _node_problem(node: Any) -> str | None:
    if isinstance(node, list):
        return next((p for p in map(_node_problem, node) if p), None)
    if not isinstance(node, dict):
        return None
    kind = node.get("type")
    kind_name = kind if isinstance(kind, str) else "|".join(map(str, kind)) if isinstance(kind, list) else ""
    for keyword in node:
        if keyword in _UNSUPPORTED_KEYWORDS and kind_name:
            return SCHEMA_KEYWORD.format(kind=kind_name, keyword=keyword)
        if keyword in _UNSUPPORTED_KEYWORDS:
            return SCHEMA_ANY_KEYWORD.format(keyword=keyword)
    if node.get("minItems", 0) not in (0, 1):
        return SCHEMA_MIN_ITEMS
    if "format" in node and node["format"] not in _STRING_FORMATS:
        return SCHEMA_FORMAT.format(value=node["format"])
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        return SCHEMA_EXTERNAL_REF.format(ref=ref)
    is_object = (
        kind == "object" or (isinstance(kind, list) and "object" in kind) or (kind is None and "properties" in node)
    )
    if is_object and "additionalProperties" not in node:
        return SCHEMA_OPEN
    if "additionalProperties" in node and node["additionalProperties"] is not False:
        return SCHEMA_OPEN_VALUE.format(value=json.dumps(node["additionalProperties"]))
    children: list[Any] = [node.get(key) for key in ("items", "prefixItems", "anyOf", "allOf")]
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), dict):
            children.extend(node[key].values())
    return next((p for p in map(_node_problem, children) if p), None)


def _recursive(schema: dict[str, Any]) -> bool:
    """Whether a definition (or the root, ``#``) refers to itself, directly or through others."""
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}

    def refs(node: Any, top: bool = False) -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
                found.add("#" if node["$ref"] == "#" else node["$ref"].rsplit("/", 1)[-1])
            for key, value in node.items():
                if not (top and key in ("$defs", "definitions")):
                    found |= refs(value)
        elif isinstance(node, list):
            for value in node:
                found |= refs(value)
        return found

    edges = {"#": refs(schema, top=True), **{name: refs(body) for name, body in defs.items()}}
    done: set[str] = set()

    def cycle(name: str, path: frozenset[str]) -> bool:
        if name in path:
            return True
        if name in done:
            return False
        if any(cycle(nxt, path | {name}) for nxt in edges.get(name, ())):
            return True
        done.add(name)
        return False

    return cycle("#", frozenset())


# --- prompt caching ---------------------------------------------------------------------------------------------


@dataclass
class CacheOutcome:
    read: int = 0  # tokens up to the longest hit
    write: int = 0  # tokens written beyond it, up to the last breakpoint written
    write_1h: int = 0  # the part of ``write`` with a 1-hour lifetime
    writes: list[tuple[str, float]] = field(default_factory=list)  # (key, ttl): readable once the reply begins


class PromptCache:
    """Cache entries keyed by model and exact prefix (with the output format, and tool_choice and thinking
    for message positions), readable once committed, expiring ``ttl`` seconds after their last use."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.entries: dict[str, tuple[float, float]] = {}  # key -> (expires at, ttl)
        self._lock = threading.Lock()

    def lookup(self, body: dict[str, Any], facts: ModelFacts, blocks: list[Block]) -> CacheOutcome:
        points = breakpoints(body, blocks)
        if not points:
            return CacheOutcome()
        keys = prefix_keys(body, facts, blocks)
        upto, total = [], overhead(body)
        for block in blocks:
            total += block.tokens
            upto.append(total)
        with self._lock:
            now, hit = self.clock(), -1
            for index, _ in points:
                for pos in range(index, max(index - LOOKBACK, -1), -1):
                    entry = self.entries.get(keys[pos])
                    if entry is not None and entry[0] > now:
                        hit = max(hit, pos)
                        break
            if hit >= 0:
                ttl = self.entries[keys[hit]][1]
                self.entries[keys[hit]] = (now + ttl, ttl)
        written = [(i, ttl) for i, ttl in points if i > hit and upto[i] >= facts.cache_min_tokens]
        read = upto[hit] if hit >= 0 else 0
        if not written:
            return CacheOutcome(read)
        last_1h = max((i for i, ttl in written if ttl > TTLS["5m"]), default=None)
        write_1h = upto[last_1h] - read if last_1h is not None else 0
        return CacheOutcome(read, upto[written[-1][0]] - read, write_1h, [(keys[i], ttl) for i, ttl in written])

    def commit(self, writes: list[tuple[str, float]]) -> None:
        """The response that wrote these has begun: they can be read from now on."""
        with self._lock:
            now = self.clock()
            for key, ttl in writes:
                self.entries[key] = (now + ttl, ttl)


def breakpoints(body: dict[str, Any], blocks: list[Block]) -> list[tuple[int, float]]:
    """(block index, ttl) of each breakpoint: blocks with cache_control, and the automatic one of a top-level
    cache_control on the last block that can carry it."""
    points = {i: block.ttl for i, block in enumerate(blocks) if block.ttl is not None}
    control = body.get("cache_control")
    if isinstance(control, dict):
        last = next((i for i in range(len(blocks) - 1, -1, -1) if blocks[i].eligible), None)
        if last is not None and last not in points:
            points[last] = TTLS.get(str(control.get("ttl", "5m")), TTLS["5m"])
    return sorted(points.items())


def prefix_keys(body: dict[str, Any], facts: ModelFacts, blocks: list[Block]) -> list[str]:
    """The cache key of the prefix ending at each block."""
    digest = hashlib.sha256(_canon([facts.id, _format(body)]).encode())
    keys, settings_mixed = [], False
    for block in blocks:
        if block.where == "messages" and not settings_mixed:  # tool_choice and thinking change message positions
            digest.update(_canon([body.get("tool_choice"), body.get("thinking")]).encode())
            settings_mixed = True
        digest.update(block.key.encode() + b"\x00")
        keys.append(digest.copy().hexdigest())
    return keys


# --- replies ------------------------------------------------------------------------------------------------------


def conforming(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A small instance of ``schema``."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 8:
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    if isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        target = root if ref == "#" else (root.get("$defs") or root.get("definitions") or {}).get(ref.rsplit("/")[-1])
        return conforming(target, root, depth + 1)
    if schema.get("anyOf"):
        return conforming(schema["anyOf"][0], root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = conforming(part, root, depth + 1)
            merged.update(value if isinstance(value, dict) else {})
        return merged
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: conforming(sub, root, depth + 1) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [conforming(schema.get("items"), root, depth + 1)] if schema.get("minItems") == 1 else []
    samples = {"string": _STRING_FORMATS.get(schema.get("format", ""), "text"), "integer": 0, "number": 0}
    return samples.get(kind, False if kind == "boolean" else None)


def verdict_or_conforming(schema: Any) -> Any:
    """A passing verdict for a verdict schema (only the fields it has), else a small value that fits."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return DEFAULT_VERDICT
    if "verdict" in properties:
        return {key: value for key, value in DEFAULT_VERDICT.items() if key in properties}
    return conforming(schema)


def _off_format(body: dict[str, Any], content: list[Any], stop: str) -> str | None:
    """What is wrong with a reply's text under the request's output format, which the API's grammar enforces
    (a reply cut off at max_tokens, or a refusal, may break it; a tool-calling turn has no final text)."""
    form = _format(body)
    if not isinstance(form, dict) or stop in ("max_tokens", "refusal", "tool_use"):
        return None
    text = "".join(block.get("text", "") for block in content if block.get("type") == "text")
    try:
        value = json.loads(text)
    except ValueError:
        return "is not JSON, which a reply held to output_config.format always is"
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(form.get("schema") or {}).iter_errors(value), key=str)
    if errors:
        return f"does not fit output_config.format ({errors[0].message})"
    return None


@dataclass
class Answer:
    """What a model request is answered with: a message (its cache writes committed once it begins) or an error."""

    rule: Rule | None
    message: dict[str, Any] | None = None
    error: ApiError | None = None
    writes: list[tuple[str, float]] = field(default_factory=list)


# --- batches ------------------------------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Batch:
    id: str
    requests: list[dict[str, Any]]
    headers: dict[str, str]
    created: float  # the fake's clock
    created_at: datetime
    status: str = "in_progress"  # in_progress | canceling | ended
    results: list[dict[str, Any]] = field(default_factory=list)
    cancel_initiated_at: str | None = None
    ended_at: str | None = None

    def view(self, base_url: str) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for result in self.results:
            counts[result["result"]["type"]] += 1
        if self.status != "ended":
            counts["processing"] = len(self.requests)
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": counts,
            "created_at": _timestamp(self.created_at),
            "expires_at": _timestamp(self.created_at + timedelta(hours=24)),
            "ended_at": self.ended_at,
            "cancel_initiated_at": self.cancel_initiated_at,
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if self.status == "ended" else None,
        }


def check_batch(body: Any) -> list[dict[str, Any]]:
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:  # undocumented text
        raise invalid("requests: List should have at least 1 item after validation, not 0")
    seen: set[str] = set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
            raise invalid(f"requests.{i}.params: Field required")
        custom = item.get("custom_id")
        if not isinstance(custom, str) or not CUSTOM_ID.match(custom):
            raise invalid(f"requests.{i}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'")
        if custom in seen:  # undocumented text
            raise invalid(f"requests.{i}.custom_id: {custom!r} is used by another request; custom_id must be unique.")
        seen.add(custom)
    return requests


# --- the fake -------------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out, cancelled) is expected here, not an error to print."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FakeAnthropic:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.rules: list[Rule] = []
        self.batches: dict[str, Batch] = {}
        self.batch_delay = 0.0  # seconds a new batch stays in progress
        self.clock: Callable[[], float] = time.monotonic  # the cache's and batches' clock; tests may replace it
        self.cache = PromptCache(lambda: self.clock())
        self._thoughtless: set[str] = set()  # tool_use ids issued without a thinking block before them
        self._lock = threading.Lock()
        self._batch_lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

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
        garble: int | None = None,
    ) -> None:
        """Add a reply for requests whose text contains ``when`` (or for which it returns True).

        ``delay`` seconds pass before the reply (the server is threaded: others go on meanwhile).
        A streamed reply with ``drop_after=N`` stops after its first N events (``message_start``
        is the first) with the connection closed mid-body; ``stall`` seconds pass after its first event;
        ``garble=N`` sends event N (from 0) with data that is not JSON, as a broken proxy might.
        ``headers`` go on the reply, errors included (``x-should-retry``, ``retry-after``).
        """
        if when is None:
            matcher: Matcher = lambda body: True  # noqa: E731
        elif isinstance(when, str):
            needle = when
            matcher = lambda body: needle in Request("POST", "", {}, body).text()  # noqa: E731
        else:
            matcher = when
        rule = Rule(matcher, text, status, error, headers or {}, tool_use, times, delay, stop_reason, usage)
        rule.drop_after, rule.stall, rule.garble = drop_after, stall, garble
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

    def _choose(self, body: dict[str, Any]) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.times is not None and rule.times <= 0:
                    continue
                if rule.matches(body):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def _check_thinking_blocks(self, body: dict[str, Any], facts: ModelFacts) -> None:
        """The latest assistant turn's thinking blocks must be as issued, and lead a tool-use turn while thinking."""
        messages = body["messages"]
        i = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"), None)
        content = messages[i].get("content") if i is not None else None
        if i is None or not isinstance(content, list):
            return
        for j, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") in THINKING and not signed(block):
                raise invalid(f"messages.{i}.content.{j}: {THINKING_MODIFIED}")
        calls = {str(b.get("id")) for b in content if isinstance(b, dict) and b.get("type") == "tool_use"}
        first = content[0].get("type") if content and isinstance(content[0], dict) else "text"
        with self._lock:
            issued_without = bool(calls) and calls <= self._thoughtless
        if calls and first not in THINKING and thinking_active(body, facts) and not issued_without:
            raise invalid(THINKING_DROPPED.format(i=i, found=first))

    def check(self, body: Any, *, counting: bool = False) -> ModelFacts:
        facts = check_contract(body, counting=counting)
        self._check_thinking_blocks(body, facts)
        return facts

    def answer(self, body: Any, record: Request, *, batch: bool = False) -> Answer:
        """Check a model request against the contract (raising ApiError), then reply as its rule or the defaults say."""
        facts = self.check(body)
        blocks = prompt_blocks(body)
        record.prefix_tokens = overhead(body) + sum(b.tokens for b in blocks if b.where != "messages")
        record.conversation_tokens = sum(b.tokens for b in blocks if b.where == "messages")
        rule = self._choose(body)
        if rule is not None and rule.status != 200:
            return Answer(rule, error=ApiError(rule.status, rule.error or "api_error", rule.text, rule.headers))
        content, stop = self._content(body, facts, rule)
        problem = _off_format(body, content, stop)
        if problem is not None:  # a test scripted what the API can't return: say so instead of passing it on
            return Answer(rule, error=invalid(f"fake: the scripted reply {problem}; script one that fits"))
        outcome = self.cache.lookup(body, facts, blocks)
        record.cache_read, record.cache_write = outcome.read, outcome.write
        if rule is not None and rule.usage is not None:
            usage: dict[str, Any] = {**DEFAULT_USAGE, **rule.usage}
        else:
            total = record.prefix_tokens + record.conversation_tokens
            usage = {
                "input_tokens": total - outcome.read - outcome.write,
                "cache_creation_input_tokens": outcome.write,
                "cache_read_input_tokens": outcome.read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": outcome.write - outcome.write_1h,
                    "ephemeral_1h_input_tokens": outcome.write_1h,
                },
                "output_tokens": sum(map(block_tokens, content)),
                "service_tier": "standard",
            }
        if batch:
            usage["service_tier"] = "batch"
        record.usage = usage
        message = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return Answer(rule, message=message, writes=outcome.writes)

    def _content(self, body: dict[str, Any], facts: ModelFacts, rule: Rule | None) -> tuple[list[Any], str]:
        blocks: list[dict[str, Any]] = []
        if thinking_active(body, facts) and not _forced(body):  # a forced tool call starts with the call
            blocks.append({"type": "thinking", "thinking": "", "signature": sign("")})
        calls, text, stop = self._default_reply(body)
        if rule is not None:
            calls = rule.tool_use if rule.tool_use is None or isinstance(rule.tool_use, list) else [rule.tool_use]
            text, stop = rule.text, rule.stop_reason or "end_turn"
        if calls:
            uses = [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], **call} for call in calls]
            if not blocks:
                with self._lock:
                    self._thoughtless.update(use["id"] for use in uses)
            return [*blocks, *uses], "tool_use"
        return [*blocks, {"type": "text", "text": text}], stop

    @staticmethod
    def _default_reply(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str, str]:
        """(tool calls, text, stop reason) when no rule matches: a conforming forced call or format, else "ok"."""
        choice, tools = body.get("tool_choice") or {}, body.get("tools") or []
        if _forced(body) and (tools or choice.get("name")):
            named = [t for t in tools if choice.get("type") == "any" or t.get("name") == choice.get("name")]
            tool = named[0] if named else {"name": choice.get("name")}
            return (
                [{"name": tool.get("name"), "input": verdict_or_conforming(tool.get("input_schema"))}],
                "",
                "tool_use",
            )
        form = _format(body)
        if isinstance(form, dict):
            return None, json.dumps(verdict_or_conforming(form.get("schema"))), "end_turn"
        return None, "ok", "end_turn"

    def count_tokens(self, body: Any) -> int:
        self.check(body, counting=True)
        return overhead(body) + sum(block.tokens for block in prompt_blocks(body))

    # batches

    def create_batch(self, body: Any, headers: dict[str, str]) -> Batch:
        requests = check_batch(body)
        batch = Batch("msgbatch_" + uuid.uuid4().hex[:24], requests, headers, self.clock(), datetime.now(UTC))
        with self._batch_lock:
            self.batches[batch.id] = batch
        return batch

    def advance(self, batch: Batch) -> Batch:
        """End a batch whose time has come (answering its requests), or a canceled one."""
        with self._batch_lock:
            if batch.status == "canceling":
                batch.results = [{"custom_id": r["custom_id"], "result": {"type": "canceled"}} for r in batch.requests]
            elif batch.status == "in_progress" and self.clock() - batch.created >= self.batch_delay:
                batch.results = [self._batched(batch, item) for item in batch.requests]
            else:
                return batch
            batch.status, batch.ended_at = "ended", _timestamp(datetime.now(UTC))
        return batch

    def _batched(self, batch: Batch, item: dict[str, Any]) -> dict[str, Any]:
        params, custom = item["params"], item["custom_id"]
        record = Request(
            "POST", f"/v1/messages/batches/{batch.id}/requests/{custom}", batch.headers, params, batch=True
        )
        with self._lock:
            self.requests.append(record)
        try:
            if params.get("stream"):
                raise invalid(BATCH_STREAM)
            if params.get("max_tokens") == 0:
                raise invalid(BATCH_MAX_TOKENS)
            answer = self.answer(params, record, batch=True)
            if answer.error is not None:
                raise answer.error
        except ApiError as error:
            record.status = error.status
            return {"custom_id": custom, "result": {"type": "errored", "error": error.body()}}
        assert answer.message is not None
        self.cache.commit(answer.writes)
        record.status = 200
        return {"custom_id": custom, "result": {"type": "succeeded", "message": answer.message}}

    def find_batch(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"message_batch: {batch_id}")
        return self.advance(batch)


_BATCH = re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)(?P<rest>/results|/cancel)?/?$")


def _handler_for(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms ACK waits
        record: Request

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw.decode("utf-8", "replace")

        def _send(self, data: bytes, status: int, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.record.status = status
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", REQUEST_ID)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
            self._send(json.dumps(payload).encode(), status, "application/json", headers)

        def _handle(self) -> None:
            body = self._body() if self.command in ("POST", "PUT", "PATCH") else None
            path = self.path.split("?", 1)[0]
            path = path[path.find("/v1/") :] if "/v1/" in path else path
            self.record = Request(self.command, self.path, dict(self.headers.items()), body)
            with fake._lock:
                fake.requests.append(self.record)
            try:
                self._route(self.command, path.rstrip("/") or "/", body)
            except ApiError as error:
                self._json(error.body(), error.status, error.headers)

        def _route(self, method: str, path: str, body: Any) -> None:
            if method == "POST" and path == "/v1/messages":
                return self._message(body)
            if method == "POST" and path == "/v1/messages/count_tokens":
                return self._json({"input_tokens": fake.count_tokens(body)})
            if method == "POST" and path == "/v1/messages/batches":
                return self._json(fake.create_batch(body, dict(self.headers.items())).view(fake.url))
            found = _BATCH.match(path)
            if found:
                return self._batch(method, fake.find_batch(found["id"]), found["rest"])
            if path.endswith("/v1/models"):
                return self._json({"data": [], "has_more": False, "first_id": None, "last_id": None})
            return self._json({})

        def _batch(self, method: str, batch: Batch, rest: str | None) -> None:
            if rest == "/results":
                if batch.status != "ended":  # undocumented text
                    raise ApiError(404, "not_found_error", f"message_batch {batch.id} has not ended: no results yet")
                lines = "".join(json.dumps(result) + "\n" for result in batch.results)
                return self._send(lines.encode(), 200, "application/binary")
            if rest == "/cancel" and method == "POST":
                if batch.status == "in_progress":
                    batch.status, batch.cancel_initiated_at = "canceling", _timestamp(datetime.now(UTC))
                return self._json(batch.view(fake.url))
            return self._json(batch.view(fake.url))

        def _message(self, body: Any) -> None:
            answer = fake.answer(body, self.record)
            rule = answer.rule
            if rule is not None and rule.delay:
                time.sleep(rule.delay)
            if answer.error is not None:
                return self._json(answer.error.body(), answer.error.status, answer.error.headers)
            assert answer.message is not None
            headers = rule.headers if rule is not None else {}
            if not body.get("stream"):
                self._json(answer.message, headers=headers)
                fake.cache.commit(answer.writes)  # the whole reply has been sent
                return
            self._stream(answer.message, answer.writes, rule or Rule(lambda body: True), headers)

        def _stream(
            self, message: dict[str, Any], writes: list[tuple[str, float]], rule: Rule, headers: dict[str, str]
        ) -> None:
            usage = message["usage"]
            start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
            events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
            for index, block in enumerate(message["content"]):
                opening, delta = _block_events(block)
                events += [
                    ("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}),
                    ("ping", {"type": "ping"}),
                    ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
                    ("content_block_stop", {"type": "content_block_stop", "index": index}),
                ]
            stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
            events += [
                (
                    "message_delta",
                    {"type": "message_delta", "delta": stop, "usage": {"output_tokens": usage["output_tokens"]}},
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
            chunks = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]
            if rule.garble is not None and rule.garble < len(chunks):
                name = events[rule.garble][0]
                chunks[rule.garble] = f'event: {name}\ndata: {{"type": "{name}", "delta": \n\n'.encode()
            self.record.status = 200
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Content-Length", str(sum(len(chunk) for chunk in chunks)))
            self.send_header("request-id", REQUEST_ID)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            sent = chunks if rule.drop_after is None else chunks[: rule.drop_after]
            if sent:
                self.wfile.write(sent[0])
                self.wfile.flush()
                fake.cache.commit(writes)  # message_start is out: the prompt is cached from here on
                if rule.stall:
                    time.sleep(rule.stall)
                self.wfile.write(b"".join(sent[1:]))
                self.wfile.flush()
            if rule.drop_after is not None:  # cut the body short: the promised Content-Length never arrives
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


def _block_events(block: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A content block's content_block_start payload and its one delta."""
    if block["type"] == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}, {
            "type": "signature_delta",
            "signature": block["signature"],
        }
    if block["type"] == "tool_use":
        return {**block, "input": {}}, {"type": "input_json_delta", "partial_json": json.dumps(block.get("input", {}))}
    return {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="A fake of the Anthropic Messages API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--text", default=None, help='the reply to every free-text request (default "ok")')
    args = parser.parse_args()
    fake = FakeAnthropic(port=args.port)
    if args.text is not None:
        fake.reply(args.text, when=lambda body: not body.get("tool_choice") and not _format(body))
    with fake:
        print(f"fake Anthropic API on {fake.url} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
