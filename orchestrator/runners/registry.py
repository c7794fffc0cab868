"""Runner kinds: what runs a stage, what each kind can do, and how one is made.

Every question about a runner kind is answered here, by a named capability,
never by comparing its name elsewhere:

- ``calls_api``: it sends requests to the Messages API itself (so a run needs
  an API key, and the run's budget reserves each request);
- ``tools``: it gets orchestrate's workspace tools (read, edit, bash, ...)
  when its agent names them;
- ``acts``: it may change the workspace on its own (a command, an agent CLI),
  so its fingerprint includes what it sees there and its write scope
  defaults to everything;
- ``batches``: it can send a stage's request through the Message Batches API;
- ``preflight``: a check before any spend (an agent CLI installed);
- ``make``: the factory, given what every runner may need (``RunnerSetup``).

Runner modules are imported only by their factory, so naming a kind costs
nothing: ``validate`` and ``plan`` never import the SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..sandbox import Confinement
from . import Runner

if TYPE_CHECKING:
    from .agent_cli import CliAgent

__all__ = ["KINDS", "RunnerKind", "RunnerSetup", "kind_of"]


@dataclass(frozen=True)
class RunnerSetup:
    """What a runner may need to be made: the workspace, the caller's environment and the run's options."""

    root: Path  # the workspace: where commands and tools work
    environ: Mapping[str, str]
    transcripts: Path | None = None  # where tool loops write their transcripts
    record: Path | None = None  # --record DIR
    replay: Path | None = None  # --replay DIR
    cache_warmup: bool = True
    agents: Callable[[], dict[str, CliAgent]] = field(default=dict)  # compiled agent files, for the agent CLIs
    confinement: Confinement = field(default_factory=Confinement)  # how commands are sandboxed


@dataclass(frozen=True)
class RunnerKind:
    name: str
    calls_api: bool
    tools: bool
    acts: bool
    batches: bool
    make: Callable[[RunnerSetup], Runner]
    # The commands it runs go through orchestrate's sandbox (an agent CLI runs its own tools, with its own rules).
    sandboxed: bool = True
    preflight: Callable[[Mapping[str, str]], None] | None = None


def _anthropic(setup: RunnerSetup) -> Runner:
    from .anthropic import AnthropicRunner, WorkspaceSetup  # slow to import: only for real runs
    from .recording import Recorder, Replayer
    from .warmup import CacheWarmer

    return AnthropicRunner(
        workspace=WorkspaceSetup(setup.root, setup.environ, setup.transcripts, confinement=setup.confinement),
        recorder=Recorder(setup.record) if setup.record is not None else None,
        replayer=Replayer(setup.replay) if setup.replay is not None else None,
        warmer=CacheWarmer(setup.cache_warmup),
    )


def _claude_code(setup: RunnerSetup) -> Runner:
    from .agent_cli import ClaudeCodeRunner

    return ClaudeCodeRunner(setup.agents(), setup.root, setup.environ)


def _opencode(setup: RunnerSetup) -> Runner:
    from .agent_cli import OpenCodeRunner

    return OpenCodeRunner(setup.agents(), setup.root, setup.environ)


def _shell(setup: RunnerSetup) -> Runner:
    from .shell import ShellRunner

    return ShellRunner(setup.root, setup.environ, confinement=setup.confinement)


def _find(kind: str) -> Callable[[Mapping[str, str]], None]:
    def check(environ: Mapping[str, str]) -> None:
        from .agent_cli import find_cli

        find_cli(kind, environ)

    return check


def _agent_cli(name: str, make: Callable[[RunnerSetup], Runner]) -> RunnerKind:
    """An agent's own command line: it acts on the workspace with its own tools and permissions."""
    return RunnerKind(name, False, False, acts=True, batches=False, make=make, preflight=_find(name), sandboxed=False)


KINDS: dict[str, RunnerKind] = {
    kind.name: kind
    for kind in (
        RunnerKind("anthropic", calls_api=True, tools=True, acts=False, batches=True, make=_anthropic),
        _agent_cli("claude-code", _claude_code),
        _agent_cli("opencode", _opencode),
        RunnerKind("shell", calls_api=False, tools=False, acts=True, batches=False, make=_shell),
    )
}


def kind_of(name: str) -> RunnerKind:
    """The kind named ``name`` (a name the workflow's schema already checked)."""
    return KINDS[name]
