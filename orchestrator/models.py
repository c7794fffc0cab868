"""What each Claude model accepts: the one home of model facts, from Anthropic's model docs.

Every request orchestrate sends, and every agent config it writes, is shaped by
these facts, and the test suite's fake of the Messages API refuses what they
refuse, with the API's own messages. When the docs change, this module and the
fake change together (and nothing else should need to).

Sources (platform.claude.com/docs/en/..., as of late 2026): ``models/overview``,
the per-model "what's new" and migration guides, ``build-with-claude/effort``,
``build-with-claude/thinking-troubleshooting``, ``build-with-claude/prompt-caching``
(minimum cacheable prompt lengths), ``build-with-claude/structured-outputs``,
``agents-and-tools/tool-use/define-tools`` (forced tool use),
``about-claude/model-deprecations`` and ``api/errors``.

The rules in short: from the 4.6 generation on, thinking is adaptive and
``budget_tokens`` is refused (4.7 and later); depth is ``output_config.effort``.
Some models always think; some refuse a forced ``tool_choice`` whatever the
thinking settings; 4.7 and later refuse sampling parameters; 4.6 and later refuse
an assistant prefill. A model id this module does not know gets the most
conservative shape: nothing optional is sent, and structured replies are asked
for in the text and checked here rather than through ``output_config.format``.

No I/O, no third-party imports: the loader, the request builder, the compiler
and the fake all read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "EFFORTS",
    "RETIRED",
    "Effort",
    "ModelFacts",
    "Thinking",
    "facts_for",
    "known_models",
    "setting_problems",
    "thinking_field",
]

Effort = Literal["low", "medium", "high", "xhigh", "max"]
EFFORTS: tuple[Effort, ...] = ("low", "medium", "high", "xhigh", "max")
# What a workflow may ask of an agent's thinking: the model's own default, always on, or off.
Thinking = Literal["adaptive", "off"]
ALL_EFFORTS = frozenset(EFFORTS)
NO_XHIGH: tuple[Effort, ...] = ("low", "medium", "high", "max")


@dataclass(frozen=True)
class ModelFacts:
    """What one model (or family of ids) accepts in a Messages API request."""

    id: str
    name: str
    known: bool = True
    # Other ids the API takes for it: dated snapshots and short aliases (models before 4.6).
    aliases: tuple[str, ...] = ()
    # Thinking with no ``thinking`` field: "adaptive" (it thinks) or "off".
    thinking_default: Literal["adaptive", "off"] = "off"
    # The ``thinking.type`` values the API accepts for this model.
    thinking_types: frozenset[str] = frozenset()
    # How to turn thinking off: the ``thinking.type`` that does it, "" when off is the default, None when it can't.
    thinking_off: str | None = ""
    # The highest effort allowed while thinking is off, where the model limits it.
    off_max_effort: Effort | None = None
    # ``output_config.effort`` levels, and the default when none is sent; () when effort is not supported.
    efforts: tuple[Effort, ...] = ()
    default_effort: Effort | None = None
    # ``tool_choice`` of type "any" or "tool" (a forced tool call) accepted, with thinking as it is by default.
    forced_tool_choice: bool = False
    # ``temperature``, ``top_p`` and ``top_k`` at non-default values accepted.
    sampling: bool = False
    # A conversation that ends with an assistant message (a prefill) accepted.
    prefill: bool = False
    # ``output_config.format`` (structured outputs with a JSON schema) supported.
    structured_outputs: bool = False
    # Most output tokens of one synchronous request; None when unknown.
    max_output: int | None = None
    context_window: int | None = None
    # Shortest prompt prefix (tokens) that is cached at a breakpoint; shorter ones are silently not cached.
    cache_min_tokens: int = 4096
    # Retired models: requests fail. "on <date>; use <model>": since when, and what replaces it.
    retired: str = ""
    ids: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", (self.id, *self.aliases))

    @property
    def always_thinks(self) -> bool:
        return self.thinking_off is None

    def accepts_effort(self, effort: str) -> bool:
        return effort in self.efforts


def _current(model_id: str, name: str, **facts: object) -> ModelFacts:
    """A model of the 4.7-and-later generation: adaptive thinking, no sampling parameters, no prefill,
    structured outputs, 1M tokens of context and 128K of output; the rest is given."""
    base: dict[str, object] = {
        "thinking_default": "adaptive",
        "thinking_types": frozenset({"adaptive"}),
        "thinking_off": None,
        "efforts": EFFORTS,
        "default_effort": "high",
        "structured_outputs": True,
        "max_output": 128_000,
        "context_window": 1_000_000,
        "cache_min_tokens": 512,
    }
    base.update(facts)
    return ModelFacts(model_id, name, **base)  # type: ignore[arg-type]


_MODELS: tuple[ModelFacts, ...] = (
    # Fable and Mythos 5.2 (November 2026): documented as 5.1 plus a wider prefix check; forced tool use is not
    # documented for them, so it is not used (the conservative choice).
    _current("claude-fable-5-2", "Claude Fable 5.2"),
    _current("claude-mythos-5-2", "Claude Mythos 5.2"),
    # Always think; refuse a forced tool_choice ("a breaking change from Fable 5").
    _current("claude-fable-5-1", "Claude Fable 5.1"),
    _current("claude-mythos-5-1", "Claude Mythos 5.1"),
    _current("claude-fable-5", "Claude Fable 5", forced_tool_choice=True),
    _current("claude-mythos-5", "Claude Mythos 5", forced_tool_choice=True),
    # Always thinks; default effort medium; forced tool_choice refused.
    _current("claude-opus-5-5", "Claude Opus 5.5", default_effort="medium"),
    # Thinks by default; "between_tools" turns up-front thinking off (at effort high or below);
    # forced tool_choice refused.
    _current(
        "claude-sonnet-5-5",
        "Claude Sonnet 5.5",
        thinking_types=frozenset({"adaptive", "between_tools"}),
        thinking_off="between_tools",
        off_max_effort="high",
    ),
    # Thinks by default, "disabled" allowed at effort high or below; default effort medium; forced tool_choice accepted.
    _current(
        "claude-haiku-5-5",
        "Claude Haiku 5.5",
        thinking_types=frozenset({"adaptive", "disabled"}),
        thinking_off="disabled",
        off_max_effort="high",
        default_effort="medium",
        forced_tool_choice=True,
    ),
    _current(
        "claude-opus-5",
        "Claude Opus 5",
        thinking_types=frozenset({"adaptive", "disabled"}),
        thinking_off="disabled",
        off_max_effort="high",
        forced_tool_choice=True,
    ),
    _current(
        "claude-sonnet-5",
        "Claude Sonnet 5",
        thinking_types=frozenset({"adaptive", "disabled"}),
        thinking_off="disabled",
        forced_tool_choice=True,
        cache_min_tokens=1024,
    ),
    # Opus 4.8 and 4.7: adaptive thinking only, off unless asked for.
    _current(
        "claude-opus-4-8",
        "Claude Opus 4.8",
        thinking_default="off",
        thinking_types=frozenset({"adaptive", "disabled"}),
        thinking_off="",
        forced_tool_choice=True,
        cache_min_tokens=1024,
    ),
    _current(
        "claude-opus-4-7",
        "Claude Opus 4.7",
        thinking_default="off",
        thinking_types=frozenset({"adaptive", "disabled"}),
        thinking_off="",
        forced_tool_choice=True,
        cache_min_tokens=2048,
    ),
    # The 4.6 models: adaptive or (deprecated) manual thinking, off by default; no xhigh; sampling still accepted.
    ModelFacts(
        "claude-opus-4-6",
        "Claude Opus 4.6",
        thinking_types=frozenset({"adaptive", "enabled", "disabled"}),
        efforts=NO_XHIGH,
        default_effort="high",
        forced_tool_choice=True,
        sampling=True,
        structured_outputs=True,
        max_output=128_000,
        context_window=1_000_000,
        cache_min_tokens=4096,
    ),
    ModelFacts(
        "claude-sonnet-4-6",
        "Claude Sonnet 4.6",
        thinking_types=frozenset({"adaptive", "enabled", "disabled"}),
        efforts=NO_XHIGH,
        default_effort="high",
        forced_tool_choice=True,
        sampling=True,
        structured_outputs=True,
        # The overview said 64K in March 2026 and 128K later: the lower figure is the safe one.
        max_output=64_000,
        context_window=1_000_000,
        cache_min_tokens=1024,
    ),
    # Always thinks (adaptive or manual); deprecated, retirement not yet announced.
    ModelFacts(
        "claude-mythos-preview",
        "Claude Mythos Preview",
        thinking_default="adaptive",
        thinking_types=frozenset({"adaptive", "enabled"}),
        thinking_off=None,
        efforts=NO_XHIGH,
        default_effort="high",
        structured_outputs=True,
        cache_min_tokens=2048,
    ),
    # Before 4.6: dated ids with aliases, manual (extended) thinking only, sampling and prefill accepted.
    ModelFacts(
        "claude-opus-4-5-20251101",
        "Claude Opus 4.5",
        aliases=("claude-opus-4-5",),
        thinking_types=frozenset({"enabled", "disabled"}),
        efforts=("low", "medium", "high"),
        default_effort="high",
        forced_tool_choice=True,
        sampling=True,
        prefill=True,
        structured_outputs=True,
        max_output=64_000,
        context_window=200_000,
        cache_min_tokens=4096,
    ),
    ModelFacts(
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        aliases=("claude-haiku-4-5",),
        thinking_types=frozenset({"enabled", "disabled"}),
        forced_tool_choice=True,
        sampling=True,
        prefill=True,
        structured_outputs=True,
        max_output=64_000,
        context_window=200_000,
        cache_min_tokens=4096,
    ),
)


def _retired(note: str, *ids: str) -> dict[str, str]:
    return dict.fromkeys(ids, note)


# Ids the API no longer serves ("Requests to retired models will fail"): when, and what to use instead.
RETIRED: dict[str, str] = {
    **_retired("on 2026-11-30; use claude-sonnet-5-5", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
    **_retired("on 2026-08-05; use claude-opus-5-5", "claude-opus-4-1", "claude-opus-4-1-20250805"),
    **_retired(
        "on 2026-06-15; use claude-opus-5-5 or claude-sonnet-5-5",
        "claude-opus-4-0",
        "claude-opus-4-20250514",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
    ),
    **_retired(
        "; use claude-sonnet-5-5 or claude-haiku-5-5",
        "claude-3-7-sonnet-20250219",
        "claude-3-7-sonnet-latest",
        "claude-3-5-haiku-20241022",
        "claude-3-5-haiku-latest",
        "claude-3-haiku-20240307",
        "claude-3-5-sonnet-20240620",
        "claude-3-5-sonnet-20241022",
        "claude-3-5-sonnet-latest",
        "claude-3-opus-20240229",
        "claude-3-opus-latest",
        "claude-3-sonnet-20240229",
        "claude-2.1",
        "claude-2.0",
    ),
}

_BY_ID: dict[str, ModelFacts] = {model_id: facts for facts in _MODELS for model_id in facts.ids}
_DATED = re.compile(r"^(?P<base>.+)-\d{8}$")


def known_models() -> tuple[ModelFacts, ...]:
    """Every model this module knows that the API still serves."""
    return _MODELS


def facts_for(model: str) -> ModelFacts:
    """The facts of ``model``; for an id this module does not know, the most conservative ones.

    A retired id gets facts with ``retired`` set (its requests fail).
    """
    facts = _BY_ID.get(model)
    if facts is not None:
        return facts
    if model in RETIRED:
        return ModelFacts(model, model, known=False, retired=RETIRED[model])
    # Unknown: send nothing optional, ask for structured replies in the text, warm the cache only for long prefixes.
    return ModelFacts(model, model, known=False, thinking_off=None, cache_min_tokens=4096)


def thinking_field(facts: ModelFacts, thinking: str | None) -> dict[str, str] | None:
    """The ``thinking`` field a request sends for a workflow's ``thinking:`` setting; None sends none
    (the model's default). Assumes ``setting_problems`` found nothing."""
    if thinking is None or not facts.known:
        return None
    if thinking == "adaptive":
        return None if facts.thinking_default == "adaptive" else {"type": "adaptive"}
    return {"type": facts.thinking_off} if facts.thinking_off else None


def setting_problems(
    model: str, *, effort: str | None = None, thinking: str | None = None, max_tokens: int | None = None
) -> list[tuple[str, str, str]]:
    """What a workflow asks of ``model`` that it refuses, as (setting, problem, hint) triples.

    The settings are those orchestrate sends for the user: the agent's effort and thinking, and
    ``max_tokens``. A model this module does not know is not second-guessed (its settings are sent as
    given); a retired one is refused.
    """
    facts = facts_for(model)
    out: list[tuple[str, str, str]] = []
    if facts.retired:
        when, _, instead = facts.retired.partition("; ")
        out.append(("model", f"model {model!r} was retired{' ' + when if when else ''}: requests to it fail", instead))
        return out
    if not facts.known:
        return out
    if effort is not None and not facts.accepts_effort(effort):
        if facts.efforts:
            levels = ", ".join(facts.efforts)
            out.append(("effort", f"{facts.name} takes effort {levels}, not {effort!r}", f"use one of: {levels}"))
        else:
            out.append(
                (
                    "effort",
                    f"{facts.name} has no effort setting",
                    "remove effort, or use a model that has one, such as claude-sonnet-5-5",
                )
            )
    if thinking == "off" and facts.thinking_off is None:
        out.append(
            (
                "thinking",
                f"{facts.name} always thinks; its thinking can't be turned off",
                "remove thinking: off, and set effort: low for short, fast replies",
            )
        )
    elif thinking == "off" and facts.off_max_effort is not None and effort is not None:
        ceiling = EFFORTS.index(facts.off_max_effort)
        if EFFORTS.index(effort) > ceiling:
            out.append(
                (
                    "effort",
                    f"{facts.name} takes effort {facts.off_max_effort} or below while thinking is off, not {effort!r}",
                    f"lower effort to {facts.off_max_effort}, or drop thinking: off",
                )
            )
    if thinking == "adaptive" and "adaptive" not in facts.thinking_types:
        out.append(
            (
                "thinking",
                f"{facts.name} has no adaptive thinking",
                "remove thinking: adaptive, or use a current model such as claude-sonnet-5-5",
            )
        )
    if max_tokens is not None and facts.max_output is not None and max_tokens > facts.max_output:
        out.append(
            (
                "max_tokens",
                f"max_tokens {max_tokens} is more than {facts.name} writes in one reply ({facts.max_output})",
                f"lower defaults.max_tokens to {facts.max_output} or less",
            )
        )
    return out
