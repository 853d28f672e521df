"""Server-sent events: ``GET /api/v1/events[?task=ID]``, fed by ``service.subscribe``.

Each event is ``event: <kind>`` (task, target, agent; and, on a task's own stream only,
output and output_end: live output, see liveoutput.py) with ``data:`` holding
``{"kind", "task_id", "ts", "data"}`` and an ``id:`` (``<boot>-<n>``). Clients treat an
event as "this changed, look again" and re-read the task or fleet; ``resync`` means events
were dropped (the client read too slowly, or reconnected after more than :data:`BACKLOG`
events or across a master restart) and everything should be read again.

A reconnecting client sends ``Last-Event-ID`` (as EventSource does): the events it missed
come first, from the last :data:`BACKLOG` kept in memory, so a reconnect loses nothing.
``?task=ID`` of an unknown task is a 404; of a task that has ended, the stream starts with a
``task`` event giving its final state and counts (``data.final`` true), so a late subscriber
need not wait for an event that already happened. A comment line every :data:`KEEPALIVE`
seconds keeps proxies and idle timeouts from closing the stream. Streams end when the
server shuts down.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .models import TASK_ONLY_EVENTS, Event, Service
from .states import TaskState

log = logging.getLogger(__name__)


class _Signal(enum.Enum):
    """What a stream's queue carries besides events."""

    CLOSE = "close"  #: the server shuts down: end the stream
    RESYNC = "resync"  #: events were dropped: the client must look again


Numbered = tuple[int, Event]  #: an event with its number in the log
_Queue = asyncio.Queue[Numbered | _Signal]

SERVICE_KEY = web.AppKey("service", Service)
_STREAMS_KEY = web.AppKey("sse_streams", set[_Queue])

KEEPALIVE = 15.0  #: seconds between keep-alive comments
QUEUE_SIZE = 1000  #: events buffered per client before it is told to resync
BACKLOG = 10_000  #: recent events kept for clients that reconnect with Last-Event-ID


