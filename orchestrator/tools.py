"""The tools a stage's model may call inside its workspace: ``read``, ``edit``, ``search`` and ``bash``.

Owns their Messages API definitions (name, description, JSON schema), the checking of the
arguments a model sends, and what each tool does and answers. Every path goes through
``Workspace.resolve`` and every command through ``Workspace.run_command``; this module
must not touch the file system or start processes any other way, and must not raise for
anything a model can get wrong: mistakes become error replies the model can act on.
"""

from __future__ import annotations

import asyncio
import codecs
import copy
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import re2

from .fileio import FILE_MODE
from .workspace import BashPolicy, Refusal, Workspace, truncate

__all__ = ["TOOL_NAMES", "ToolReply", "call_tool", "tool_definitions"]

TOOL_NAMES: tuple[str, ...] = ("read", "edit", "search", "bash")
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", ".venv", ".tox", ".mypy_cache", "__pycache__", "node_modules"})
BINARY_PROBE = 8192
MAX_LISTED = 1000
MAX_HITS = 200
MAX_SEARCHED_BYTES = 5_000_000
MAX_SHOWN_LINE = 300


@dataclass(frozen=True)
class ToolReply:
    """The text sent back as a ``tool_result``; ``is_error`` marks a call that did nothing."""

    text: str
    is_error: bool = False


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


_SCHEMAS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "read": (
        "Read a file of the workspace, its lines numbered like `cat -n`, or list a folder two levels deep "
        "(folders end with '/'; hidden entries are skipped). Paths are relative to the workspace root. "
        "Long files are cut; pass view_range to read a part.",
        {
            "path": _string("File or folder, relative to the workspace root, e.g. 'src/app.py' or '.'."),
            "view_range": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 2,
                "maxItems": 2,
                "description": "Optional [start, end] line numbers, 1-based and inclusive; end -1 reads to the end.",
            },
        },
        ["path"],
    ),
    "edit": (
        "Change a text file of the workspace. command 'create' writes file_text to path (making folders, "
        "replacing an existing file); 'str_replace' replaces old_str, which must occur exactly once "
        "(whitespace included), with new_str; 'insert' inserts new_str after line insert_line (0 = at the top). "
        "Files inside .git cannot be edited.",
        {
            "command": {"type": "string", "enum": ["create", "str_replace", "insert"], "description": "What to do."},
            "path": _string("File relative to the workspace root."),
            "file_text": _string("For create: the whole content of the file."),
            "old_str": _string("For str_replace: the exact text to replace; include enough lines to be unique."),
            "new_str": _string("For str_replace (default: empty, deleting old_str) and insert: the new text."),
            "insert_line": {"type": "integer", "description": "For insert: the line after which new_str goes."},
        },
        ["command", "path"],
    ),
    "search": (
        "Find files and text in the workspace. pattern alone lists the files matching a glob ('**/*.py', "
        "'src/*.ts'; without '/' it matches file names at any depth). query searches file contents with a "
        "regular expression (Python's syntax without backreferences or lookaround) and answers 'path:line: text', "
        "in all text files or those matching pattern. "
        "Skips .git, node_modules, __pycache__ and binary files.",
        {
            "pattern": _string("Glob of file paths, relative to path."),
            "query": _string("Regular expression to look for in each line (no backreferences or lookaround)."),
            "path": _string("Folder (or file) to search in, relative to the workspace root; default the root."),
        },
        [],
    ),
    "bash": (
        "Run one command in the workspace root and get its exit code, stdout and stderr. Only the commands "
        "the workflow allows can run; there is no terminal and no input.",
        {"command": _string("The command line, e.g. 'pytest -q tests/test_app.py'.")},
        ["command"],
    ),
}


