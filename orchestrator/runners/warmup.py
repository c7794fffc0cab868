"""Cache warm-up: stages that start together with the same prompt prefix take turns to write it.

The API caches a prompt prefix once the response that wrote it has begun; a
request sent before then pays to write the same prefix again. So when several
requests with one prefix (same model, tools and system prompt) start at once,
the first goes ahead and the others wait until its response begins (its
``message_start``), then read the prefix from the cache. A prefix shorter than
the model's minimum cacheable length is never cached, so nothing waits for it.

Asyncio only: no I/O and no SDK here. Off with ``defaults.cache_warmup: false``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["CacheWarmer", "Turn"]

TTL = 300.0  # seconds an entry lives unread (the API's default, five minutes); reads refresh it


class Turn:
    """One request's place in the warm-up: say when its response has begun, or that it ended without one."""

    def __init__(self, warmer: CacheWarmer | None = None, key: str = "", event: asyncio.Event | None = None) -> None:
        self._warmer, self._key, self._event = warmer, key, event

    def begun(self) -> None:
        self._end(True)

    def failed(self) -> None:
        self._end(False)

    def _end(self, written: bool) -> None:
        warmer, event = self._warmer, self._event
        if warmer is None or event is None:
            return
        self._event = None
        if warmer._writing.get(self._key) is event:
            del warmer._writing[self._key]
            if written:
                warmer._warm[self._key] = warmer.clock()
        event.set()


class CacheWarmer:
    def __init__(self, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.clock = clock
        self._warm: dict[str, float] = {}  # prefix -> when it was last written or read
        self._writing: dict[str, asyncio.Event] = {}

    async def before(self, key: str, cacheable: bool) -> Turn:
        """Wait, if another request is writing this prefix, until its response has begun."""
        if not (self.enabled and cacheable):
            return Turn()
        while True:
            seen = self._warm.get(key)
            if seen is not None and self.clock() - seen < TTL:
                self._warm[key] = self.clock()
                return Turn()
            writing = self._writing.get(key)
            if writing is None:
                break
            await writing.wait()
            # Warm now, or the writer ended without a response (an error) and this request writes it instead.
        event = asyncio.Event()
        self._writing[key] = event
        return Turn(self, key, event)
