"""The layout's rules, checked by walking the package's imports and calls."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))

# Each third-party library has one home (the yaml serializer also writes agent frontmatter).
HOMES = {
    "click": {"cli/"},  # the command-line package
    "yaml": {"loader.py", "agent_config.py"},
    "networkx": {"graph.py"},
    "jinja2": {"render/sandbox.py", "render/checks.py", "render/renderer.py", "ui/pages.py"},  # ui: its own pages
    "anthropic": {"runners/anthropic.py"},
    "rich": {"console.py"},
    "jsonschema": {"contracts.py"},
    "referencing": {"contracts.py"},
    "watchfiles": {"watcher.py"},
    "genai_prices": {"cost.py"},
    "re2": {"tools.py"},
    "temporalio": {"temporal/"},  # runs on Temporal: the package of the temporal extra
    "opentelemetry": {"telemetry.py"},  # traces: the otel extra
    "starlette": {"ui/app.py"},  # the dashboard: the ui extra
    "uvicorn": {"ui/app.py"},
    "markdown_it": {"ui/pages.py"},
}


def in_cli(name: str) -> bool:
    return name.startswith("cli/")


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) for every import; level > 0 for relative imports."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def resolve(path: Path, module: str, level: int) -> str | None:
    """The package-relative file a relative import points at, if it is ours."""
    if level == 0:
        if not module.startswith("orchestrator"):
            return None
        parts = module.split(".")[1:]
        base = PACKAGE
    else:
        base = path.parent
        for _ in range(level - 1):
            base = base.parent
        parts = module.split(".") if module else []
    target = base.joinpath(*parts)
    if target.with_suffix(".py").exists():
        return rel(target.with_suffix(".py"))
    if (target / "__init__.py").exists():
        return rel(target / "__init__.py")
    return None


def home_of(module: str) -> str:
    """A module's home as ``HOMES`` names it: its package for the cli and temporal packages."""
    return next((f"{package}/" for package in ("cli", "temporal") if module.startswith(f"{package}/")), module)


@pytest.mark.parametrize("library", sorted(HOMES))
def test_each_library_has_one_home(library: str) -> None:
    users = {rel(p) for p in MODULES if any(m.split(".")[0] == library and lvl == 0 for m, lvl in imports(p))}
    assert {home_of(u) for u in users} <= HOMES[library]


def test_the_temporal_package_is_imported_only_when_a_command_asks_for_it() -> None:
    """Nothing outside it imports ``orchestrator.temporal`` at module level: a local run never loads temporalio."""
    for path in MODULES:
        if rel(path).startswith("temporal/"):
            continue
        for node in ast.parse(path.read_text()).body:  # module level only; imports inside functions are lazy
            if isinstance(node, ast.ImportFrom) and resolve(path, node.module or "", node.level) is not None:
                target = resolve(path, node.module or "", node.level)
                assert target is None or not target.startswith("temporal/"), f"{rel(path)} imports {target}"


def test_nothing_imports_the_cli() -> None:
    users = {rel(p) for p in MODULES for m, lvl in imports(p) if in_cli(resolve(p, m, lvl) or "")}
    assert {u for u in users if not in_cli(u)} <= {"__main__.py"}


def test_no_circular_imports() -> None:
    graph: nx.DiGraph[str] = nx.DiGraph()
    for path in MODULES:
        for module, level in imports(path):
            target = resolve(path, module, level)
            if target and target != rel(path) and target != "__init__.py":
                graph.add_edge(rel(path), target)
    assert list(nx.simple_cycles(graph)) == []


def test_the_library_never_prints_exits_or_reads_the_environment() -> None:
    offences = []
    for path in MODULES:
        if in_cli(rel(path)) or rel(path) == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "input"):
                offences.append(f"{rel(path)}:{node.lineno} {node.func.id}()")
            if isinstance(node, ast.Attribute) and (
                (node.attr in ("exit", "argv") and isinstance(node.value, ast.Name) and node.value.id == "sys")
                or (
                    node.attr in ("environ", "getenv", "getcwd")
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "os"
                )
                or (node.attr == "cwd" and isinstance(node.value, ast.Name) and node.value.id == "Path")
            ):
                offences.append(f"{rel(path)}:{node.lineno} {ast.unparse(node)}")
    assert offences == []


def test_every_module_says_what_it_owns() -> None:
    assert [rel(p) for p in MODULES if not ast.get_docstring(ast.parse(p.read_text()))] == []


def test_public_api_is_sorted_and_importable() -> None:
    import orchestrator

    assert orchestrator.__all__ == sorted(orchestrator.__all__)
    for name in orchestrator.__all__:
        assert hasattr(orchestrator, name), name