class EventLog:
    """Numbers the service's events in the order they happen and keeps the last ``size``,
    so a reconnecting client can be given the ones it missed. Ids carry this process's
    boot id: an id from before a restart is not confused with one of this run."""

    def __init__(self, subscribe: Callable[[Callable[[Event], None]], Callable[[], None]], size: int = BACKLOG) -> None:
        self.boot = uuid.uuid4().hex[:12]
        self.seq = 0
        self.recent: collections.deque[Numbered] = collections.deque(maxlen=size)
        self.listeners: set[Callable[[int, Event], None]] = set()
        self._unsubscribe: Callable[[], None] | None = subscribe(self._on_event)

    def close(self) -> None:
        """Stop taking the service's events (once; again is a no-op)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _on_event(self, ev: Event) -> None:
        if ev.kind in TASK_ONLY_EVENTS:
            # Live output is not numbered nor kept: it would push the state events a
            # reconnecting client needs out of the backlog (and hold chunks in memory); a
            # follower that missed some reads them from the output route.
            for listener in list(self.listeners):
                listener(0, ev)
            return
        self.seq += 1
        self.recent.append((self.seq, ev))
        for listener in list(self.listeners):
            listener(self.seq, ev)

    def event_id_of(self, seq: int) -> str | None:
        """The ``id:`` of a numbered event; None for live output, which carries none."""
        return self.event_id(seq) if seq else None

    def event_id(self, seq: int) -> str:
        return f"{self.boot}-{seq}"

    def since(self, last_event_id: str) -> list[Numbered] | None:
        """The events after ``last_event_id``, or None when they cannot all be given (an id
        of another run, or older than the backlog): the client must re-read everything."""
        boot, _, num = last_event_id.strip().rpartition("-")
        if boot != self.boot or not (num.isascii() and num.isdigit()) or int(num) > self.seq:
            return None
        after = int(num)
        if after < self.seq and (not self.recent or self.recent[0][0] > after + 1):
            return None  # some were pushed out of the backlog
        return [(n, ev) for n, ev in self.recent if n > after]


_LOG_KEY = web.AppKey("sse_log", EventLog)


def setup(app: web.Application) -> None:
    app[_STREAMS_KEY] = set()
    app[_LOG_KEY] = EventLog(app[SERVICE_KEY].subscribe)
    app.on_shutdown.append(_close_streams)
    app.on_cleanup.append(_stop_log)


def open_streams(app: web.Application) -> int:
    """How many event streams are open now."""
    return len(app[_LOG_KEY].listeners)


async def _stop_log(app: web.Application) -> None:
    app[_LOG_KEY].close()


async def _close_streams(app: web.Application) -> None:
    streams = app[_STREAMS_KEY]
    for queue in list(streams):
        _force(queue, _Signal.CLOSE)


def _force(queue: _Queue, item: _Signal) -> None:
    """Put ``item``, dropping the backlog when the queue is full."""
    if queue.full():
        while not queue.empty():
            queue.get_nowait()
    queue.put_nowait(item)


def format_event(kind: str, doc: Any, event_id: str | None = None) -> bytes:
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n".encode()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def event_doc(ev: Event) -> dict[str, Any]:
    return {"kind": ev.kind, "task_id": ev.task_id, "ts": ev.ts, "data": ev.data}


async def events(request: web.Request) -> web.StreamResponse:
    task_id = request.query.get("task") or None
    log_ = request.app[_LOG_KEY]
    queue: _Queue = asyncio.Queue(QUEUE_SIZE)

    def on_event(seq: int, ev: Event) -> None:
        if task_id is not None and ev.task_id != task_id:
            return
        if task_id is None and ev.kind in TASK_ONLY_EVENTS:
            return  # live output goes only to the task's own watchers
        if queue.full():
            _force(queue, _Signal.RESYNC)
        else:
            queue.put_nowait((seq, ev))

    # Subscribed and the backlog read in one step of the loop: nothing falls between them.
    log_.listeners.add(on_event)
    last = request.headers.get("Last-Event-ID")
    missed = log_.since(last) if last else []
    streams = request.app[_STREAMS_KEY]
    streams.add(queue)
    try:
        # Read after subscribing: an end that comes meanwhile is in the queue as well.
        ended = await _ended_task(request, task_id) if task_id is not None else None  # unknown: NotFound, a 404
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n" + format_event("hello", {"task_id": task_id}))
        if missed is None:
            await resp.write(format_event("resync", {}))
        else:
            for seq, ev in missed:
                if task_id is None or ev.task_id == task_id:
                    await resp.write(format_event(ev.kind, event_doc(ev), log_.event_id(seq)))
        if ended is not None:
            await resp.write(format_event("task", ended))
        await _pump(queue, resp, log_)
        return resp
    finally:
        streams.discard(queue)
        log_.listeners.discard(on_event)


async def _ended_task(request: web.Request, task_id: str) -> dict[str, Any] | None:
    """The ``task`` event telling a task's final state, None while it runs; raises NotFound."""
    from .api import read  # (api imports this module)

    task = await read(request.app[SERVICE_KEY], "task", task_id, outputs=False, targets=False)
    state = TaskState(task.state)
    if not state.final:
        return None
    data = {"state": state.value, "reason": task.reason, "counts": dict(task.counts), "final": True}
    return {"kind": "task", "task_id": task.id, "ts": task.finished_at, "data": data}


async def _pump(queue: _Queue, resp: web.StreamResponse, log_: EventLog) -> None:
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if item is _Signal.CLOSE:
                return
            if item is _Signal.RESYNC:
                await resp.write(format_event("resync", {}))
                continue
            seq, ev = item
            await resp.write(format_event(ev.kind, event_doc(ev), log_.event_id_of(seq)))
    except ConnectionError:
        log.debug("event stream client went away")
