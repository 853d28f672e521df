"""Server-sent events: ``GET /api/v1/events[?task=ID]``, fed by ``service.subscribe``.

Each event is ``event: <kind>`` (task, target, agent) with ``data:`` holding
``{"kind", "task_id", "ts", "data"}``. Clients treat an event as "this changed, look
again" and re-read the task or fleet; ``resync`` means events were dropped because the
client read too slowly. A comment line every :data:`KEEPALIVE` seconds keeps proxies
and idle timeouts from closing the stream. Streams end when the server shuts down.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from typing import Any

from aiohttp import web

from .models import Event, Service

log = logging.getLogger(__name__)


class _Signal(enum.Enum):
    """What a stream's queue carries besides events."""

    CLOSE = "close"  #: the server shuts down: end the stream
    RESYNC = "resync"  #: events were dropped: the client must look again


_Queue = asyncio.Queue[Event | _Signal]

SERVICE_KEY = web.AppKey("service", Service)
_STREAMS_KEY = web.AppKey("sse_streams", set[_Queue])

KEEPALIVE = 15.0  #: seconds between keep-alive comments
QUEUE_SIZE = 1000  #: events buffered per client before it is told to resync


def setup(app: web.Application) -> None:
    app[_STREAMS_KEY] = set()
    app.on_shutdown.append(_close_streams)


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


def format_event(kind: str, doc: Any) -> bytes:
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
    return f"event: {kind}\ndata: {data}\n\n".encode()


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
    queue: _Queue = asyncio.Queue(QUEUE_SIZE)

    def on_event(ev: Event) -> None:
        if task_id is not None and ev.task_id != task_id:
            return
        if queue.full():
            _force(queue, _Signal.RESYNC)
        else:
            queue.put_nowait(ev)

    unsubscribe = request.app[SERVICE_KEY].subscribe(on_event)
    streams = request.app[_STREAMS_KEY]
    streams.add(queue)
    try:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n" + format_event("hello", {"task_id": task_id}))
        await _pump(queue, resp)
        return resp
    finally:
        streams.discard(queue)
        unsubscribe()


async def _pump(queue: _Queue, resp: web.StreamResponse) -> None:
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
            await resp.write(format_event(item.kind, event_doc(item)))
    except ConnectionError:
        log.debug("event stream client went away")
