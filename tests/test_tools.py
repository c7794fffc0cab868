"""The workspace tools: read, edit, search and bash confined to one folder, and every way out refused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orchestrator.tools import TOOL_NAMES, ToolReply, call_tool, tool_definitions
from orchestrator.workspace import BashPolicy, Refusal, Workspace, run_process, scrub_env, truncate

SECRET = "TOP-SECRET-CONTENT"
PATH = os.environ.get("PATH", "/usr/bin:/bin")


@dataclass
class Site:
    """A workspace folder with an ``outside`` sibling holding a secret the tools must never reach."""

    root: Path
    outside: Path
    secret: Path

    def snapshot(self) -> dict[str, bytes]:
        return {p.relative_to(self.outside).as_posix(): p.read_bytes() for p in self.outside.rglob("*") if p.is_file()}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("def main():\n    return 'hello'\n\nmain()\n")
    (root / "README.md").write_text("# Demo\nhello world\n")
    (outside / "sentinel").mkdir(parents=True)
    (outside / "sentinel" / "keep.txt").write_text("sentinel\n")
    secret = outside / "secret.txt"
    secret.write_text(f"{SECRET}\nline two\n")
    return Site(root, outside, secret)


def workspace(site: Site, *allow: str, shell: bool = False, timeout: float = 10.0, **kwargs: Any) -> Workspace:
    policy = BashPolicy(allow=allow, shell=shell, timeout=timeout) if allow else None
    kwargs.setdefault("environ", {"PATH": PATH})
    return Workspace(site.root, bash=policy, **kwargs)


def call(ws: Workspace, name: Any, arguments: Any) -> ToolReply:
    return asyncio.run(call_tool(ws, name, arguments))


def ok(ws: Workspace, name: str, arguments: Any) -> str:
    reply = call(ws, name, arguments)
    assert not reply.is_error, reply.text
    return reply.text


def error(ws: Workspace, name: Any, arguments: Any) -> str:
    reply = call(ws, name, arguments)
    assert reply.is_error, reply.text
    return reply.text


def alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- confinement -------------------------------------------------------------------------------------------------

ESCAPES = {
    "dotdot": ("../outside/secret.txt", "outside the workspace"),
    "absolute": ("{secret}", "outside the workspace"),
    "symlink": ("link_out", "symbolic link"),
    "symlinked parent": ("linked_dir/secret.txt", "symbolic link"),
    "very long": ("a/" * 2500, "too long"),
    "long name": ("n" * 300, "longer than 255"),
    "nul byte": ("src/app.py\0.txt", "NUL byte"),
    "empty": ("", "empty"),
}


def attempts(path: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("read", {"path": path}),
        ("edit", {"command": "create", "path": path, "file_text": "pwned\n"}),
        ("edit", {"command": "str_replace", "path": path, "old_str": SECRET, "new_str": "pwned"}),
        ("edit", {"command": "insert", "path": path, "insert_line": 0, "new_str": "pwned"}),
        ("search", {"path": path, "query": "SECRET"}),
        ("search", {"path": path, "pattern": "*"}),
    ]


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_every_tool_refuses_paths_leading_out(site: Site, escape: str) -> None:
    os.symlink(site.secret, site.root / "link_out")
    os.symlink(site.outside, site.root / "linked_dir")
    before = site.snapshot()
    ws = workspace(site)
    path, reason = ESCAPES[escape]
    for name, arguments in attempts(path.format(secret=site.secret)):
        text = error(ws, name, arguments)
        assert reason in text, (name, text)
        assert SECRET not in text and "pwned" not in text
    assert site.snapshot() == before
    assert sorted(p.name for p in site.outside.iterdir()) == ["secret.txt", "sentinel"]


def test_symlinks_made_by_an_allowed_command_lead_nowhere(site: Site) -> None:
    before = site.snapshot()
    ws = workspace(site, "ln")
    assert "exit code: 0" in ok(ws, "bash", {"command": f"ln -s {site.secret} made_link"})
    assert "exit code: 0" in ok(ws, "bash", {"command": f"ln -s {site.outside} made_dir"})
    assert (site.root / "made_link").is_symlink()
    for path in ("made_link", "made_dir/secret.txt", "made_dir/sentinel/new.txt"):
        for name, arguments in attempts(path):
            text = error(ws, name, arguments)
            assert "symbolic link" in text and SECRET not in text
    assert site.snapshot() == before


def test_hard_links_and_special_files_are_refused(site: Site) -> None:
    before = site.snapshot()
    ws = workspace(site, "ln", "mkfifo")
    ok(ws, "bash", {"command": f"ln {site.secret} hard"})
    ok(ws, "bash", {"command": "mkfifo pipe"})
    for name, arguments in attempts("hard"):
        text = error(ws, name, arguments)
        assert "hard link" in text and SECRET not in text
    assert ok(ws, "search", {"query": "SECRET"}) == "No matches."
    for name, arguments in attempts("pipe"):  # would block forever if opened
        assert "not a regular file" in error(ws, name, arguments)
    assert site.snapshot() == before


def test_listing_and_search_do_not_follow_links_out(site: Site) -> None:
    os.symlink(site.secret, site.root / "link_out")
    os.symlink(site.outside, site.root / "linked_dir")
    ws = workspace(site)
    listing = ok(ws, "read", {"path": "."})
    assert "src/app.py" in listing and "link_out" not in listing and "linked_dir" not in listing
    assert ok(ws, "search", {"query": "SECRET"}) == "No matches."
    assert "secret" not in ok(ws, "search", {"pattern": "**/*"})


def test_absolute_paths_inside_the_root_work(site: Site) -> None:
    ws = workspace(site)
    assert "return 'hello'" in ok(ws, "read", {"path": str(site.root / "src" / "app.py")})
    ok(ws, "edit", {"command": "create", "path": str(site.root / "new.txt"), "file_text": "x\n"})
    assert (site.root / "new.txt").read_text() == "x\n"
    assert "src/app.py:2:" in ok(ws, "search", {"path": str(site.root / "src"), "query": "hello"})


def test_links_that_stay_inside_are_followed(site: Site) -> None:
    os.symlink(site.root / "src", site.root / "code")
    ws = workspace(site)
    assert "return 'hello'" in ok(ws, "read", {"path": "code/app.py"})
    assert ws.resolve("code/app.py") == site.root.resolve() / "src" / "app.py"
    assert ws.relative(ws.resolve(".")) == "."


# --- read --------------------------------------------------------------------------------------------------------


def test_read_numbers_lines_like_cat_n(site: Site) -> None:
    ws = workspace(site)
    text = ok(ws, "read", {"path": "src/app.py"})
    assert text.splitlines() == ["     1\tdef main():", "     2\t    return 'hello'", "     3\t", "     4\tmain()"]
    assert ok(ws, "read", {"path": "src/app.py", "view_range": [2, 3]}).splitlines() == [
        "     2\t    return 'hello'",
        "     3\t",
    ]
    assert ok(ws, "read", {"path": "src/app.py", "view_range": [4, -1]}) == "     4\tmain()"
    assert "has 4 lines" in error(ws, "read", {"path": "src/app.py", "view_range": [9, -1]})
    assert "invalid" in error(ws, "read", {"path": "src/app.py", "view_range": [3, 2]})


def test_read_lists_a_folder_two_levels_deep(site: Site) -> None:
    for rel in ("a/b/c/deep.txt", ".hidden/x", "src/__pycache__/app.pyc", "node_modules/m/index.js", ".env"):
        (site.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (site.root / rel).write_text("x")
    lines = ok(workspace(site), "read", {"path": "."}).splitlines()
    assert lines[0].startswith("the workspace root, two levels deep")
    assert lines[1:] == ["README.md", "a/", "a/b/", "src/", "src/app.py"]
    assert ok(workspace(site), "read", {"path": "a"}).splitlines()[1:] == ["a/b/", "a/b/c/"]


def test_read_refuses_binary_and_non_utf8_files(site: Site) -> None:
    (site.root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (site.root / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    ws = workspace(site)
    assert "binary" in error(ws, "read", {"path": "logo.png"})
    assert "not UTF-8" in error(ws, "read", {"path": "latin.txt"})
    assert "no such file" in error(ws, "read", {"path": "missing.txt"})


def test_read_cuts_long_files_and_says_how_to_go_on(site: Site) -> None:
    (site.root / "big.txt").write_text("".join(f"line {n}\n" for n in range(1, 5001)))
    ws = workspace(site, max_output=2000)
    text = ok(ws, "read", {"path": "big.txt"})
    assert len(text) <= 2000 and text.startswith("     1\tline 1\n")
    cut = int(re.findall(r"view_range \[(\d+), -1\]", text)[0])
    assert ok(ws, "read", {"path": "big.txt", "view_range": [cut, cut]}) == f"{cut:6}\tline {cut}"


# --- edit --------------------------------------------------------------------------------------------------------


def test_edit_create_makes_folders_and_says_when_it_overwrote(site: Site) -> None:
    ws = workspace(site)
    assert ok(ws, "edit", {"command": "create", "path": "pkg/sub/new.py", "file_text": "a\nb\n"}) == (
        "Created pkg/sub/new.py (2 lines)."
    )
    assert (site.root / "pkg/sub/new.py").read_text() == "a\nb\n"
    assert ok(ws, "edit", {"command": "create", "path": "pkg/sub/new.py", "file_text": "c\n"}).startswith("Overwrote")
    assert (site.root / "pkg/sub/new.py").read_text() == "c\n"
    assert not [p for p in (site.root / "pkg/sub").iterdir() if p.name != "new.py"]  # no temp file left


def test_edit_str_replace(site: Site) -> None:
    ws = workspace(site)
    app = site.root / "src" / "app.py"
    app.chmod(0o755)
    text = ok(ws, "edit", {"command": "str_replace", "path": "src/app.py", "old_str": "'hello'", "new_str": "'bye'"})
    assert text == "Edited src/app.py: replaced the text at line 2; it is now line 2."
    assert app.read_text() == "def main():\n    return 'bye'\n\nmain()\n"
    assert app.stat().st_mode & 0o777 == 0o755
    assert "not found" in error(ws, "edit", {"command": "str_replace", "path": "src/app.py", "old_str": "nope"})
    block = {
        "command": "str_replace",
        "path": "src/app.py",
        "old_str": "def main():\n    return 'bye'\n",
        "new_str": "",
    }
    assert ok(ws, "edit", block) == "Edited src/app.py: replaced the text at lines 1-2."
    assert app.read_text() == "\nmain()\n"
    (site.root / "twice.py").write_text("x = 1\ny = 2\nx = 1\n")
    text = error(ws, "edit", {"command": "str_replace", "path": "twice.py", "old_str": "x = 1", "new_str": "x = 3"})
    assert "2 times" in text and "lines 1, 3" in text
    assert (site.root / "twice.py").read_text() == "x = 1\ny = 2\nx = 1\n"


def test_edit_str_replace_matches_text_copied_from_a_crlf_file(site: Site) -> None:
    (site.root / "dos.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    ws = workspace(site)
    assert "\r" not in ok(ws, "read", {"path": "dos.txt"})
    ok(ws, "edit", {"command": "str_replace", "path": "dos.txt", "old_str": "one\ntwo", "new_str": "1\n2"})
    assert (site.root / "dos.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"
    ok(ws, "edit", {"command": "insert", "path": "dos.txt", "insert_line": 1, "new_str": "1.5"})
    assert (site.root / "dos.txt").read_bytes() == b"1\r\n1.5\r\n2\r\nthree\r\n"


def test_edit_refuses_text_that_is_not_unicode(site: Site) -> None:
    text = error(workspace(site), "edit", {"command": "create", "path": "bad.txt", "file_text": "a\ud800b"})
    assert "UTF-8" in text
    assert not (site.root / "bad.txt").exists()


def test_edit_insert(site: Site) -> None:
    ws = workspace(site)
    (site.root / "list.txt").write_text("b\nc")
    assert ok(ws, "edit", {"command": "insert", "path": "list.txt", "insert_line": 0, "new_str": "a"}) == (
        "Edited list.txt: inserted line 1."
    )
    assert ok(ws, "edit", {"command": "insert", "path": "list.txt", "insert_line": 3, "new_str": "d\ne\n"}) == (
        "Edited list.txt: inserted lines 4-5."
    )
    assert (site.root / "list.txt").read_text() == "a\nb\nc\nd\ne\n"
    text = error(ws, "edit", {"command": "insert", "path": "list.txt", "insert_line": 9, "new_str": "z"})
    assert "out of range" in text and "0 to 5" in text
    assert "create" in error(ws, "edit", {"command": "insert", "path": "nope.txt", "insert_line": 0, "new_str": "z"})


def test_edit_refuses_dot_git_folders_and_binaries(site: Site) -> None:
    (site.root / ".git").mkdir()
    (site.root / ".git" / "config").write_text("[core]\n")
    (site.root / "blob.bin").write_bytes(b"ab\0cd")
    ws = workspace(site)
    assert ".git" in error(ws, "edit", {"command": "create", "path": ".git/config", "file_text": "x"})
    assert ".git" in error(ws, "edit", {"command": "create", "path": ".git/hooks/pre-commit", "file_text": "x"})
    assert (site.root / ".git" / "config").read_text() == "[core]\n"
    assert not (site.root / ".git" / "hooks").exists()
    assert "[core]" in ok(ws, "read", {"path": ".git/config"})
    assert "binary" in error(ws, "edit", {"command": "str_replace", "path": "blob.bin", "old_str": "ab"})
    assert "folder" in error(ws, "edit", {"command": "create", "path": "src", "file_text": "x"})


# --- search ------------------------------------------------------------------------------------------------------


def test_search_globs_and_greps(site: Site) -> None:
    (site.root / "src" / "util.py").write_text("import re\nHELLO = 'hello'\n")
    (site.root / "node_modules" / "m").mkdir(parents=True)
    (site.root / "node_modules" / "m" / "hello.py").write_text("hello\n")
    (site.root / ".git").mkdir()
    (site.root / ".git" / "HEAD.py").write_text("hello\n")
    (site.root / "image.bin").write_bytes(b"hello\0world")
    ws = workspace(site)
    assert ok(ws, "search", {"pattern": "**/*.py"}).splitlines() == ["src/app.py", "src/util.py"]
    assert ok(ws, "search", {"pattern": "*.py"}).splitlines() == ["src/app.py", "src/util.py"]
    assert ok(ws, "search", {"pattern": "src/u*.py"}) == "src/util.py"
    assert ok(ws, "search", {"query": r"hel+o"}).splitlines() == [
        "README.md:2: hello world",
        "src/app.py:2:     return 'hello'",
        "src/util.py:2: HELLO = 'hello'",
    ]
    assert ok(ws, "search", {"query": "hello", "pattern": "*.md"}) == "README.md:2: hello world"
    assert ok(ws, "search", {"query": "hello", "path": "src/util.py"}) == "src/util.py:2: HELLO = 'hello'"
    assert ok(ws, "search", {"query": "absent"}) == "No matches."


def test_search_errors_and_caps(site: Site) -> None:
    ws = workspace(site)
    assert "regular expression" in error(ws, "search", {"query": "(unclosed"})
    assert "pattern" in error(ws, "search", {"path": "src"})
    assert "no such file" in error(ws, "search", {"path": "missing", "query": "x"})
    for n in range(250):
        (site.root / f"f{n:03}.txt").write_text("match\n")
    lines = ok(ws, "search", {"query": "match"}).splitlines()
    assert len(lines) == 201 and lines[-1].startswith("... 50 more")


# --- bash --------------------------------------------------------------------------------------------------------


def test_bash_is_off_unless_the_workflow_grants_it(site: Site) -> None:
    text = error(workspace(site), "bash", {"command": "ls"})
    assert "not allowed" in text and "permissions: {bash: [...]}" in text


def test_bash_runs_allowed_commands_and_refuses_the_rest(site: Site) -> None:
    ws = workspace(site, "echo", "false", "ls")
    assert ok(ws, "bash", {"command": "echo 'a;b' \"c | d\""}) == "exit code: 0\nstdout:\na;b c | d\n\nstderr:\n(empty)"
    assert ok(ws, "bash", {"command": "false"}).startswith("exit code: 1")
    assert "README.md" in ok(ws, "bash", {"command": "ls"})  # runs in the root
    text = error(ws, "bash", {"command": "rm -rf src"})
    assert "not an allowed command" in text and "'echo', 'false', 'ls'" in text
    assert (site.root / "src" / "app.py").exists()


@pytest.mark.parametrize(
    ("allow", "command"),
    [
        (("pytest",), "pytest-foo"),
        (("pytest",), "/usr/bin/pytest"),
        (("pytest",), "./pytest"),
        (("npm test",), "npm install"),
        (("npm test",), "npm"),
        (("git diff",), "git diff-tree"),
        (("git diff",), "FOO=1 git diff"),
    ],
)
def test_near_misses_of_an_allowed_prefix_are_refused(site: Site, allow: tuple[str, ...], command: str) -> None:
    with pytest.raises(Refusal, match="not an allowed command"):
        workspace(site, *allow).check_command(command)


def test_allowed_prefixes_match_word_by_word(site: Site) -> None:
    assert workspace(site, "npm test").check_command("npm test -- -x") == ["npm", "test", "--", "-x"]
    assert workspace(site, "pytest").check_command("pytest -k 'a or b'") == ["pytest", "-k", "a or b"]


@pytest.mark.parametrize("command", ["echo hi; rm -rf src", "echo hi | cat", "echo $HOME", "echo hi > f", "echo *"])
def test_shell_syntax_needs_shell_true(site: Site, command: str) -> None:
    text = error(workspace(site, "echo", "cat", "rm"), "bash", {"command": command})
    assert "shell: true" in text
    assert not (site.root / "f").exists() and (site.root / "src").exists()


def test_with_shell_every_simple_command_must_be_allowed(site: Site) -> None:
    ws = workspace(site, "echo", "tr", shell=True)
    assert ok(ws, "bash", {"command": "echo hi | tr a-z A-Z && echo done"}).startswith(
        "exit code: 0\nstdout:\nHI\ndone"
    )
    for command in (
        "echo hi && rm -rf src",
        "echo hi;rm -rf src",
        "echo hi & rm -rf src",
        "echo hi\nrm -rf src",
        "echo a#; rm -rf src",
        "echo() ( rm -rf src ); echo",
        "echo() { rm -rf src; }",
        "echo hi &>x rm -rf src",
    ):
        assert "not an allowed command" in error(ws, "bash", {"command": command}), command
    assert (site.root / "src" / "app.py").exists()


@pytest.mark.parametrize(
    "command",
    ["echo $(rm -rf src)", "echo `rm -rf src`", 'echo "$(rm -rf src)"', "echo <(rm -rf src)", "echo $'\\x41'"],
)
def test_substitutions_are_refused_even_with_shell(site: Site, command: str) -> None:
    text = error(workspace(site, "echo", shell=True), "bash", {"command": command})
    assert "not allowed" in text
    assert (site.root / "src" / "app.py").exists()


def test_a_timeout_kills_the_command_and_its_children(site: Site) -> None:
    ws = workspace(site, "sleep", "echo", shell=True, timeout=0.5)
    started = time.monotonic()
    text = error(ws, "bash", {"command": "sleep 5 & echo $!; sleep 5"})
    assert time.monotonic() - started < 3
    assert "timed out after 0.5 s" in text
    assert gone(int(re.findall(r"stdout:\n(\d+)", text)[0]))


def test_children_left_running_are_killed_when_the_command_ends(site: Site) -> None:
    ws = workspace(site, "sleep", "echo", shell=True)
    started = time.monotonic()
    text = ok(ws, "bash", {"command": "sleep 30 & echo $!"})
    assert time.monotonic() - started < 3 and text.startswith("exit code: 0")
    assert gone(int(re.findall(r"stdout:\n(\d+)", text)[0]))


def test_cancelling_a_run_kills_its_process_group(site: Site) -> None:
    async def scenario() -> int:
        task = asyncio.ensure_future(
            run_process("sleep 30 & echo $! > child.pid; wait", cwd=site.root, env={"PATH": PATH}, timeout=30)
        )
        pid_file = site.root / "child.pid"
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(pid_file.read_text())

    assert gone(asyncio.run(scenario()))


def test_huge_output_is_cut_in_the_middle(site: Site) -> None:
    ws = workspace(site, "seq", max_output=5000)
    text = ok(ws, "bash", {"command": "seq 1 300000"})
    assert len(text) <= 5000
    assert text.startswith("exit code: 0\nstdout:\n1\n2\n3\n") and "characters cut" in text
    assert text.endswith("299999\n300000\n\nstderr:\n(empty)")


def test_a_missing_program_is_an_error_reply(site: Site) -> None:
    text = error(workspace(site, "no-such-program-xyz"), "bash", {"command": "no-such-program-xyz --help"})
    assert "command not found: no-such-program-xyz" in text


def test_the_api_key_never_reaches_a_command(site: Site) -> None:
    environ = {"ANTHROPIC_API_KEY": "sk-secret-123", "GITHUB_TOKEN": "ghp-x", "PATH": PATH, "LANG": "C.UTF-8"}
    ws = workspace(site, "env", "printenv", environ=environ)
    text = ok(ws, "bash", {"command": "env"})
    assert "PATH=" in text and "LANG=C.UTF-8" in text
    assert "sk-secret-123" not in text and "ghp-x" not in text
    assert ok(ws, "bash", {"command": "printenv ANTHROPIC_API_KEY"}).startswith("exit code: 1\nstdout:\n(empty)")
    shell = workspace(site, "echo", shell=True, environ=environ)
    assert "sk-secret" not in ok(shell, "bash", {"command": 'echo "[$ANTHROPIC_API_KEY]" $GITHUB_TOKEN'})


def test_scrub_env_keeps_harmless_variables_only() -> None:
    environ = {
        "PATH": f"/usr/bin:.:bin:{os.sep}opt/bin",
        "HOME": "/home/u",
        "LC_ALL": "C",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "ANTHROPIC_API_KEY": "sk-1",
        "ANTHROPIC_BASE_URL": "http://x",
        "EDITOR": "vim",
    }
    extra = {"ANTHROPIC_API_KEY": "sk-2", "ANTHROPIC_AUTH_TOKEN": "t", "DEPLOY_TOKEN": "d", "COPY": "sk-1"}
    assert scrub_env(environ, extra) == {
        "PATH": "/usr/bin:/opt/bin",
        "HOME": "/home/u",
        "LC_ALL": "C",
        "DEPLOY_TOKEN": "d",
    }
    assert scrub_env({}) == {}


# --- run_process and truncate ------------------------------------------------------------------------------------


def test_run_process_reports_outputs_and_exit_code(site: Site) -> None:
    result = asyncio.run(
        run_process(["sh", "-c", "echo out; echo err >&2; exit 3"], cwd=site.root, env={"PATH": PATH}, timeout=5)
    )
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (3, "out\n", "err\n", False)
    missing = asyncio.run(run_process(["no-such-program-xyz"], cwd=site.root, env={"PATH": PATH}, timeout=5))
    assert (missing.exit_code, missing.stderr) == (None, "command not found: no-such-program-xyz")


def test_truncate_keeps_head_and_tail() -> None:
    assert truncate("short", 10) == "short"
    text = "".join(f"{n}\n" for n in range(10_000))
    cut = truncate(text, 1000)
    assert len(cut) <= 1000 and cut.startswith("0\n1\n") and cut.endswith("9998\n9999\n")
    match = re.fullmatch(r"(.*)\n\[\.\.\. (\d+) characters cut \.\.\.\]\n(.*)", cut, re.S)
    assert match is not None
    head, count, tail = match.groups()
    assert len(head) + int(count) + len(tail) == len(text)


# --- arguments and definitions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("read", ["src/app.py"], "JSON object"),
        ("read", {}, "'path' is required"),
        ("read", {"path": 5}, "'path' must be a string"),
        ("read", {"path": "src/app.py", "lines": 3}, "'lines' is not an argument of read"),
        ("read", {"path": "src/app.py", "view_range": [1]}, "list of 2 integers"),
        ("read", {"path": "src/app.py", "view_range": [True, 2]}, "list of 2 integers"),
        ("edit", {"command": "delete", "path": "x"}, "must be one of create, str_replace, insert"),
        ("edit", {"command": "create", "path": "x"}, "create needs file_text"),
        ("edit", {"command": "create", "path": "x", "file_text": "", "old_str": "a"}, "does not use old_str"),
        ("edit", {"command": "insert", "path": "x", "insert_line": "1", "new_str": ""}, "must be an integer"),
        ("bash", None, "JSON object"),
        ("write", {"path": "x"}, "unknown tool 'write'"),
        (None, {"path": "x"}, "unknown tool None"),
    ],
)
def test_malformed_calls_are_error_replies(site: Site, name: Any, arguments: Any, says: str) -> None:
    assert says in error(workspace(site, "echo"), name, arguments)


def test_tool_definitions_are_valid_json_schema() -> None:
    definitions = tool_definitions(["bash", "read", "edit", "search"])
    assert [d["name"] for d in definitions] == ["bash", "read", "edit", "search"]
    for definition in definitions:
        assert set(definition) == {"name", "description", "input_schema"}
        jsonschema.Draft202012Validator.check_schema(definition["input_schema"])
        assert definition["input_schema"]["type"] == "object"
    json.dumps(definitions)
    samples = {
        "read": {"path": "src", "view_range": [1, -1]},
        "edit": {"command": "insert", "path": "a", "insert_line": 0, "new_str": "x"},
        "search": {"pattern": "*.py"},
        "bash": {"command": "ls"},
    }
    for definition in definitions:
        jsonschema.validate(samples[definition["name"]], definition["input_schema"])
    assert tuple(d["name"] for d in tool_definitions(TOOL_NAMES)) == TOOL_NAMES
    with pytest.raises(ValueError, match="unknown tool"):
        tool_definitions(["read", "write"])
    described = tool_definitions(["bash"], bash=BashPolicy(allow=("pytest", "npm test")))[0]["description"]
    assert "'pytest', 'npm test'" in described
