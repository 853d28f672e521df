"""Identical task reads in flight at once share one read and one render.

Twenty clients polling the same 2,000-target task would otherwise each read its rows and
render its JSON (tens of milliseconds of the GIL each, which the loop ingesting MQTT then
waits for). A request for a task and query that is already being answered awaits that
answer instead. Any change of the task (an engine event about it, delivered after its
commit) drops the in-flight entry, so a request that starts after a change never gets an
answer read before it: coalescing only ever joins reads that began after the last change.

It listens to the engine's events only while a read is in flight. Used on the loop
thread only (like everything that touches it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Coalescer:
    """``subscribe(callback)`` is the service's event subscription (returns an unsubscribe)."""

    def __init__(self, subscribe: Callable[[Callable[[Any], None]], Callable[[], None]]) -> None:
        self._subscribe = subscribe
        self._unsubscribe: Callable[[], None] | None = None
        self._inflight: dict[tuple[str, Hashable], asyncio.Future[Any]] = {}

    def changed(self, event: Any) -> None:
        """A change of ``event.task_id`` ends sharing for it."""
        task_id = getattr(event, "task_id", None)
        if task_id is not None:
            for key in [k for k in self._inflight if k[0] == task_id]:
                del self._inflight[key]
            self._idle()

    async def get(self, task_id: str, query: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        key = (task_id, query)
        fut = self._inflight.get(key)
        if fut is None:
            if self._unsubscribe is None:
                self._unsubscribe = self._subscribe(self.changed)
            fut = self._inflight[key] = asyncio.ensure_future(make())
            fut.add_done_callback(lambda f: self._done(key, f))
        return await asyncio.shield(fut)  # one client going away does not cancel the others' answer

    def _done(self, key: tuple[str, Hashable], fut: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        self._idle()

    def _idle(self) -> None:
        if not self._inflight and self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            unsubscribe()
