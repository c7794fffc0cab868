"""The exception tree of orchestrate.

Every error a user can cause is an ``OrchestrateError`` carrying a one-line
``message``, an optional ``hint`` (the next step) and the ``exit_code`` the CLI
uses. The CLI prints them in one place; the library never prints or exits::

    OrchestrateError                 exit 2 unless a subclass says otherwise
    ├── WorkflowError                bad workflow file, graph or template (exit 2)
    │   └── WorkflowErrors           several WorkflowErrors found in one pass
    ├── ProjectError                 paths, output folders, files we refuse to overwrite (exit 2)
    ├── UsageError                   bad run inputs: params, task names, a missing API key (exit 2)
    ├── RunnerError                  a provider or command failed (exit 1; original kept as __cause__)
    ├── StateError                   a state folder that can't be read or written (exit 2)
    └── RunFailedError               the run finished but failed (exit 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Location",
    "OrchestrateError",
    "ProjectError",
    "RunFailedError",
    "RunnerError",
    "StateError",
    "UsageError",
    "WorkflowError",
    "WorkflowErrors",
]


@dataclass(frozen=True)
class Location:
    """A place in a user's file: 1-based line and column, either may be unknown."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        text = self.file
        if self.line is not None:
            text += f":{self.line}"
            if self.column is not None:
                text += f":{self.column}"
        return text


class OrchestrateError(Exception):
    """Base of every error orchestrate reports to a user."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        location: Location | None = None,
        snippet: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location
        self.snippet = snippet

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message

    def lines(self) -> list[str]:
        """The error as the CLI prints it: ``Error: ...``, the offending line, then ``hint: ...``."""
        out = [f"Error: {self}"]
        if self.snippet:
            out.extend(f"    {line}" for line in self.snippet.splitlines())
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return out


class WorkflowError(OrchestrateError):
    """The workflow file, its graph or one of its templates is invalid."""


class WorkflowErrors(WorkflowError):
    """Several problems found in one pass, reported together so a user fixes them in one go."""

    def __init__(self, errors: Sequence[WorkflowError]) -> None:
        if not errors:
            raise ValueError("WorkflowErrors needs at least one error")
        first = errors[0]
        super().__init__(first.message, hint=first.hint, location=first.location)
        self.errors = list(errors)

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        return f"{len(self.errors)} problems: " + "; ".join(str(e) for e in self.errors)

    def lines(self) -> list[str]:
        out: list[str] = []
        for error in self.errors:
            out.extend(error.lines())
        if len(self.errors) > 1:
            out.append(f"{len(self.errors)} problems found.")
        return out

    @classmethod
    def raise_if_any(cls, errors: Iterable[WorkflowError]) -> None:
        found = list(errors)
        if len(found) == 1:
            raise found[0]
        if found:
            raise cls(found)


class ProjectError(OrchestrateError):
    """A path, folder or file of the project can't be used as asked."""


class UsageError(OrchestrateError):
    """What the user asked the run to do can't be done as given: params, task name, credentials."""


class RunnerError(OrchestrateError):
    """A runner (provider, command) failed; the original exception is kept as ``__cause__``."""

    exit_code = 1


class StateError(OrchestrateError):
    """A run's state folder can't be read or written."""


class RunFailedError(OrchestrateError):
    """The run finished but failed: a stage failed or the audit said fail."""

    exit_code = 1
