"""``GET /api/v1/tasks/{task}/targets/{agent}/output?follow=1``: one stream, ``tail -f``-like.

The answer is chunked raw bytes: the stream from its first byte (or from byte ``offset``:
a follower that reconnects says how far it got), as the agent's live chunks
(:mod:`.liveoutput`) arrive, then, once the target has ended, the rest from its stored
result, and the answer ends. Bytes the agent never sent live (it fell behind) show as one
line ``[mschedule: N bytes skipped]``; so do bytes a truncated result no longer holds. A
chunk lost on the way (a broker outage: the master takes chunks at QoS 0) is waited for
:data:`HOLE_WAIT` seconds, then passed the same way, unless the result comes first and
fills it in place. Once the result is there, the bytes this follower saw skipped and the
result holds come after the rest, each part marked with where it belongs
(:mod:`.followmarks`). Without a skip, the bytes followed are exactly the stored output.

Wake-ups come from the engine's events (a chunk stored, the target changed), with a
look every :data:`WAKE` seconds regardless; a follow lasts at most :data:`FOLLOW_MAX`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .followmarks import filled, skipped_line
from .liveoutput import Chunk, event_for
from .models import Event, Service, Target

log = logging.getLogger(__name__)

WAKE = 1.0  #: seconds between two looks when no event comes
HOLE_WAIT = 2.0  #: seconds a chunk missing in the middle is waited for before it is passed
FOLLOW_MAX = 7 * 24 * 3600.0  #: seconds a follow may last
MAX_HOLES = 1000  #: skipped ranges a follower remembers to fill from the result (the later are only marked)

_STOPS_KEY = web.AppKey("follow_stops", set[asyncio.Event])


def setup(app: web.Application) -> None:
    app[_STOPS_KEY] = set()
    app.on_shutdown.append(_stop_all)


async def _stop_all(app: web.Application) -> None:
    stops: set[asyncio.Event] = app[_STOPS_KEY]
    for stop in list(stops):
        stop.set()


async def _read(service: Service, name: str, *args: Any) -> Any:
    off_loop = getattr(service, "read_off_loop", None)
    if off_loop is not None:
        return await off_loop(name, *args)
    return getattr(service, name)(*args)


def ended(target: Target) -> bool:
    """The target will send no more: its result is stored, or it has a final verdict."""
    return target.agent_state is not None or target.state.final


def _stored(target: Target, stream: str) -> tuple[bytes, int, int]:
    """``(data, head, tail_start)``: the stored bytes; those before ``head`` are the stream's
    first bytes, the rest its bytes from ``tail_start`` on (a truncated result keeps the first
    and last halves of its cap; one not truncated: head = tail_start = its length)."""
    data = target.stdout if stream == "stdout" else target.stderr
    total = target.stdout_bytes if stream == "stdout" else target.stderr_bytes
    truncated = target.stdout_truncated if stream == "stdout" else target.stderr_truncated
    if not truncated:
        return data, len(data), len(data)
    head = len(data) // 2  # the agent keeps cap // 2 bytes of head and the rest of the cap as tail
    return data, head, total - (len(data) - head)


def held(target: Target, stream: str, start: int, end: int) -> list[tuple[int, bytes]]:
    """The parts of the stream's bytes ``start``..``end`` the stored result holds, as
    ``(offset, bytes)``."""
    data, head, tail_start = _stored(target, stream)
    parts = []
    if start < head:
        parts.append((start, data[start : min(end, head)]))
    lo = max(start, tail_start)
    if end > lo:
        parts.append((lo, data[head + lo - tail_start : head + end - tail_start]))
    return [(at, b) for at, b in parts if b]


def fill_holes(target: Target, stream: str, holes: list[tuple[int, int]]) -> bytes:
    """The skipped ranges a follower saw, from the stored result, each marked with its offset."""
    return b"".join(filled(at, b) for start, end in holes for at, b in held(target, stream, start, end))


def final_rest(target: Target, stream: str, pos: int) -> bytes:
    """What the stored result holds of ``stream`` from offset ``pos`` on (a truncated result
    keeps the first and last halves of its cap: a skipped line stands for the middle)."""
    data, head, tail_start = _stored(target, stream)
    if head == tail_start:
        return data[pos:]
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
    """How far a follower is, since when it waits on a missing chunk, and the ranges it
    passed with a skipped line (``holes``, to fill from the result)."""

    def __init__(self, pos: int = 0) -> None:
        self.pos = pos
        self.hole_since: float | None = None
        self.holes: list[tuple[int, int]] = []

    def _skip(self, to: int) -> bytes:
        if len(self.holes) < MAX_HOLES:
            self.holes.append((self.pos, to))
        line = skipped_line(to - self.pos)
        self.pos = to
        return line

    def take(self, chunks: list[Chunk], now: float) -> bytes:
        out = bytearray()
        for c in chunks:
            if c.offset > self.pos:
                if c.offset - c.skipped > self.pos and (self.hole_since is None or now - self.hole_since < HOLE_WAIT):
                    self.hole_since = self.hole_since or now
                    break  # lost on the way, or dropped by the cap: wait a little
                out += self._skip(c.offset)  # the agent never sent these, or they did not come in time
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


async def follow_output(
    request: web.Request, service: Service, task_id: str, agent_id: str, stream: str, offset: int = 0,
    holes: list[tuple[int, int]] | None = None,
) -> web.StreamResponse:
    """``offset``: the stream's bytes the follower has already (a skipped line counting as
    the bytes it stands for): the answer starts there. ``holes``: ranges before it that an
    earlier answer skipped, to fill from the result with this answer's own."""
    target: Target = await _read(service, "output", task_id, agent_id)  # NotFound: a 404 before any byte
    resp = web.StreamResponse(headers={
        "Content-Type": "application/octet-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        "X-Mschedule-Follow": "1", "X-Mschedule-Offset": str(offset),
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
        at = _Position(offset)
        at.holes = list(holes or [])
        deadline = loop.time() + FOLLOW_MAX
        while loop.time() < deadline and not stop.is_set():
            wake.clear()
            if ended(target):
                await resp.write(final_rest(target, stream, at.pos) + fill_holes(target, stream, at.holes))
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
