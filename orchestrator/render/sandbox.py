"""The Jinja environment: a sandbox with limits, and a loader confined to two folders.

Templates come from the project's ``content/instructions/`` first, then from the
defaults shipped in the package; ``builtin/<name>`` always means the shipped
one, so a project template can extend the default it replaces. Nothing outside
those folders can be loaded: not by ``..``, absolute names or symlinks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, FileSystemBytecodeCache, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ..project import INSTRUCTIONS_DIR

__all__ = ["BUILTIN_PREFIX", "ConfinedLoader", "Loaded", "Sandbox", "builtin_dir", "make_environment"]

BUILTIN_PREFIX = "builtin/"


def builtin_dir() -> Path:
    # Beside this package's modules, which is where setuptools installs the package data.
    return Path(__file__).resolve().parent.parent / "defaults" / "instructions"


@dataclass
class Loaded:
    """A template file read while rendering: what a generated file's source hash covers."""

    display: str
    data: bytes


class ConfinedLoader(BaseLoader):
    """Finds templates in the project's folder, then the package defaults, never outside them."""

    def __init__(self, instructions_dir: Path | None, builtin: Path) -> None:
        self.project_dir = instructions_dir
        self.builtin = builtin
        self.record: list[Loaded] | None = None

    def _search(self, name: str) -> Iterator[tuple[Path, str]]:
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\\" in name:
            return
        if name.startswith(BUILTIN_PREFIX):
            yield self.builtin, name.removeprefix(BUILTIN_PREFIX)
            return
        if self.project_dir is not None:
            yield self.project_dir, name
        yield self.builtin, name

    def locate(self, name: str) -> tuple[Path, str] | None:
        """The file behind a template name and how messages show it; None when there is none.

        Raises ``TemplateNotFound`` when the name exists but resolves outside its folder.
        """
        for base, rel in self._search(name):
            candidate = base / rel
            if not candidate.is_file():
                continue
            resolved = candidate.resolve()
            if not resolved.is_relative_to(base.resolve()):
                raise TemplateNotFound(f"{name!r} (it resolves outside {base.name}/)")
            display = f"{BUILTIN_PREFIX}{rel}" if base == self.builtin else f"{INSTRUCTIONS_DIR}/{rel}"
            return resolved, display
        return None

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        found = self.locate(template)
        if found is None:
            raise TemplateNotFound(template)
        path, display = found
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TemplateSyntaxError(f"can't read the template: {exc.strerror or exc}", 1, template, display) from None
        loaded = Loaded(display, data)
        try:
            text = data.decode("utf-8-sig").replace("\r\n", "\n")
        except UnicodeDecodeError:
            raise TemplateSyntaxError("template is not valid UTF-8", 1, template, display) from None

        def uptodate() -> bool:
            # Jinja asks this on every cache hit (includes too), so a render records every file it
            # uses without re-reading or re-compiling any. One environment serves one compile.
            if self.record is not None:
                self.record.append(loaded)
            return True

        if self.record is not None:
            self.record.append(loaded)
        return text, display, uptodate

    def list_templates(self) -> list[str]:
        names: set[str] = set()
        for base in (self.project_dir, self.builtin):
            if base is not None and base.is_dir():
                names.update(p.relative_to(base).as_posix() for p in base.rglob("*.md") if p.is_file())
        return sorted(names)


class Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, plus limits on ``*`` and ``**`` so a template can't allocate gigabytes."""

    intercepted_binops = frozenset({"*", "**"})
    max_sequence = 1_000_000

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 1000 and left not in (0, 1, -1):
            raise SecurityError(f"exponent {right} is too large for a template")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if sized and len(seq) * count > self.max_sequence:
                    raise SecurityError("repetition makes a value too large for a template")
        return super().call_binop(context, operator, left, right)


def _bytecode_cache() -> FileSystemBytecodeCache | None:
    """Jinja's per-user cache of compiled templates (keyed by a checksum of each source).

    Compiling the templates is most of what a small ``validate`` spends after start-up;
    the cache makes repeated runs (editors, pre-commit, watch) skip it. Without a safe
    private folder Jinja refuses, and we simply compile every time.
    """
    try:
        # Our own file names: code compiled by a non-sandboxed Jinja elsewhere must never be
        # loaded here, since the sandbox's checks are compiled into the code.
        return FileSystemBytecodeCache(pattern="orchestrate-sandboxed-%s.cache")
    except (RuntimeError, OSError):
        return None


def make_environment(instructions_dir: Path | None) -> tuple[Sandbox, ConfinedLoader]:
    loader = ConfinedLoader(instructions_dir, builtin_dir())
    env = Sandbox(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        bytecode_cache=_bytecode_cache(),
    )
    return env, loader
