"""The fake Messages API keeps the real API's contract: driven here through the real ``anthropic`` SDK."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from orchestrator import models

from . import fake_anthropic
from .fake_anthropic import DEFAULT_VERDICT, FORMAT_OVERHEAD, TOOLS_OVERHEAD, FakeAnthropic, tokens

LONG = "Facts about the project that every stage reads. " * 50  # 2,400 characters: 600 tokens
SHORT = "Be brief."
CACHE = {"type": "ephemeral"}
TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file of the project.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
            "additionalProperties": False,
        },
    }
]
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["title", "tags"],
    "additionalProperties": False,
}

VERDICT = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["pass", "fail"]}, "summary": {"type": "string"}},
    "required": ["verdict", "summary"],
    "additionalProperties": False,
}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        yield api


@pytest.fixture
def client(fake: FakeAnthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0)


def ask(text: str = "Hello") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def cached_system(text: str = LONG) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": CACHE}]


def cache_of(usage: Any) -> tuple[int, int]:
    return usage.cache_read_input_tokens, usage.cache_creation_input_tokens


# --- the contract ----------------------------------------------------------------------------------------------

ENABLED = (
    '"thinking.type.enabled" is not supported for this model. '
    'Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("claude-opus-5-5", {"thinking": {"type": "enabled", "budget_tokens": 2048}}, ENABLED),
    ("claude-opus-5-5", {"thinking": {"type": "disabled"}}, ENABLED.replace("enabled", "disabled", 1)),
    (
        "claude-sonnet-5-5",
        {"thinking": {"type": "disabled"}},
        fake_anthropic.THINKING_REFUSED["disabled_between_tools"],
    ),
    ("claude-haiku-5-5", {"thinking": {"type": "between_tools"}}, fake_anthropic.THINKING_REFUSED["between_tools"]),
    ("claude-haiku-4-5", {"thinking": {"type": "adaptive"}}, "adaptive thinking is not supported on this model"),
    ("claude-mythos-preview", {"thinking": {"type": "disabled"}}, fake_anthropic.THINKING_REFUSED["disabled_preview"]),
    (
        "claude-sonnet-5-5",
        {"thinking": {"type": "between_tools"}, "output_config": {"effort": "xhigh"}},
        "output_config.effort 'xhigh' is not supported when thinking is disabled on this model. "
        "Use effort 'high' or below, or enable thinking.",
    ),
    (
        "claude-haiku-5-5",
        {"thinking": {"type": "disabled"}, "output_config": {"effort": "max"}},
        "output_config.effort 'max' is not supported when thinking is disabled on this model. "
        "Use effort 'high' or below, or enable thinking.",
    ),
    (
        "claude-opus-5-5",
        {"tools": TOOLS, "tool_choice": {"type": "tool", "name": "read_file"}},
        'tool_choice: type "tool" and "any" are not supported for this model.',
    ),
    (
        "claude-sonnet-5-5",
        {"tools": TOOLS, "tool_choice": {"type": "any"}},
        'tool_choice: type "tool" and "any" are not supported for this model.',
    ),
    (
        "claude-opus-4-6",
        {"tools": TOOLS, "tool_choice": {"type": "any"}, "thinking": {"type": "enabled", "budget_tokens": 2048}},
        "Thinking may not be enabled when tool_choice forces tool use.",
    ),
    ("claude-sonnet-5-5", {"extra_body": {"temperature": 0.2}}, "`temperature` is deprecated for this model."),
    ("claude-opus-5-5", {"extra_body": {"top_k": 5}}, "`top_k` is deprecated for this model."),
    (
        "claude-sonnet-5-5",
        {"messages": [*ask(), {"role": "assistant", "content": "Sure, "}]},
        "This model does not support assistant message prefill. The conversation must end with a user message.",
    ),
    (
        "claude-opus-4-6",
        {"output_config": {"effort": "xhigh"}},
        "output_config.effort: 'xhigh' is not supported by claude-opus-4-6; it takes low, medium, high, max.",
    ),
    (
        "claude-sonnet-5-5",
        {"output_config": {"format": {"type": "json_schema", "schema": {**SCHEMA, "additionalProperties": True}}}},
        "output_config.format.schema: For 'object' type, 'additionalProperties: true' is not supported. "
        "Please set 'additionalProperties' to false",
    ),
    (
        "claude-sonnet-5-5",
        {"system": cached_system(SHORT) * 4, "cache_control": CACHE},
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # the SDK warns of old models
@pytest.mark.parametrize(("model", "fields", "message"), REFUSED)
def test_what_a_model_refuses_is_a_400_with_the_apis_message(
    client: anthropic.Anthropic, fake: FakeAnthropic, model: str, fields: dict[str, Any], message: str
) -> None:
    request = {"model": model, "max_tokens": 1024, "messages": ask(), **fields}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(**request)
    assert refused.value.status_code == 400
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
        "request_id": "req_fake",
    }
    assert refused.value.response.headers["request-id"] == "req_fake"
    assert fake.requests[-1].status == 400 and fake.requests[-1].usage is None


@pytest.mark.parametrize("model", ["claude-nonexistent-9", "claude-sonnet-4-5", "claude-3-opus-20240229"])
def test_an_unknown_or_retired_model_is_not_found(client: anthropic.Anthropic, model: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model=model, max_tokens=100, messages=ask())
    assert missing.value.body["error"] == {"type": "not_found_error", "message": f"model: {model}"}


def test_max_tokens_above_the_models_output_limit_is_refused(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r"max_tokens: 64001 > 64000, which is the maximum allowed"):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=64_001, messages=ask(), timeout=30)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=64_000, messages=ask(), timeout=30)


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({**SCHEMA, "additionalProperties": None}, "For 'object' type, 'additionalProperties: null' is not supported"),
        (
            {k: v for k, v in SCHEMA.items() if k != "additionalProperties"},
            "For 'object' type, 'additionalProperties' must be explicitly set to false",
        ),
        (
            {**SCHEMA, "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]},
            "For 'integer' type, property 'minimum' is not supported",
        ),
        (
            {**SCHEMA, "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}}},
            "For 'array' type, 'minItems' values other than 0 or 1 are not supported",
        ),
        (
            {**SCHEMA, "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}},
            "Property 'oneOf' is not supported",
        ),
        (
            {**SCHEMA, "properties": {"when": {"type": "string", "format": "color"}}},
            "For 'string' type, format 'color' is not supported",
        ),
    ],
)
def test_a_format_schema_outside_what_structured_outputs_compile_is_refused(
    client: anthropic.Anthropic, schema: dict[str, Any], problem: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=1024,
            messages=ask(),
            output_config={"format": {"type": "json_schema", "schema": schema}},
        )
    assert refused.value.body["error"]["message"].startswith(f"output_config.format.schema: {problem}")


def test_a_recursive_schema_is_refused_and_a_supported_one_with_property_names_like_keywords_is_not(
    client: anthropic.Anthropic,
) -> None:
    node = {
        "type": "object",
        "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["children"],
        "additionalProperties": False,
    }
    recursive = {**node, "$defs": {"node": node}}
    with pytest.raises(anthropic.BadRequestError, match="Too many recursive definitions in schema"):
        client.messages.create(
            model="claude-opus-5-5",
            max_tokens=1024,
            messages=ask(),
            output_config={"format": {"type": "json_schema", "schema": recursive}},
        )
    fine = {
        "type": "object",
        "properties": {
            "minimum": {"type": "string", "format": "date", "pattern": "^2026-"},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        },
        "required": ["minimum", "maybe", "items"],
        "additionalProperties": False,
    }
    reply = client.messages.create(
        model="claude-opus-5-5",
        max_tokens=1024,
        messages=ask(),
        output_config={"format": {"type": "json_schema", "schema": fine}},
    )
    assert json.loads(reply.content[-1].text) == {"minimum": "2026-01-01", "maybe": "text", "items": [0]}


def test_a_format_on_a_model_without_structured_outputs_is_refused(
    client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every model the facts module knows has structured outputs: take them away from one.
    def facts_for(model: str) -> models.ModelFacts:
        return dataclasses.replace(models.facts_for(model), structured_outputs=False)

    monkeypatch.setattr(fake_anthropic, "facts_for", facts_for)
    with pytest.raises(anthropic.BadRequestError, match="structured outputs are not supported by claude-sonnet-5-5"):
        client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=1024,
            messages=ask(),
            output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
        )


def test_count_tokens_keeps_the_contract_too(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r'tool_choice: type "tool" and "any" are not supported'):
        client.messages.count_tokens(model="claude-opus-5-5", messages=ask(), tools=TOOLS, tool_choice={"type": "any"})
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-sonnet-4-5", messages=ask())


def test_a_forced_tool_call_is_accepted_where_the_model_allows_it_and_starts_without_thinking(
    client: anthropic.Anthropic,
) -> None:
    forced = client.messages.create(
        model="claude-haiku-5-5",
        max_tokens=1024,
        messages=ask("Audit the change"),
        tools=[{"name": "verdict", "description": "The audit's verdict.", "input_schema": VERDICT}],
        tool_choice={"type": "tool", "name": "verdict"},
    )
    assert [block.type for block in forced.content] == ["tool_use"]
    assert forced.content[0].name == "verdict"
    assert forced.content[0].input == {"verdict": "pass", "summary": DEFAULT_VERDICT["summary"]}  # what it has
    # Its tool-use turn has no thinking block to echo: the next turn is accepted without one.
    client.messages.create(
        model="claude-haiku-5-5",
        max_tokens=1024,
        tools=TOOLS,
        messages=[
            *ask("Audit the change"),
            {"role": "assistant", "content": forced.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": forced.content[0].id, "content": "ok"}],
            },
        ],
    )


def test_error_replies_carry_the_rules_headers_and_x_should_retry_is_obeyed(fake: FakeAnthropic) -> None:
    retrying = anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=3)
    fake.reply("overloaded", status=529, error="overloaded_error", headers={"x-should-retry": "false"}, times=1)
    with pytest.raises(anthropic.APIStatusError) as failed:
        retrying.messages.create(model="claude-sonnet-5-5", max_tokens=100, messages=ask())
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert failed.value.body["error"] == {"type": "overloaded_error", "message": "overloaded"}
    assert len(fake.messages()) == 1  # not retried, though a 529 would be
    fake.reply("bad", status=400, headers={"x-should-retry": "true", "retry-after-ms": "1"}, times=1)
    assert retrying.messages.create(model="claude-sonnet-5-5", max_tokens=100, messages=ask()).content[-1].text == "ok"
    assert [r.status for r in fake.messages()] == [529, 400, 200]


# --- thinking ----------------------------------------------------------------------------------------------------


def test_a_thinking_model_streams_a_thinking_block_then_the_text(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="claude-sonnet-5-5", max_tokens=1024, messages=ask()) as stream:
        events = [(event.type, getattr(event, "content_block", None)) for event in stream]
        final = stream.get_final_message()
    starts = [block.type for kind, block in events if kind == "content_block_start"]
    assert starts == ["thinking", "text"]
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "" and final.content[0].signature.startswith("sig_")
    assert final.content[1].text == "ok"


@pytest.mark.filterwarnings("ignore::UserWarning")  # the SDK warns of budget_tokens on Opus 4.6
@pytest.mark.parametrize(
    ("model", "thinking", "blocks"),
    [
        ("claude-sonnet-5-5", None, ["thinking", "text"]),
        ("claude-sonnet-5-5", {"type": "between_tools"}, ["text"]),
        ("claude-opus-4-8", None, ["text"]),
        ("claude-opus-4-8", {"type": "adaptive"}, ["thinking", "text"]),
        ("claude-opus-4-6", {"type": "enabled", "budget_tokens": 2048}, ["thinking", "text"]),
    ],
)
def test_the_reply_thinks_when_the_model_and_request_say_so(
    client: anthropic.Anthropic, model: str, thinking: dict[str, Any] | None, blocks: list[str]
) -> None:
    extra = {"thinking": thinking} if thinking else {}
    reply = client.messages.create(model=model, max_tokens=4096, messages=ask(), **extra)  # type: ignore[arg-type]
    assert [block.type for block in reply.content] == blocks


def _first_turn(client: anthropic.Anthropic, fake: FakeAnthropic) -> tuple[Any, list[dict[str, Any]]]:
    fake.script("Fix the bug", [{"name": "read_file", "input": {"path": "app.py"}}, "Fixed."])
    first = client.messages.create(model="claude-sonnet-5-5", max_tokens=1024, tools=TOOLS, messages=ask("Fix the bug"))
    assert [block.type for block in first.content] == ["thinking", "tool_use"]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[1].id, "content": "x"}]}
    return first, [result]


def test_a_tool_loop_that_echoes_the_thinking_block_is_accepted(
    client: anthropic.Anthropic, fake: FakeAnthropic
) -> None:
    first, result = _first_turn(client, fake)
    messages = [*ask("Fix the bug"), {"role": "assistant", "content": first.content}, *result]
    second = client.messages.create(model="claude-sonnet-5-5", max_tokens=1024, tools=TOOLS, messages=messages)
    assert second.content[-1].text == "Fixed."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda blocks: blocks[1:], fake_anthropic.THINKING_DROPPED.format(i=1, found="tool_use")),
        (
            lambda blocks: [{**blocks[0], "thinking": "I edited this."}, blocks[1]],
            "messages.1.content.0: " + fake_anthropic.THINKING_MODIFIED,
        ),
        (
            lambda blocks: [{**blocks[0], "signature": "sig_forged"}, blocks[1]],
            "messages.1.content.0: " + fake_anthropic.THINKING_MODIFIED,
        ),
    ],
    ids=["dropped", "edited", "forged"],
)
def test_a_tool_loop_that_drops_or_edits_the_thinking_block_is_refused(
    client: anthropic.Anthropic, fake: FakeAnthropic, change: Callable[[list[Any]], list[Any]], message: str
) -> None:
    first, result = _first_turn(client, fake)
    blocks = [block.model_dump(exclude_none=True) for block in first.content]
    messages = [*ask("Fix the bug"), {"role": "assistant", "content": change(blocks)}, *result]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="claude-sonnet-5-5", max_tokens=1024, tools=TOOLS, messages=messages)
    assert refused.value.body["error"]["message"] == message


# --- tokens and prompt caching ----------------------------------------------------------------------------------


def test_without_a_rules_usage_the_reply_reports_counted_tokens(
    client: anthropic.Anthropic, fake: FakeAnthropic
) -> None:
    fake.reply("Twelve chars", when="count me")
    reply = client.messages.create(model="claude-sonnet-5-5", max_tokens=100, system=SHORT, messages=ask("count me"))
    assert reply.usage.input_tokens == tokens(SHORT) + tokens("count me")
    assert reply.usage.output_tokens == 3  # the text; the (omitted) thinking counts nothing
    assert cache_of(reply.usage) == (0, 0) and reply.usage.service_tier == "standard"
    request = fake.messages()[-1]
    assert (request.prefix_tokens, request.conversation_tokens) == (tokens(SHORT), tokens("count me"))
    assert request.usage == reply.usage.model_dump(exclude_none=True) and not request.batch


def test_a_rules_usage_is_reported_exactly(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.reply("ok", usage={"input_tokens": 1234, "output_tokens": 56, "cache_read_input_tokens": 7})
    reply = client.messages.create(model="claude-sonnet-5-5", max_tokens=100, system=cached_system(), messages=ask())
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (1234, 56)
    assert cache_of(reply.usage) == (7, 0)
    assert fake.messages()[-1].cache_write == tokens(LONG)  # the simulation still ran


def test_a_prefix_above_the_minimum_is_written_then_read(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    prefix = tokens(LONG)
    assert prefix >= models.facts_for("claude-sonnet-5-5").cache_min_tokens
    first = client.messages.create(model="claude-sonnet-5-5", max_tokens=100, system=cached_system(), messages=ask("a"))
    second = client.messages.create(
        model="claude-sonnet-5-5", max_tokens=100, system=cached_system(), messages=ask("b")
    )
    assert cache_of(first.usage) == (0, prefix) and first.usage.input_tokens == 1
    assert cache_of(second.usage) == (prefix, 0) and second.usage.input_tokens == 1
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    assert [(r.cache_read, r.cache_write) for r in fake.messages()] == [(0, prefix), (prefix, 0)]
    # Another model, or another output format, is another prefix.
    opus = client.messages.create(model="claude-opus-5-5", max_tokens=100, system=cached_system(), messages=ask("c"))
    formatted = client.messages.create(
        model="claude-sonnet-5-5",
        max_tokens=100,
        system=cached_system(),
        messages=ask("d"),
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    assert cache_of(opus.usage) == (0, prefix)
    assert cache_of(formatted.usage) == (0, prefix + FORMAT_OVERHEAD)


def test_a_prefix_below_the_models_minimum_is_not_cached(client: anthropic.Anthropic) -> None:
    for _ in range(2):
        short = client.messages.create(
            model="claude-sonnet-5-5", max_tokens=100, system=cached_system(SHORT), messages=ask()
        )
        assert cache_of(short.usage) == (0, 0)
    # 600 tokens reach Sonnet 5.5's 512 but not Sonnet 5's 1,024.
    for _ in range(2):
        sonnet5 = client.messages.create(
            model="claude-sonnet-5", max_tokens=100, system=cached_system(), messages=ask()
        )
        assert cache_of(sonnet5.usage) == (0, 0) and sonnet5.usage.input_tokens == tokens(LONG) + 2


async def _until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_requests_sent_before_the_first_response_begins_both_write(fake: FakeAnthropic) -> None:
    fake.reply("slow", when="first", delay=0.5)

    async def run() -> tuple[Any, Any]:
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0)
        request = {"model": "claude-sonnet-5-5", "max_tokens": 100, "system": cached_system()}
        first = asyncio.create_task(client.messages.create(**request, messages=ask("first")))
        await _until(lambda: len(fake.messages()) == 1)  # it has arrived; its reply waits half a second
        second = await client.messages.create(**request, messages=ask("second"))
        return await first, second

    first, second = asyncio.run(run())
    assert cache_of(first.usage) == cache_of(second.usage) == (0, tokens(LONG))


def test_a_request_sent_once_the_first_message_start_arrived_reads(fake: FakeAnthropic) -> None:
    fake.reply("slow", when="first", stall=0.5)

    async def run() -> tuple[Any, Any]:
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0)
        request = {"model": "claude-sonnet-5-5", "max_tokens": 100, "system": cached_system()}
        second = None
        async with client.messages.stream(**request, messages=ask("first")) as stream:
            async for event in stream:
                if event.type == "message_start":
                    assert cache_of(event.message.usage) == (0, tokens(LONG))
                    second = await client.messages.create(**request, messages=ask("second"))
            first = await stream.get_final_message()
        return first, second

    first, second = asyncio.run(run())
    assert first.content[-1].text == "slow"
    assert cache_of(second.usage) == (tokens(LONG), 0)


def test_a_top_level_cache_control_caches_a_growing_conversation_turn_to_turn(
    client: anthropic.Anthropic, fake: FakeAnthropic
) -> None:
    calls = [{"name": "read_file", "input": {"path": f"{name}.py"}} for name in "ab"]
    fake.script("Fix it", calls)
    prompt: dict[str, Any] = {"model": "claude-opus-5-5", "system": LONG, "tools": TOOLS, "cache_control": CACHE}
    messages: list[dict[str, Any]] = ask("Fix it")
    written = 0  # the conversation so far, as the previous turn cached it
    for turn in range(3):
        reply = client.messages.create(**prompt, max_tokens=1024, messages=messages)
        total = client.messages.count_tokens(**prompt, messages=messages).input_tokens
        # The previous turn's prompt is read, the rest up to the last block written: nothing is left uncached.
        assert cache_of(reply.usage) == (written, total - written) and reply.usage.input_tokens == 0
        assert total - written > 0 and (turn > 0 or total > TOOLS_OVERHEAD + tokens(LONG))
        written = total
        result = {"type": "tool_result", "tool_use_id": reply.content[-1].id, "content": f"file {turn}"}
        messages += [{"role": "assistant", "content": reply.content}, {"role": "user", "content": [result]}]


def test_a_cache_entry_expires_five_minutes_after_its_last_read(
    client: anthropic.Anthropic, fake: FakeAnthropic
) -> None:
    now = [1000.0]
    fake.clock = lambda: now[0]
    prefix = tokens(LONG)

    def send() -> tuple[int, int]:
        reply = client.messages.create(model="claude-haiku-5-5", max_tokens=100, system=cached_system(), messages=ask())
        return cache_of(reply.usage)

    assert send() == (0, prefix)
    now[0] += 250
    assert send() == (prefix, 0)  # read: its five minutes start again
    now[0] += 250
    assert send() == (prefix, 0)
    now[0] += 301
    assert send() == (0, prefix)


def test_count_tokens_matches_the_usage_total(client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": "claude-sonnet-5-5",
        "system": cached_system(),
        "tools": TOOLS,
        "messages": ask("What is in app.py?"),
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }
    counted = client.messages.count_tokens(**request).input_tokens
    tool = tokens(json.dumps(TOOLS[0], sort_keys=True, separators=(",", ":")))  # a tool counts on its JSON
    assert counted == TOOLS_OVERHEAD + FORMAT_OVERHEAD + tool + tokens(LONG) + tokens("What is in app.py?")
    reply = client.messages.create(**request, max_tokens=1024)
    assert reply.usage.input_tokens + sum(cache_of(reply.usage)) == counted
    assert json.loads(reply.content[-1].text) == {"title": "text", "tags": []}


# --- batches -----------------------------------------------------------------------------------------------------


def test_a_scripted_reply_the_output_format_would_not_allow_is_refused_loudly(
    client: anthropic.Anthropic, fake: FakeAnthropic
) -> None:
    """The API's grammar makes a structured reply fit its schema: a test can't script one that doesn't."""
    fake.reply("Not JSON at all.", when="Audit")
    form = {"type": "json_schema", "schema": VERDICT}
    with pytest.raises(anthropic.BadRequestError, match="fake: the scripted reply is not JSON"):
        client.messages.create(
            model="claude-sonnet-5-5", max_tokens=1024, messages=ask("Audit"), output_config={"format": form}
        )


