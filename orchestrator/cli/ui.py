"""``orchestrate ui``: the local dashboard over the project's state folders."""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path

import click

from ..errors import UsageError
from .base import EXIT_OK, _err, _paused_gc, _shown, _task_project, cli, quit_at_once, task_root_option, user_name
from .temporal import notify_decided

TOKEN_ENV = "ORCHESTRATE_UI_TOKEN"


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_free(host: str, port: int) -> None:
    """Refuse, in words, an address the server could not bind (taken, or not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        raise UsageError(
            f"can't serve on {host}:{port}: {exc.strerror or exc}", hint="choose another with --port (or --host)"
        ) from None


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="The port to serve on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help=f"The address to serve on; beyond loopback every request needs a token (printed, or ${TOKEN_ENV}).",
)
@click.option("--read-only", is_flag=True, help="Show runs only: no approving or rejecting from the page.")
@task_root_option
def ui(port: int, host: str, read_only: bool, root: Path | None) -> int:
    """Serve a dashboard of the project's tasks: runs live, their graphs, outputs and costs, and gates to decide.

    \b
    It reads docs/ai/ (the same state the commands write) and updates within a
    second while a run goes on. A waiting gate can be approved or rejected from
    the page, as with `orchestrate approve`, unless --read-only.
    """
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise UsageError(
            "the dashboard needs the ui extra, which is not installed", hint="pip install 'orchestrate[ui]'"
        )
    with _paused_gc():
        from ..ui.app import Access, make_app, serve

    _check_free(host, port)
    project = _task_project(root)
    token = None if _loopback(host) else (os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24))
    app = make_app(project.state_root, Access(token, read_only, project.keys, user_name(), notify_decided))
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    _err(f"orchestrate ui: {_shown(project.state_root)} at {url} (Ctrl-C stops it)")
    if token:
        _err("  it is served beyond this machine: the link above carries its token; keep it to yourself")
    quit_at_once()  # uvicorn's own Ctrl-C handling has stopped the server by the time this returns
    serve(app, host, port)
    return EXIT_OK