def tool_definitions(names: Sequence[str], *, bash: BashPolicy | None = None) -> list[dict[str, Any]]:
    """The ``tools`` entries of a Messages API request for ``names``, in order.

    With ``bash``, the bash tool's description lists the allowed commands, so the model
    does not have to find them out by being refused.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"tool names repeat: {list(names)}")
    definitions = []
    for name in names:
        if name not in _SCHEMAS:
            raise ValueError(f"unknown tool {name!r}; the tools are {', '.join(TOOL_NAMES)}")
        description, properties, required = _SCHEMAS[name]
        if name == "bash" and bash is not None and bash.allow:
            syntax = "shell syntax (pipes, &&) is allowed" if bash.shell else "no shell syntax (pipes, ;, $VAR)"
            allowed = ", ".join(repr(entry) for entry in bash.allow)
            description += f" Allowed commands (each must start with one): {allowed}; {syntax}."
        schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
        definitions.append({"name": name, "description": description, "input_schema": copy.deepcopy(schema)})
    return definitions


def _check_arguments(name: str, arguments: Any) -> list[str]:
    """What is wrong with ``arguments`` by the tool's own schema (the subset of JSON Schema it uses)."""
    if not isinstance(arguments, dict):
        return [f"the arguments must be a JSON object, got {type(arguments).__name__}"]
    _, properties, required = _SCHEMAS[name]
    problems = [f"{key!r} is required" for key in required if key not in arguments]
    for key, value in arguments.items():
        spec = properties.get(key)
        if spec is None:
            problems.append(f"{key!r} is not an argument of {name} (it takes {', '.join(properties)})")
        elif spec["type"] == "string" and not isinstance(value, str):
            problems.append(f"{key!r} must be a string")
        elif spec["type"] == "integer" and not _is_int(value):
            problems.append(f"{key!r} must be an integer")
        elif spec["type"] == "array" and not (
            isinstance(value, list) and len(value) == spec["minItems"] and all(_is_int(v) for v in value)
        ):
            problems.append(f"{key!r} must be a list of {spec['minItems']} integers")
        elif "enum" in spec and value not in spec["enum"]:
            problems.append(f"{key!r} must be one of {', '.join(spec['enum'])}")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_binary(handle: BinaryIO) -> bool:
    probe = handle.read(BINARY_PROBE)
    handle.seek(0)
    return b"\0" in probe


def _regular_file(workspace: Workspace, target: Path) -> None:
    if target.is_dir():
        raise Refusal(f"{workspace.relative(target)} is a folder, not a file.")
    if not target.exists():
        return
    info = target.stat()
    if not stat.S_ISREG(info.st_mode):
        raise Refusal(f"{workspace.relative(target)} is not a regular file.")
    # A hard link's other name may lie outside the workspace, and no path shows where.
    if info.st_nlink > 1:
        raise Refusal(f"{workspace.relative(target)} is a hard link shared with another file; it cannot be used.")


def _lines_of(handle: BinaryIO, cap: int) -> Iterator[bytes]:
    """The file's lines (split on '\\n' only), each cut to ``cap`` bytes so one huge line cannot fill memory."""
    while piece := handle.readline(cap):
        if len(piece) == cap and not piece.endswith(b"\n"):
            while (rest := handle.readline(cap)) and not rest.endswith(b"\n"):
                pass
        yield piece


def _read(workspace: Workspace, arguments: dict[str, Any]) -> ToolReply:
    target = workspace.resolve(arguments["path"])
    rel = workspace.relative(target)
    if target.is_dir():
        if "view_range" in arguments:
            return ToolReply(f"{rel} is a folder; view_range only applies to files.", True)
        return ToolReply(_listing(workspace, target))
    _regular_file(workspace, target)
    start, end = arguments.get("view_range", [1, -1])
    if start < 1 or (end != -1 and end < start):
        return ToolReply(
            f"view_range {[start, end]} is invalid: use [start, end] with 1 <= start <= end, or end -1.", True
        )
    budget, count, cut_after = workspace.max_output - 200, 0, None
    shown: list[str] = []
    with target.open("rb") as handle:
        if _is_binary(handle):
            return ToolReply(f"{rel} is a binary file; read only shows text files.", True)
        for count, raw in enumerate(_lines_of(handle, workspace.max_output * 4), 1):
            if count < start:
                continue
            if end != -1 and count > end:
                break
            try:
                line = codecs.getincrementaldecoder("utf-8")().decode(raw, final=raw.endswith(b"\n"))
            except UnicodeDecodeError:
                return ToolReply(f"{rel} is not UTF-8 text (line {count}); read only shows UTF-8 files.", True)
            entry = f"{count:6}\t" + line.removesuffix("\n").removesuffix("\r")
            budget -= len(entry) + 1
            if budget < 0 and shown:
                cut_after = count - 1
                break
            shown.append(entry)
    if count == 0:
        return ToolReply(f"{rel} is empty.")
    if start > count:
        return ToolReply(f"view_range starts at line {start} but {rel} has {count} lines.", True)
    if cut_after is not None:
        shown.append(f"[... cut after line {cut_after}; pass view_range [{cut_after + 1}, -1] to read on ...]")
    return ToolReply("\n".join(shown))


