"""A worker process for runs on Temporal: the shared queue, and the home queue of a checkout.

Every worker serves the shared queue (``orchestrate`` by default): tries of
stages that only call the model. A worker that holds a checkout (``orchestrate
run``, which hosts one for its run, or ``orchestrate worker --workspace``)
also serves that checkout's home queue: the run's workflow, its local
activities and the tries of stages that act on the workspace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from .home import HomeActivities, HomeRuns
from .ticket import home_queue
from .tries import TryActivities, worker_name
from .workflow import HOMES, RunWorkflow

__all__ = ["serve", "serving"]


async def serve(
    client: Client,
    *,
    queue: str,
    environ: Mapping[str, str],
    root: Path | None = None,
    keys: Path | None = None,
    ready: asyncio.Event | None = None,
    stopping: asyncio.Event,
    shared: bool = True,
) -> None:
    """Serve ``queue`` (and, with ``root``, that checkout's home queue) until ``stopping`` is set; a home with
    ``shared=False`` leaves ``queue`` to other workers.

    On the way out the runs this home holds are written out and their locks released; a run carries on once
    a home serves its queue again."""
    tries = TryActivities(environ)
    identity = worker_name()
    async with AsyncExitStack() as stack:
        # Unwound in reverse: the workers stop first, then the runs are written out and the runners closed.
        stack.push_async_callback(tries.aclose)
        workers = [Worker(client, task_queue=queue, activities=[tries.run_try], identity=identity)] if shared else []
        if root is not None:
            key = str(root.resolve())
            if key in HOMES:
                raise RuntimeError(f"this process already serves {key}")
            home: HomeRuns = HomeRuns(environ, keys)
            tries.runs = home
            HOMES[key] = home
            stack.callback(HOMES.pop, key, None)
            stack.push_async_callback(home.aclose)
            workers.append(
                Worker(
                    client,
                    task_queue=home_queue(root),
                    workflows=[RunWorkflow],
                    activities=[*HomeActivities(home).all(), tries.run_try],
                    workflow_runner=UnsandboxedWorkflowRunner(),
                    identity=identity,
                )
            )
        for worker in workers:
            await stack.enter_async_context(worker)
        if ready is not None:
            ready.set()
        await stopping.wait()


@asynccontextmanager
async def serving(
    client: Client,
    *,
    queue: str,
    environ: Mapping[str, str],
    root: Path | None = None,
    keys: Path | None = None,
    shared: bool = True,
) -> AsyncIterator[None]:
    """``serve`` for as long as the block runs; its workers poll by the time the block starts."""
    stopping, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(client, queue=queue, environ=environ, root=root, keys=keys, ready=ready, stopping=stopping, shared=shared)
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what stopped it
    try:
        yield
    finally:
        stopping.set()
        await task
