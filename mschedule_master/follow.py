"""``GET /api/v1/tasks/{task}/targets/{agent}/output?follow=1``: one stream, ``tail -f``-like.

The answer is chunked raw bytes: the stream from its first byte, as the agent's live
chunks (:mod:`.liveoutput`) arrive, then, once the target has ended, the rest from its
stored result, and the answer ends. Bytes the agent never sent live (it fell behind)
show as one line ``[mschedule: N bytes skipped]``; so do bytes a truncated result no
longer holds. A chunk lost on the way is waited for :data:`HOLE_WAIT` seconds, then passed
the same way, unless the result comes first and fills it. Without a skip, the bytes
followed are exactly the stored output.

Wake-ups come from the engine's events (a chunk stored, the target changed), with a
look every :data:`WAKE` seconds regardless; a follow lasts at most :data:`FOLLOW_MAX`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .liveoutput import Chunk, event_for
from .models import Event, Service, Target

log = logging.getLogger(__name__)

WAKE = 1.0  #: seconds between two looks when no event comes
HOLE_WAIT = 2.0  #: seconds a chunk missing in the middle is waited for before it is passed
FOLLOW_MAX = 7 * 24 * 3600.0  #: seconds a follow may last

_STOPS_KEY = web.AppKey("follow_stops", set[asyncio.Event])


def setup(app: web.Application) -> None:
    app[_STOPS_KEY] = set()
    app.on_shutdown.append(_stop_all)


async def _stop_all(app: web.Application) -> None:
    stops: set[asyncio.Event] = app[_STOPS_KEY]
    for stop in list(stops):
        stop.set()


def skipped_line(n: int) -> bytes:
    return b"\n[mschedule: %d bytes skipped]\n" % n


async def _read(service: Service, name: str, *args: Any) -> Any:
    off_loop = getattr(service, "read_off_loop", None)
    if off_loop is not None:
        return await off_loop(name, *args)
    return getattr(service, name)(*args)


def ended(target: Target) -> bool:
    """The target will send no more: its result is stored, or it has a final verdict."""
    return target.agent_state is not None or target.state.final


def final_rest(target: Target, stream: str, pos: int) -> bytes:
    """What the stored result holds of ``stream`` from offset ``pos`` on (a truncated result
    keeps the first and last halves of its cap: a skipped line stands for the middle)."""
    data = target.stdout if stream == "stdout" else target.stderr
    total = target.stdout_bytes if stream == "stdout" else target.stderr_bytes
    truncated = target.stdout_truncated if stream == "stdout" else target.stderr_truncated
    if not truncated:
        return data[pos:]
    head = len(data) // 2  # the agent keeps cap // 2 bytes of head and the rest of the cap as tail
    tail_start = total - (len(data) - head)
    out = bytearray()
    if pos < head:
        out += data[pos:head]
        pos = head
    if pos < tail_start:
        out += skipped_line(tail_start - pos)
        pos = tail_start
    out += data[head + pos - tail_start :]
    return bytes(out)


class _Position:
    """How far a follower is, and since when it waits on a missing chunk."""

    def __init__(self) -> None:
        self.pos = 0
        self.hole_since: float | None = None

    def take(self, chunks: list[Chunk], now: float) -> bytes:
        out = bytearray()
        for c in chunks:
            if c.offset > self.pos:
                if c.offset - c.skipped <= self.pos:  # the agent never sent these
                    out += skipped_line(c.offset - self.pos)
                elif self.hole_since is None or now - self.hole_since < HOLE_WAIT:
                    self.hole_since = self.hole_since or now
                    break  # lost on the way, or dropped by the cap: wait a little
                else:
                    out += skipped_line(c.offset - self.pos)
                self.pos = c.offset
            self.hole_since = None
            if c.end > self.pos:
                out += c.data[self.pos - c.offset :]
                self.pos = c.end
        return bytes(out)


async def so_far(service: Service, task_id: str, agent_id: str, stream: str) -> bytes:
    """What a running target has written to ``stream`` so far, as its live chunks hold it
    (up to the first chunk still missing)."""
    chunks = await _read(service, "live_chunks", task_id, agent_id, stream, 0)
    return _Position().take(chunks, 0.0)


async def follow_output(request: web.Request, service: Service, task_id: str, agent_id: str, stream: str) -> web.StreamResponse:
    target: Target = await _read(service, "output", task_id, agent_id)  # NotFound: a 404 before any byte
    resp = web.StreamResponse(headers={
        "Content-Type": "application/octet-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        "X-Mschedule-Follow": "1",
    })  # fmt: skip
    resp.enable_chunked_encoding()
    wake, stop = asyncio.Event(), asyncio.Event()

    def on_event(event: Event) -> None:
        if event_for(event, task_id, agent_id):
            wake.set()

    unsubscribe = service.subscribe(on_event)
    stops = request.app[_STOPS_KEY]
    stops.add(stop)
    loop = asyncio.get_running_loop()
    try:
        await resp.prepare(request)
        at = _Position()
        deadline = loop.time() + FOLLOW_MAX
        while loop.time() < deadline and not stop.is_set():
            wake.clear()
            if ended(target):
                await resp.write(final_rest(target, stream, at.pos))
                break
            chunks = await _read(service, "live_chunks", task_id, agent_id, stream, at.pos)
            data = at.take(chunks, loop.time())
            if data:
                await resp.write(data)
            try:
                await asyncio.wait_for(wake.wait(), WAKE)
            except TimeoutError:
                pass
            target = await _read(service, "output", task_id, agent_id)
        await resp.write_eof()
    except ConnectionError:
        log.debug("output follower of task %s on %s went away", task_id, agent_id)
    finally:
        stops.discard(stop)
        unsubscribe()
    return resp