def _listing(workspace: Workspace, folder: Path) -> str:
    entries: list[str] = []

    def visit(current: Path, depth: int) -> None:
        try:
            children = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError:
            return
        for child in children:
            if len(entries) > MAX_LISTED:
                return
            if child.name.startswith(".") or child.name in SKIPPED_DIRS:
                continue
            path = Path(child.path)
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(workspace.root):
                continue
            is_dir = real.is_dir()
            entries.append(workspace.relative(path) + ("/" if is_dir else ""))
            # A linked folder is shown but not entered: it is listed where it really lives.
            if is_dir and depth < 2 and not child.is_symlink():
                visit(path, depth + 1)

    visit(folder, 1)
    rel = workspace.relative(folder)
    label = "the workspace root" if rel == "." else f"{rel}/"
    if not entries:
        return f"{label} is empty (hidden entries skipped)."
    more = "\n... more entries not listed; read a subfolder" if len(entries) > MAX_LISTED else ""
    header = f"{label}, two levels deep (hidden entries, __pycache__, node_modules skipped):"
    return "\n".join([header, *entries[:MAX_LISTED]]) + more


def _edit(workspace: Workspace, arguments: dict[str, Any]) -> ToolReply:
    command = arguments["command"]
    needs = {"create": {"file_text"}, "str_replace": {"old_str"}, "insert": {"insert_line", "new_str"}}[command]
    takes = needs | ({"new_str"} if command == "str_replace" else set())
    missing = sorted(needs - arguments.keys())
    unused = sorted(arguments.keys() - takes - {"command", "path"})
    if missing:
        return ToolReply(f"{command} needs {', '.join(missing)}.", True)
    if unused:
        return ToolReply(f"{command} does not use {', '.join(unused)}; leave it out.", True)
    target = workspace.resolve(arguments["path"])
    rel = workspace.relative(target)
    if any(part.lower() == ".git" for part in Path(rel).parts):
        raise Refusal(f"{rel} is inside .git; the repository's internals cannot be edited.")
    for protected in workspace.protected:
        if rel == protected or rel.startswith(protected + "/"):
            raise Refusal(
                f"{rel} is inside {protected}/, which orchestrate keeps (run records, compiled output, instructions "
                "or workflows); no stage may change it."
            )
    _regular_file(workspace, target)
    if command == "create":
        existed = target.exists()
        _write(target, arguments["file_text"])
        count = len(_split_lines(arguments["file_text"]))
        return ToolReply(f"{'Overwrote' if existed else 'Created'} {rel} ({count} lines).")
    if not target.exists():
        return ToolReply(f"{rel} does not exist; use the create command to make it.", True)
    with target.open("rb") as handle:
        if _is_binary(handle):
            return ToolReply(f"{rel} is a binary file; edit only changes text files.", True)
        try:
            text = handle.read().decode("utf-8")
        except UnicodeDecodeError:
            return ToolReply(f"{rel} is not UTF-8 text; edit only changes UTF-8 files.", True)
    if "\r\n" in text and "\r" not in arguments.get("old_str", "") + arguments.get("new_str", ""):
        # read shows lines without their '\r'; text copied from it must still match a CRLF file.
        arguments = {
            key: value.replace("\n", "\r\n") if key.endswith("_str") else value for key, value in arguments.items()
        }
    if command == "str_replace":
        return _replace(target, rel, text, arguments["old_str"], arguments.get("new_str", ""))
    return _insert(target, rel, text, arguments["insert_line"], arguments["new_str"])


