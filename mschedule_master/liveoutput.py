"""Live output on the master: ``output`` chunks stored by (task, agent, seq), and read back.

:class:`LiveIngest` takes the agents' ``output`` and ``output_end`` messages (on
``<prefix>[/dc/DC]/output/<agent>/<task>``, subscribed at QoS 0) inside the engine's batch:
a chunk is stored once (a copy that comes again changes nothing), only for a target of a
known task whose result is not stored yet, and each stored chunk becomes an ``output``
event for the watchers (the SSE stream of the task, the follow route). The chunks kept
per stream count against the task's output cap, as the result does: the first half of
the cap and the latest half; older chunks past the head are deleted as new ones come.
Once the target ends, its chunks are deleted: the result is the record, and a follower
takes the rest (and any gap) from it (:mod:`.follow`).

The read functions at the end take a store as their first argument, so that
``service.read_off_loop`` can run them in a reader thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mschedule_agent import protocol
from mschedule_agent.config import DEFAULT_OUTPUT_CAP
from mschedule_agent.protocol import OutputChunk, OutputEnd
from mschedule_agent.transport import Incoming

from .engine import Engine
from .models import Event
from .states import TARGET_FINAL
from .store import Store

log = logging.getLogger(__name__)

#: the final target states' values, as events carry them (no TargetState(value) call per event)
_FINAL_VALUES = frozenset(s.value for s in TARGET_FINAL)


@dataclass(frozen=True, slots=True)
class Chunk:
    stream: str
    offset: int
    skipped: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def text_or_base64(data: bytes) -> tuple[str, str]:
    """``(text, encoding)``: UTF-8 text when the bytes decode, else base64."""
    import base64

    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


class LiveIngest:
    """Stores live output and tells the watchers; runs on the master's loop thread."""

    def __init__(self, *, engine: Engine, store: Store) -> None:
        self.engine = engine
        self.store = store
        #: (task, agent, stream) -> end of the stream as stored (to notice gaps)
        self._ends: dict[tuple[str, str, str], int] = {}
        self._holding: set[tuple[str, str]] = set()  #: targets with chunks stored
        self.stored = 0  #: chunks stored (for tests and metrics)
        self.duplicates = 0
        self.gaps = 0
        engine.subscribe(self._on_event)
        self._purge_finished()

    def handle(self, info: protocol.TopicInfo, incoming: Incoming) -> None:
        """One message on an output topic (inside the engine's batch)."""
        agent_id, task_id = info.agent_id, info.task_id
        try:
            msg = protocol.decode_as(incoming.payload, OutputChunk, OutputEnd)
        except protocol.DecodeError as e:
            log.warning("bad live output from agent %s: %s; dropped", agent_id, e, extra={"agent_id": agent_id})
            return
        if msg.id != task_id or msg.agent_id != agent_id:
            log.warning("live output on %s names task %s of agent %s; dropped", incoming.topic, msg.id, msg.agent_id)
            return
        cap = self._cap(msg.id, msg.agent_id)
        if cap is None:
            self.engine.metrics.live_chunk("refused")
            return  # no such target, or its result is stored: the result is the record
        if isinstance(msg, OutputEnd):
            self._end(msg)
        else:
            self._chunk(msg, cap)

    # ------------------------------------------------------------------ internals
    def _cap(self, task_id: str, agent_id: str) -> int | None:
        row = self.store._conn.execute(
            "select t.result_at, k.output_cap from targets t join tasks k on k.id = t.task_id "
            "where t.task_id=? and t.agent_id=?",
            (task_id, agent_id),
        ).fetchone()
        if row is None or row[0] is not None:
            return None
        return DEFAULT_OUTPUT_CAP if row[1] is None else int(row[1])

    def _chunk(self, msg: OutputChunk, cap: int) -> None:
        key = (msg.id, msg.agent_id, msg.stream)
        head = cap // 2
        if cap == 0 or not msg.data:
            return
        with self.store.db() as c:
            inserted = c.execute(
                "insert into live_output (task_id, agent_id, seq, stream, \"offset\", skipped, data) "
                "values (?,?,?,?,?,?,?) on conflict do nothing",
                (msg.id, msg.agent_id, msg.seq, msg.stream, msg.offset, msg.skipped, msg.data),
            ).rowcount
            if not inserted:
                self.duplicates += 1
                self.engine.metrics.live_chunk("duplicate")
                return
            # The cap: the head, and the latest cap - head bytes; older chunks in between go.
            c.execute(
                "delete from live_output where task_id=? and agent_id=? and stream=? and \"offset\" >= ? "
                "and \"offset\" + length(data) <= ?",
                (msg.id, msg.agent_id, msg.stream, head, msg.offset + len(msg.data) - (cap - head)),
            )
        self.stored += 1
        self.engine.metrics.live_chunk("stored")
        self._holding.add((msg.id, msg.agent_id))
        expected = self._ends.get(key)
        gap = 0
        if expected is not None and msg.offset - msg.skipped > expected:
            gap = msg.offset - msg.skipped - expected
            self.gaps += 1
            self.engine.metrics.live_chunk("gap")
            log.info("task %s: %d byte(s) of %s live output from %s lost on the way; the result fills them",
                     msg.id, gap, msg.stream, msg.agent_id, extra={"task_id": msg.id})  # fmt: skip
        self._ends[key] = max(expected or 0, msg.offset + len(msg.data))
        text, encoding = text_or_base64(msg.data)
        agent = self.engine.registry.get(msg.agent_id)
        self.engine.emit("output", msg.id, {
            "agent_id": msg.agent_id, "hostname": agent.hostname if agent else None, "seq": msg.seq, "stream": msg.stream, "offset": msg.offset,
            "skipped": msg.skipped, "gap": gap, "data": text, "encoding": encoding,
        })  # fmt: skip

    def _end(self, msg: OutputEnd) -> None:
        self.engine.emit("output_end", msg.id, {
            "agent_id": msg.agent_id, "seq": msg.seq, "stdout_bytes": msg.stdout_bytes,
            "stderr_bytes": msg.stderr_bytes, "stdout_sha256": msg.stdout_sha256,
            "stderr_sha256": msg.stderr_sha256, "skipped": msg.skipped,
        })  # fmt: skip

    def _on_event(self, event: Event) -> None:
        """A target that ended needs its chunks no more: the result has the output."""
        if event.kind != "target" or event.task_id is None:
            return
        agent_id = event.data.get("agent_id")
        state = event.data.get("state")
        if not isinstance(agent_id, str) or state not in _FINAL_VALUES:  # one event per target of a fan-out
            return
        for stream in protocol.OUTPUT_STREAMS:
            self._ends.pop((event.task_id, agent_id, stream), None)
        if (event.task_id, agent_id) in self._holding:
            self._holding.discard((event.task_id, agent_id))
            with self.store.db() as c:
                c.execute("delete from live_output where task_id=? and agent_id=?", (event.task_id, agent_id))

    def _purge_finished(self) -> None:
        """At start-up: chunks of targets whose result came while no one deleted them."""
        with self.store.db() as c:
            n = c.execute(
                "delete from live_output where exists (select 1 from targets t where t.task_id = live_output.task_id "
                "and t.agent_id = live_output.agent_id and t.result_at is not null)"
            ).rowcount
        if n:
            log.info("deleted %d live output chunk(s) of targets that have their result", n)


# ------------------------------------------------------------------ reads (any thread, any store)
def chunks_after(store: Store, task_id: str, agent_id: str, stream: str, offset: int) -> list[Chunk]:
    """The stored chunks of one stream that hold bytes at or past ``offset``, in order."""
    rows = store._conn.execute(
        "select \"offset\", skipped, data from live_output where task_id=? and agent_id=? and stream=? "
        "and \"offset\" + length(data) > ? order by \"offset\" limit 1000",  # quoted: a keyword in PostgreSQL
        (task_id, agent_id, stream, offset),
    )
    return [Chunk(stream, r[0], r[1], bytes(r[2])) for r in rows]


def event_for(event: Event, task_id: str, agent_id: str) -> bool:
    """Whether ``event`` may change what a follower of (task, agent) sees."""
    data: dict[str, Any] = event.data
    return event.task_id == task_id and event.kind in ("output", "output_end", "target") and data.get("agent_id") == agent_id
