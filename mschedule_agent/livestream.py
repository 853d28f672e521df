"""Live output of one run: chunks on ``<prefix>/output/<agent>/<task>`` while the script runs.

:class:`LiveOutput` is fed by the run's own thread (:mod:`.executor`) with every piece a
stream yields, and publishes ``output`` chunks: at the latest :data:`FLUSH_EVERY` seconds
after a byte was written, or as soon as :data:`CHUNK_BYTES` wait. It never blocks the
script: at most :data:`WINDOW` chunks are in flight (published, not yet acknowledged by
the broker); beyond that, or while the transport is disconnected, what waits is kept as a
head and a rolling tail of :data:`HOLD_BYTES` each per stream, and the middle is dropped
and counted (a chunk's ``skipped``). So it is beyond :data:`RATE_BYTES` a second (after a
first :data:`BURST_BYTES`): a 100 MB writer streams a sample, not 100 MB. Memory stays below about ``4 * HOLD_BYTES`` plus the
window whatever the script writes. ``close()`` sends what it can and the ``output_end``
marker with each stream's total and sha256.

Every method catches its own errors: live output is a view, the result is the record, and
nothing here may fail a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .protocol import OUTPUT_STREAMS, OutputChunk, OutputEnd, encode

log = logging.getLogger(__name__)

_STOPPED = "task_id=%s: live output stopped (%s failed); the result will carry the output"

FLUSH_EVERY = 0.2  #: seconds a written byte may wait before it is sent
CHUNK_BYTES = 32 * 1024  #: a chunk's largest payload, and the size that flushes at once
WINDOW = 8  #: chunks in flight (not yet PUBACKed) before the agent holds back
HOLD_BYTES = 256 * 1024  #: per stream, the head and the rolling tail kept while held back (a burst of
#: up to WINDOW * CHUNK_BYTES + 2 * HOLD_BYTES, 768 KiB, passes whole even if no ack comes meanwhile)
STALE_AFTER = 10.0  #: seconds after which an unacknowledged chunk no longer holds a slot
#: Live bytes a run may send per second, after a first burst of BURST_BYTES: a 100 MB writer
#: must not flood the broker and the master (a thousand of them even less); what is over
#: is held and skipped like output a slow broker cannot take.
RATE_BYTES = 256 * 1024
BURST_BYTES = 1024 * 1024
RETRY_EVERY = 0.05  #: seconds between two looks at a full window (or a lost connection)


class Publication(Protocol):
    def wait(self, timeout: float) -> bool: ...


#: ``publish(payload, qos)`` -> the Publication (None when it could not be published).
Publish = Callable[[bytes, int], "Publication | None"]


class _Stream:
    """One stream's counters and what waits to be sent: ``head``, then ``gap`` dropped
    bytes, then ``tail`` (the latest bytes), starting at offset ``start``."""

    __slots__ = ("name", "total", "digest", "start", "head", "gap", "tail", "skipped_next", "since")

    def __init__(self, name: str, digest: Any) -> None:
        self.name = name
        self.total = 0
        self.digest = digest
        self.start = 0
        self.head = bytearray()
        self.gap = 0
        self.tail = bytearray()
        self.skipped_next = 0  #: dropped bytes just before ``start``, told by the next chunk
        self.since: float | None = None  #: when the oldest waiting byte was written

    def feed(self, data: bytes, now: float, hold: int) -> None:
        self.total += len(data)
        self.digest.update(data)
        if self.since is None:
            self.since = now
        if not self.gap and not self.tail:
            room = max(0, hold - len(self.head))
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            excess = len(self.tail) - hold
            if excess > 0:
                del self.tail[:excess]  # O(1) at the front of a bytearray
                self.gap += excess

    def waiting(self) -> int:
        return len(self.head) + len(self.tail)

    def take(self, size: int) -> tuple[int, bytes, int]:
        """``(offset, data, skipped)`` of the next chunk (at most ``size`` bytes)."""
        if not self.head and (self.gap or self.tail):  # the head is sent: the tail follows the gap
            self.start += self.gap
            self.skipped_next += self.gap
            self.head, self.tail, self.gap = self.tail, bytearray(), 0
        data = bytes(self.head[:size])
        del self.head[:size]
        offset, skipped = self.start, self.skipped_next
        self.start += len(data)
        self.skipped_next = 0
        if not self.waiting():
            self.since = None
        return offset, data, skipped


class LiveOutput:
    """One run's live output; used from the run's thread only."""

    def __init__(
        self,
        *,
        task_id: str,
        agent_id: str,
        publish: Publish,
        connected: Callable[[], bool],
        new_digest: Callable[[], Any],
        clock: Callable[[], float] = time.monotonic,
        flush_every: float = FLUSH_EVERY,
        chunk_bytes: int = CHUNK_BYTES,
        window: int = WINDOW,
        hold_bytes: int = HOLD_BYTES,
        rate_bytes: float = RATE_BYTES,
        burst_bytes: float = BURST_BYTES,
    ) -> None:
        self.task_id = task_id
        self.agent_id = agent_id
        self._publish = publish
        self._connected = connected
        self._clock = clock
        self.flush_every = flush_every
        self.chunk_bytes = chunk_bytes
        self.window = window
        self.hold_bytes = hold_bytes
        self._streams = {name: _Stream(name, new_digest()) for name in OUTPUT_STREAMS}
        self._inflight: list[tuple[Publication, float]] = []
        self.seq = 0  #: chunks sent so far
        self.skipped = 0  #: bytes dropped from the live view so far (both streams)
        self._broken = False
        self._retry_at = 0.0  #: held back: the next look at the window, not before
        self.rate_bytes = rate_bytes
        self.burst_bytes = burst_bytes
        self._tokens = burst_bytes  #: bytes that may be sent now (a token bucket)
        self._refilled = clock()

    # ------------------------------------------------------------------ the run thread
    def feed(self, stream: str, data: bytes) -> None:
        """Bytes the script wrote to ``stream``; sends what is due. Never raises."""
        try:
            now = self._clock()
            self._streams[stream].feed(data, now, self.hold_bytes)
            self.poll(now)
        except Exception:
            self._broken = True
            log.exception(_STOPPED, self.task_id, "feed")

    def due_in(self, now: float) -> float | None:
        """Seconds until a flush is due (0: now); None when nothing waits."""
        oldest = [s.since for s in self._streams.values() if s.since is not None]
        if not oldest or self._broken:
            return None
        return max(0.0, min(oldest) + self.flush_every - now, self._retry_at - now)

    def poll(self, now: float | None = None) -> None:
        """Send what is due, as far as the window and the connection allow. Never raises."""
        if self._broken:
            return
        try:
            now = self._clock() if now is None else now
            for s in self._streams.values():
                self._send_due(s, now)
        except Exception:
            self._broken = True
            log.exception(_STOPPED, self.task_id, "poll")

    def close(self) -> None:
        """The streams are closed: send what waits (if the window allows) and ``output_end``."""
        if self._broken:
            return
        try:
            now = self._clock()
            for s in self._streams.values():
                self._send_due(s, now, force=True)
            for s in self._streams.values():  # what could not be sent is skipped for good
                self.skipped += s.waiting() + s.gap
            out, err = self._streams["stdout"], self._streams["stderr"]
            end = OutputEnd(
                id=self.task_id, agent_id=self.agent_id, seq=self.seq, stdout_bytes=out.total, stderr_bytes=err.total,
                stdout_sha256=out.digest.hexdigest(), stderr_sha256=err.digest.hexdigest(), skipped=self.skipped,
            )  # fmt: skip
            self._publish(encode(end), 1)
            if self.skipped:
                log.info("task_id=%s: %d byte(s) of output were not streamed live", self.task_id, self.skipped)
        except Exception:
            self._broken = True
            log.exception(_STOPPED, self.task_id, "close")

    # ------------------------------------------------------------------ internals
    def _send_due(self, s: _Stream, now: float, force: bool = False) -> None:
        while s.waiting():
            full = s.waiting() >= self.chunk_bytes
            due = s.since is not None and now - s.since >= self.flush_every
            if not (full or due or force) or not self._room(now, min(self.chunk_bytes, s.waiting())):
                return
            offset, data, skipped = s.take(self.chunk_bytes)
            self.skipped += skipped
            msg = OutputChunk(id=self.task_id, agent_id=self.agent_id, seq=self.seq, stream=s.name, offset=offset,
                              data=data, skipped=skipped)  # fmt: skip
            self.seq += 1
            self._tokens -= len(data)
            pub = self._publish(encode(msg), 1)
            if pub is not None:
                self._inflight.append((pub, now))

    def _room(self, now: float, size: int) -> bool:
        """A free slot in the window, on a connected transport, and ``size`` bytes of rate."""
        self._tokens = min(self.burst_bytes, self._tokens + (now - self._refilled) * self.rate_bytes)
        self._refilled = now
        if self._tokens < size:
            self._retry_at = now + max(RETRY_EVERY, (size - self._tokens) / self.rate_bytes)
            return False
        if self._connected():
            self._inflight = [(p, at) for p, at in self._inflight if now - at < STALE_AFTER and not p.wait(0)]
            if len(self._inflight) < self.window:
                return True
        self._retry_at = now + RETRY_EVERY
        return False