def _replace(target: Path, rel: str, text: str, old: str, new: str) -> ToolReply:
    if not old:
        return ToolReply("old_str is empty; give the exact text to replace.", True)
    found = [match.start() for match in re.finditer(re.escape(old), text)]
    if not found:
        return ToolReply(
            f"old_str was not found in {rel}; nothing changed. Read the file and copy the text exactly, "
            "whitespace and indentation included.",
            True,
        )
    if len(found) > 1:
        lines = ", ".join(str(text.count("\n", 0, at) + 1) for at in found)
        return ToolReply(
            f"old_str occurs {len(found)} times in {rel} (at lines {lines}); nothing changed. "
            "Include more surrounding text so that it occurs once.",
            True,
        )
    _write(target, text.replace(old, new, 1))
    first = text.count("\n", 0, found[0]) + 1
    now = f"; it is now {_span(first, new)}" if new else ""
    return ToolReply(f"Edited {rel}: replaced the text at {_span(first, old)}{now}.")


def _insert(target: Path, rel: str, text: str, after: int, new: str) -> ToolReply:
    lines = _split_lines(text)
    if not 0 <= after <= len(lines):
        return ToolReply(
            f"insert_line {after} is out of range: {rel} has {len(lines)} lines, so use 0 to {len(lines)}.", True
        )
    eol = "\r\n" if "\r\n" in text else "\n"
    block = new if new.endswith("\n") or not new else new + eol
    if after == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += eol
    lines.insert(after, block)
    _write(target, "".join(lines))
    return ToolReply(f"Edited {rel}: inserted {_span(after + 1, block) if block else 'nothing'}.")


def _span(first: int, piece: str) -> str:
    """Which lines ``piece`` covers when it starts on line ``first``: 'line 3' or 'lines 3-5'."""
    last = first + piece.removesuffix("\n").count("\n")
    return f"line {first}" if last == first else f"lines {first}-{last}"


def _split_lines(text: str) -> list[str]:
    """Lines with their newline, split on '\\n' only, as ``read`` numbers them."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def _write(target: Path, text: str) -> None:
    """Replace ``target`` atomically, keeping its permission bits (a new file's: 0666 less the umask)."""
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else FILE_MODE
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".edit-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _glob(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over posix paths: '*' and '?' stay within a folder, '**/' spans any number of them."""
    parts, i = [], 0
    pattern = pattern.removeprefix("./")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
            continue
        char = pattern[i]
        close = pattern.find("]", i + 2) if char == "[" else -1
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 1
        elif char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif close > 0:
            inner = pattern[i + 1 : close]
            negate = inner.startswith("!")
            escaped = "".join(c if c == "-" else re.escape(c) for c in inner[negate:])
            parts.append("[" + "^" * negate + escaped + "]")
            i = close
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile("".join(parts))


def _files(workspace: Workspace, base: Path) -> Iterator[Path]:
    """Regular files under ``base`` in sorted order, skipping noise folders and links that lead outside."""
    if not base.is_dir():
        _regular_file(workspace, base)
        yield base
        return
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not os.path.islink(os.path.join(folder, d)))
        for name in sorted(names):
            path = Path(folder, name)
            real = Path(os.path.realpath(path))
            if real.is_relative_to(workspace.root) and real.is_file() and real.stat().st_nlink == 1:
                yield path


