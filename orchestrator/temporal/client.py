"""Reaching Temporal, and a run's client side: submit or attach, follow, signal, stop.

``connect`` opens a client from ``Settings`` (address, namespace, TLS or an
API key for Temporal Cloud). ``follow_run`` is what ``orchestrate run
--temporal`` does: host the checkout's home worker (unless told not to),
start the task's workflow or attach to the one already going (its id comes
from the project and the task), and pass its events to the caller's views
until it ends or the caller stops following. ``signal_run`` sends ``decided``
or ``stop`` to a task's workflow, found through the ``temporal.json`` note the
run leaves in its state folder (address, namespace and workflow id; never a
secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import Client, TLSConfig, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.service import RPCError, RPCStatusCode

from ..errors import UsageError
from ..events import Listener, from_json
from ..fileio import atomic_write
from ..run.options import PreparedRun
from ..state.repository import FileRepository
from .ticket import Ticket
from .worker import serving

__all__ = ["NotRunning", "Settings", "connect", "follow_run", "read_note", "signal_run"]


class NotRunning(UsageError):
    """The task's workflow on Temporal has ended (or never started)."""


@dataclass(frozen=True)
class Settings:
    """How to reach Temporal. ``api_key`` comes from the environment only, and is never written anywhere."""

    address: str
    namespace: str = "default"
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    api_key: str | None = None

    def note(self) -> dict[str, Any]:
        """What a state folder's note keeps of these (no key)."""
        return {"address": self.address, "namespace": self.namespace, "tls": self.tls or self.api_key is not None}


class Compressed(PayloadCodec):
    """Payloads compressed with zlib: a run's stage requests repeat their agents' instructions, which compress
    well, and a wide fan-out sends a hundred of them in one workflow task (the server takes 4 MB at most)."""

    ENCODING = b"binary/zlib"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(metadata={"encoding": self.ENCODING}, data=zlib.compress(p.SerializeToString(), 6))
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload.FromString(zlib.decompress(p.data)) if p.metadata.get("encoding") == self.ENCODING else p
            for p in payloads
        ]


CONVERTER = dataclasses.replace(DataConverter.default, payload_codec=Compressed())


async def connect(settings: Settings) -> Client:
    tls: bool | TLSConfig = settings.tls or settings.api_key is not None
    if settings.tls_cert is not None or settings.tls_key is not None:
        if settings.tls_cert is None or settings.tls_key is None:
            raise UsageError("--tls-cert and --tls-key go together (a client certificate and its key)")
        try:
            cert, key = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
        except OSError as exc:
            raise UsageError(f"can't read the TLS certificate or key: {exc}") from None
        tls = TLSConfig(client_cert=cert, client_private_key=key)
    try:
        return await Client.connect(
            settings.address,
            namespace=settings.namespace,
            tls=tls,
            api_key=settings.api_key,
            data_converter=CONVERTER,
        )
    except Exception as exc:  # the SDK raises plain RuntimeErrors for a server it can't reach
        raise UsageError(
            f"can't reach Temporal at {settings.address}: {exc}",
            hint="check --temporal (host:port); for a local server: temporal server start-dev",
        ) from None


def read_note(folder: Path) -> dict[str, Any] | None:
    """The ``temporal.json`` note a run on Temporal left in ``folder``, if any."""
    try:
        data = json.loads(FileRepository(folder).temporal_note.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "workflow_id" in data else None


def _write_note(folder: Path, settings: Settings, workflow_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    note = {**settings.note(), "workflow_id": workflow_id}
    atomic_write(FileRepository(folder).temporal_note, (json.dumps(note, indent=2) + "\n").encode("utf-8"))


async def _running(handle: WorkflowHandle[Any, Any]) -> bool:
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING


async def follow_run(
    prepared: PreparedRun,
    ticket: Ticket,
    settings: Settings,
    *,
    listeners: Sequence[Listener],
    environ: Mapping[str, str],
    host: bool = True,
    shared: bool = True,
    stop_following: asyncio.Event | None = None,
    on_attach: Callable[[bool], None] | None = None,
    poll: float = 0.25,
) -> dict[str, Any] | None:
    """Run ``ticket`` on Temporal and pass its events to ``listeners`` until it ends; its result, or None once
    ``stop_following`` is set (the run carries on without us; its home goes until a home serves the checkout
    again). ``on_attach`` is told whether the run was already going."""
    client = await connect(settings)
    home = (
        serving(client, queue=ticket.queue, environ=environ, root=prepared.root, keys=prepared.keys, shared=shared)
        if host
        else contextlib.nullcontext()
    )
    async with home:
        handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(ticket.workflow_id)
        attached = await _running(handle)
        if not attached:
            handle = await client.start_workflow(
                "orchestrate.run",
                ticket.to_wire(),
                id=ticket.workflow_id,
                task_queue=ticket.home_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
        _write_note(prepared.folder, settings, ticket.workflow_id)
        if on_attach is not None:
            on_attach(attached)
        return await _follow(handle, listeners, stop_following or asyncio.Event(), poll)


async def _follow(
    handle: WorkflowHandle[Any, Any], listeners: Sequence[Listener], stop: asyncio.Event, poll: float
) -> dict[str, Any] | None:
    result = asyncio.ensure_future(handle.result())
    seen = 0
    try:
        while True:
            try:
                events = await handle.query("events", seen)
            except RPCError:
                events = []  # no worker answered (the home is starting or gone): try again
            for data in events:
                event = from_json(data)
                for listener in listeners:
                    listener.on_event(event)
            seen += len(events)
            if result.done():
                if seen and events:
                    continue  # the last events came with the end: drain them all first
                return dict(result.result())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait((result, stopper), timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                return None
    finally:
        if not result.done():
            result.cancel()


async def signal_run(folder: Path, signal: str, api_key: str | None = None) -> str:
    """Send ``signal`` (``decided`` or ``stop``) to the task's workflow, reached as its note says (``api_key``:
    for a server that wants one); the workflow id it went to. Raises ``UsageError`` when there is no note or
    its workflow is not running (``NotRunning``)."""
    note = read_note(folder)
    if note is None:
        raise UsageError(f"{folder} has no run on Temporal (its temporal.json note is missing)")
    settings = Settings(
        str(note["address"]), str(note.get("namespace") or "default"), bool(note.get("tls")), api_key=api_key
    )
    client = await connect(settings)
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(str(note["workflow_id"]))
    if not await _running(handle):
        raise NotRunning(f"the run of {folder.name} on Temporal ({note['workflow_id']}) is not running")
    await handle.signal(signal)
    return str(note["workflow_id"])