def test_a_batch_end_to_end_with_the_sdk(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.reply("A summary.", when=lambda body: "Summarize" in json.dumps(body) and "output_config" not in body)
    params = {"model": "claude-sonnet-5-5", "max_tokens": 1024, "system": cached_system()}
    created = client.messages.batches.create(
        requests=[
            {"custom_id": "summary", "params": {**params, "messages": ask("Summarize")}},
            {"custom_id": "summary-2", "params": {**params, "messages": ask("Summarize again")}},
            {
                "custom_id": "audit-1",
                "params": {
                    **params,
                    "messages": ask("Audit"),
                    "output_config": {"format": {"type": "json_schema", "schema": VERDICT}},
                },
            },
            {"custom_id": "prefill", "params": {**params, "messages": [*ask(), {"role": "assistant", "content": "{"}]}},
            {"custom_id": "streamed", "params": {**params, "messages": ask(), "stream": True}},  # type: ignore[typeddict-item]
        ]
    )
    assert created.type == "message_batch" and created.id in fake.batches
    batch = client.messages.batches.retrieve(created.id)
    assert batch.processing_status == "ended" and batch.ended_at is not None
    assert batch.results_url == f"{fake.url}/v1/messages/batches/{created.id}/results"
    assert batch.request_counts.succeeded == 3 and batch.request_counts.errored == 2
    results = {result.custom_id: result.result for result in client.messages.batches.results(created.id)}
    assert results["summary"].type == "succeeded"
    assert [block.type for block in results["summary"].message.content] == ["thinking", "text"]
    assert results["summary"].message.content[-1].text == "A summary."
    assert results["summary"].message.usage.service_tier == "batch"
    assert json.loads(results["audit-1"].message.content[-1].text) == {
        "verdict": "pass",
        "summary": DEFAULT_VERDICT["summary"],
    }
    assert results["prefill"].type == "errored"
    assert results["prefill"].error.error.type == "invalid_request_error"
    assert results["prefill"].error.error.message == fake_anthropic.PREFILL_REFUSED
    assert results["streamed"].error.error.message == fake_anthropic.BATCH_STREAM
    batched = [r for r in fake.requests if r.batch]
    assert [r.path.rsplit("/", 1)[-1] for r in batched] == ["summary", "summary-2", "audit-1", "prefill", "streamed"]
    # The batch's requests share the cache like any others: the first writes, the second reads; the one with
    # an output format has another prefix.
    cache = [(r.cache_read, r.cache_write) for r in batched[:3]]
    assert cache == [(0, tokens(LONG)), (tokens(LONG), 0), (0, tokens(LONG) + FORMAT_OVERHEAD)]
    assert fake.messages() == []


def test_a_batch_in_progress_has_no_results_and_can_be_canceled(
    client: anthropic.Anthropic, fake: FakeAnthropic
) -> None:
    fake.batch_delay = 60
    created = client.messages.batches.create(
        requests=[{"custom_id": "only", "params": {"model": "claude-haiku-5-5", "max_tokens": 100, "messages": ask()}}]
    )
    batch = client.messages.batches.retrieve(created.id)
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 1
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        client.messages.batches.results(created.id)
    assert client.messages.batches.cancel(created.id).processing_status == "canceling"
    ended = client.messages.batches.retrieve(created.id)
    assert ended.processing_status == "ended" and ended.request_counts.canceled == 1
    assert [r.result.type for r in client.messages.batches.results(created.id)] == ["canceled"]
    assert not any(r.batch for r in fake.requests)  # nothing was sent to the model


def test_a_batch_ends_once_its_delay_has_passed(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    now = [0.0]
    fake.clock, fake.batch_delay = (lambda: now[0]), 30
    created = client.messages.batches.create(
        requests=[{"custom_id": "only", "params": {"model": "claude-haiku-5-5", "max_tokens": 100, "messages": ask()}}]
    )
    assert client.messages.batches.retrieve(created.id).processing_status == "in_progress"
    now[0] = 30
    assert client.messages.batches.retrieve(created.id).processing_status == "ended"
    assert [r.result.type for r in client.messages.batches.results(created.id)] == ["succeeded"]


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([], "requests: List should have at least 1 item"),
        ([{"custom_id": "has space", "params": {}}], r"requests.0.custom_id: String should match pattern"),
        ([{"custom_id": "x" * 65, "params": {}}], r"requests.0.custom_id: String should match pattern"),
        ([{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}], "requests.1.custom_id: 'a' is used"),
    ],
)
def test_a_batch_with_bad_custom_ids_is_refused(client: anthropic.Anthropic, requests: list[Any], message: str) -> None:
    with pytest.raises(anthropic.BadRequestError, match=message):
        client.messages.batches.create(requests=requests)


def test_an_unknown_batch_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_nope")
