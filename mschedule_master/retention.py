"""Retention: finished tasks expire, in small batches that never hold up ingestion.

A task that ended more than ``retention_days`` ago is deleted with its targets (and so
their outputs) and its events, and its retained MQTT summary is cleared (an empty retained
publication). Outputs alone may expire sooner (``output_retention_days``): the targets'
stdout and stderr are dropped, their states, exit codes and sizes kept. Events that belong
to no kept task (agent comings and goings, strays for unknown tasks) expire with the same
age. Nothing unfinished is ever touched: only tasks in a final state with a ``finished_at``
are candidates, and the engine's active tasks are excluded again in memory.

Each :meth:`Retention.step` is one short transaction of at most :data:`BATCH_ROWS` rows,
run on the master's loop between message batches (the daemon skips it while the inbox is
behind). Freed pages are handed back to the file system by ``incremental_vacuum`` (a
database made with ``auto_vacuum=incremental``; see README "Operating" for switching an
older one, which needs one ``VACUUM``).

Job versions (not there yet): when tasks reference job versions, delete a version only
when no kept task references it -- add that as the last stage of :meth:`Retention.step`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .metrics import Metrics
from .states import TaskState
from .store import Store

log = logging.getLogger(__name__)

DAY = 86400.0
#: Rows (targets, events) deleted or emptied in one transaction at most.
BATCH_ROWS = 2000
#: Expired tasks looked at per step at most.
BATCH_TASKS = 100
#: Pages handed back per step by incremental_vacuum (4 KiB each).
VACUUM_PAGES = 2000
#: Seconds between steps while there is work, and between looks when there was none.
BUSY_INTERVAL = 0.2
IDLE_INTERVAL = 60.0

_FINAL = tuple(s.value for s in TaskState if s.final)
_FINAL_SQL = f"state in ({','.join('?' * len(_FINAL))})"


@dataclass(frozen=True, slots=True)
class Policy:
    """``days`` 0 keeps everything; ``output_days`` 0 keeps outputs as long as their task."""

    days: float = 30.0
    output_days: float = 0.0

    def task_cutoff(self, now: float) -> float | None:
        return now - self.days * DAY if self.days > 0 else None

    def output_cutoff(self, now: float) -> float | None:
        """None when outputs live as long as their task (they go with it)."""
        if self.output_days <= 0 or (self.days > 0 and self.output_days >= self.days):
            return None
        return now - self.output_days * DAY


class Retention:
    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        clear_summary: Callable[[str], None],
        active_ids: Callable[[], Iterable[str]] = tuple,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clear_summary = clear_summary
        self.active_ids = active_ids
        self.metrics = metrics
        self._next = 0.0

    def tick(self, now: float) -> None:
        """Called by the daemon's timer: a step when one is due."""
        if now < self._next:
            return
        busy = self.step(now)
        self._next = now + (BUSY_INTERVAL if busy else self._idle_interval())

    def _idle_interval(self) -> float:
        """IDLE_INTERVAL, or a tenth of a retention shorter than ten minutes (tests, demos)."""
        days = [d for d in (self.policy.days, self.policy.output_days) if d > 0]
        return max(BUSY_INTERVAL, min([IDLE_INTERVAL, *(d * DAY / 10 for d in days)]))

    def step(self, now: float) -> bool:
        """One bounded batch of each kind of expiry; True if there may be more to do."""
        busy = False
        cutoff = self.policy.task_cutoff(now)
        if cutoff is not None:
            busy |= self._tasks(cutoff)
            busy |= self._events(cutoff)
        out_cutoff = self.policy.output_cutoff(now)
        if out_cutoff is not None:
            busy |= self._outputs(out_cutoff)
        self._vacuum()
        return busy

    # ------------------------------------------------------------------ stages
    def _candidates(self, c: sqlite3.Connection, cutoff: float, extra: str = "") -> list[str]:
        active = set(self.active_ids())
        rows = c.execute(
            f"select id from tasks where finished_at is not null and finished_at < ? and {_FINAL_SQL}{extra} "
            "order by finished_at limit ?",
            (cutoff, *_FINAL, BATCH_TASKS),
        ).fetchall()
        return [r[0] for r in rows if r[0] not in active]

    def _tasks(self, cutoff: float) -> bool:
        budget, gone, rows = BATCH_ROWS, [], 0
        with self.store.db() as c:
            ids = self._candidates(c, cutoff)
            for task_id in ids:
                for table in ("targets", "events", "live_output"):
                    n = c.execute(
                        f"delete from {table} where rowid in (select rowid from {table} where task_id=? limit ?)",
                        (task_id, budget),
                    ).rowcount
                    budget -= n
                    rows += n
                if budget <= 0:
                    break  # this task may have rows left: finished next step
                c.execute("delete from outputs_expired where task_id=?", (task_id,))
                c.execute("delete from tasks where id=?", (task_id,))
                gone.append(task_id)
        for task_id in gone:
            self.clear_summary(task_id)
        self._count("tasks", len(gone))
        self._count("rows", rows)
        if gone:
            log.info("retention: deleted %d task(s) finished before the cutoff (%d rows)", len(gone), rows)
        return bool(ids)

    def _events(self, cutoff: float) -> bool:
        with self.store.db() as c:
            n = c.execute(
                "delete from events where id in (select id from events where ts < ? and "
                "(task_id is null or task_id not in (select id from tasks)) limit ?)",
                (cutoff, BATCH_ROWS),
            ).rowcount
        self._count("events", n)
        return n >= BATCH_ROWS

    def _outputs(self, cutoff: float) -> bool:
        budget = BATCH_ROWS
        with self.store.db() as c:
            ids = self._candidates(c, cutoff, " and id not in (select task_id from outputs_expired)")
            for task_id in ids:
                n = c.execute(
                    "update targets set stdout=null, stderr=null where task_id=? and "
                    "(stdout is not null or stderr is not null)",
                    (task_id,),
                ).rowcount
                c.execute("insert into outputs_expired (task_id) values (?) on conflict do nothing", (task_id,))
                self._count("outputs", n)
                budget -= max(n, 1)
                if budget <= 0:
                    break
        return bool(ids)

    def _vacuum(self) -> None:
        n = self.store.incremental_vacuum(VACUUM_PAGES)
        if n:
            log.debug("retention: %d free page(s) handed back", n)

    def _count(self, kind: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.deleted(kind, n)
