"""The dashboard's web app (the home of starlette and uvicorn): routes, live updates, decisions, and safety.

Routes: ``/`` the tasks, ``/tasks/<task>`` a task, their ``/fragment`` forms
(the part a live page swaps in), ``/events`` and ``/tasks/<task>/events``
(server-sent events: ``change`` whenever a state folder's event log grows,
looked at several times a second), ``POST /tasks/<task>/stages/<stage>/decision``
(approve or reject a waiting gate through ``record_decision``, as ``orchestrate
approve`` does), and ``/static``.

Safe by default:
- ``access`` holds a token when the app serves beyond loopback: every request
  must carry it (``?token=`` once, then an HttpOnly, SameSite=Strict cookie),
  else 401;
- a decision needs the page's CSRF token in the form and a same-origin
  ``Origin`` header;
- ``read_only`` hides the forms and refuses decisions;
- every page is sent with a Content-Security-Policy that allows only this
  app's own script and styles: nothing an agent wrote can run.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import OrchestrateError
from ..state.approvals import record_decision
from ..state.keys import approval_key
from ..state.repository import recover_state
from .pages import Pages

__all__ = ["Access", "make_app", "serve"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
COOKIE = "orchestrate_ui"


@dataclass(frozen=True)
class Access:
    """Who may use the app: ``token`` (None on loopback: anyone who can reach it), and whether decisions may be
    made from it; ``keys`` signs them as ``orchestrate approve`` does, ``by`` names who made them, and
    ``notify`` tells a run on Temporal."""

    token: str | None = None
    read_only: bool = False
    keys: Path | None = None
    by: str = ""
    notify: Callable[[Path], str | None] | None = None


def make_app(state_root: Path, access: Access) -> Starlette:
    pages = Pages(state_root)
    csrf = secrets.token_urlsafe(24)
    static = Path(__file__).parent / "static"

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    async def tasks(request: Request) -> Response:
        return html(pages.tasks_page())

    async def tasks_fragment(request: Request) -> Response:
        return html(pages.tasks_page(fragment=True))

    def _task(request: Request, fragment: bool) -> Response:
        task = str(request.path_params["task"])
        try:
            return html(pages.task_page(task, csrf=csrf, read_only=access.read_only, fragment=fragment))
        except KeyError:
            return html(f"<p>No task {task!r} here.</p>", 404)
        except OrchestrateError as exc:
            return html(f"<p>Task {task!r} can't be shown: {exc.message}</p>", 500)

    async def task_page(request: Request) -> Response:
        return _task(request, fragment=False)

    async def task_fragment(request: Request) -> Response:
        return _task(request, fragment=True)

    async def decision(request: Request) -> Response:
        if access.read_only:
            return PlainTextResponse("this dashboard is read-only", 403)
        origin = request.headers.get("origin")
        if origin is None or urlparse(origin).netloc != request.headers.get("host"):
            return PlainTextResponse("refused: the decision did not come from this dashboard's page", 403)
        # The page's form is url-encoded; read it here rather than pull in a multipart parser.
        fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
        form = {name: values[0] for name, values in fields.items()}
        if not hmac.compare_digest(form.get("csrf", ""), csrf):
            return PlainTextResponse("refused: the page's token is missing or stale; reload the page", 403)
        task, stage = str(request.path_params["task"]), str(request.path_params["stage"])
        try:
            folder = pages.folder(task)
        except KeyError:
            return PlainTextResponse(f"no task {task!r}", 404)
        approved = form.get("decision") == "approve"
        try:
            state = recover_state(folder, display=task)
            record_decision(
                folder,
                state,
                stage,
                approved=approved,
                note=form.get("note", ""),
                by=access.by,
                now=time.time(),
                display=task,
                key=approval_key(access.keys),
            )
        except OrchestrateError as exc:
            return PlainTextResponse(exc.message, 409)
        if access.notify is not None:
            access.notify(folder)
        return RedirectResponse(f"/tasks/{task}", 303)

    async def changes(request: Request, folders: Callable[[], list[Path]]) -> AsyncIterator[str]:
        sizes: dict[Path, int] = {}
        yield "retry: 1000\n\n"
        while not await request.is_disconnected():
            current = {}
            for folder in folders():
                try:
                    current[folder] = (folder / "events.jsonl").stat().st_size
                except OSError:
                    current[folder] = -1
            if sizes and current != sizes:
                yield "event: change\ndata: {}\n\n"
            sizes = current
            await asyncio.sleep(0.25)

    async def all_events(request: Request) -> Response:
        def folders() -> list[Path]:
            return [state_root / task for task in pages.tasks()]

        return StreamingResponse(changes(request, folders), media_type="text/event-stream")

    async def task_events(request: Request) -> Response:
        task = str(request.path_params["task"])
        try:
            folder = pages.folder(task)
        except KeyError:
            return PlainTextResponse(f"no task {task!r}", 404)
        return StreamingResponse(changes(request, lambda: [folder]), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/", tasks),
            Route("/fragment", tasks_fragment),
            Route("/events", all_events),
            Route("/tasks/{task}", task_page),
            Route("/tasks/{task}/fragment", task_fragment),
            Route("/tasks/{task}/events", task_events),
            Route("/tasks/{task}/stages/{stage}/decision", decision, methods=["POST"]),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ]
    )
    if access.token is not None:
        app.add_middleware(_TokenGate, token=access.token)
    return app


class _TokenGate:
    """Every request must carry the token: ``?token=`` (answered with a cookie) or the cookie."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        cookie = request.cookies.get(COOKIE, "")
        if given is not None and hmac.compare_digest(given, self.token):
            response = RedirectResponse(request.url.path, 303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        if not hmac.compare_digest(cookie, self.token):
            await PlainTextResponse("a token is needed: open the link `orchestrate ui` printed", 401)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)


def serve(app: Starlette, host: str, port: int) -> None:
    """Serve until Ctrl-C."""
    import uvicorn

    # Live pages hold their event streams open: at Ctrl-C, give them a second, then close them.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)