def _search(workspace: Workspace, arguments: dict[str, Any]) -> ToolReply:
    pattern, query = arguments.get("pattern"), arguments.get("query")
    if pattern is None and query is None:
        return ToolReply("give a pattern (a glob of file paths), a query (a regular expression), or both.", True)
    base = workspace.resolve(arguments.get("path", "."))
    if not base.exists():
        return ToolReply(f"no such file or folder: {workspace.relative(base)}", True)
    try:
        regex = _regex(query) if query is not None else None
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return ToolReply(
            f"query is not a regular expression this search takes ({reason}): RE2 syntax, as Python's re "
            "without backreferences or lookaround.",
            True,
        )
    try:
        matcher = _glob(pattern) if pattern else None
    except re.error as exc:
        return ToolReply(f"pattern is not a valid glob: {exc}.", True)
    by_name = pattern is not None and "/" not in pattern.removeprefix("./")
    hits: list[str] = []
    total = 0
    for path in _files(workspace, base):
        within = path.name if by_name or path == base else path.relative_to(base).as_posix()
        if matcher and not matcher.fullmatch(within):
            continue
        rel = workspace.relative(path)
        if regex is None:
            total += 1
            hits.extend([rel] if len(hits) < MAX_HITS else [])
            continue
        for number, line in _matching_lines(path, regex):
            total += 1
            if len(hits) < MAX_HITS:
                shown = line if len(line) <= MAX_SHOWN_LINE else line[:MAX_SHOWN_LINE] + " [...]"
                hits.append(f"{rel}:{number}: {shown}")
    if not hits:
        return ToolReply("No files match." if regex is None else "No matches.")
    more = f"\n... {total - len(hits)} more; narrow the pattern, query or path" if total > len(hits) else ""
    return ToolReply("\n".join(hits) + more)


def _regex(query: str) -> Any:
    """The query compiled by RE2, whose time is linear in the text: no pattern a model writes can hold the run
    (Python's ``re`` can take exponential time, holding the interpreter lock, where no timeout reaches)."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(query, options)


def _matching_lines(path: Path, regex: Any) -> Iterator[tuple[int, str]]:
    try:
        if path.stat().st_size > MAX_SEARCHED_BYTES:
            return
        with path.open("rb") as handle:
            if _is_binary(handle):
                return
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return
    for number, line in enumerate(text.split("\n"), 1):
        if regex.search(line):
            yield number, line.rstrip("\r")


async def _bash(workspace: Workspace, arguments: dict[str, Any]) -> ToolReply:
    result = await workspace.run_command(arguments["command"])
    if result.exit_code is None and not result.timed_out:
        return ToolReply(f"the command could not start: {result.stderr}", True)
    if result.timed_out:
        head = f"timed out after {workspace.bash.timeout:g} s; the command and its child processes were killed"
    else:
        head = f"exit code: {result.exit_code}"
    # Share the budget so a flood on one stream cannot hide the other.
    budget = max(workspace.max_output - 100, 0)
    err_room = max(budget - len(result.stdout), budget // 2)
    stderr = truncate(result.stderr, err_room)
    stdout = truncate(result.stdout, max(budget - len(stderr), 0))
    return ToolReply(f"{head}\nstdout:\n{stdout or '(empty)'}\nstderr:\n{stderr or '(empty)'}", result.timed_out)


_FILE_TOOLS: dict[str, Callable[[Workspace, dict[str, Any]], ToolReply]] = {
    "read": _read,
    "edit": _edit,
    "search": _search,
}


def _os_error(workspace: Workspace, exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    where = Path(exc.filename) if isinstance(exc.filename, str) else None
    if where is not None and where.is_relative_to(workspace.root):
        return f"{reason}: {workspace.relative(where)}"
    return reason


async def call_tool(workspace: Workspace, name: str, arguments: Any) -> ToolReply:
    """Run tool ``name`` with the model's ``arguments``; every mistake becomes an error reply, never an exception."""
    if not isinstance(name, str) or name not in TOOL_NAMES:
        return ToolReply(f"unknown tool {name!r}; the tools are {', '.join(TOOL_NAMES)}.", True)
    problems = _check_arguments(name, arguments)
    if problems:
        return ToolReply(f"invalid arguments for {name}: {'; '.join(problems)}.", True)
    try:
        if name == "bash":
            reply = await _bash(workspace, arguments)
        else:
            # File tools block on the disk (and a regex can take long): keep the event loop free for other stages.
            reply = await asyncio.to_thread(_FILE_TOOLS[name], workspace, arguments)
    except Refusal as refusal:
        reply = ToolReply(refusal.message, True)
    except OSError as exc:
        reply = ToolReply(_os_error(workspace, exc), True)
    except UnicodeError:
        reply = ToolReply("the text has characters that cannot be written as UTF-8 (lone surrogates).", True)
    return ToolReply(truncate(reply.text, workspace.max_output), reply.is_error)
