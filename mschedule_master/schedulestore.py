"""The schedules' tables in the master's store (migration ``schedules-1`` in :mod:`.store`).

Uses the store's one connection and its ``db()`` transaction. ``schedule_fires`` has the
primary key (schedule, fire_time): :meth:`ScheduleStore.insert_fire` is an ``insert ... on
conflict do nothing`` that says whether *this* call inserted the row, so a fire time is
decided once however many masters (or lives of one master) plan it. Reads return
:mod:`.schedules` dataclasses (and plain dicts for the records, as the API shows them).
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .models import NotFound
from .schedules import DEFAULT_VERSION, Misfire, Outcome, Overlap, Schedule, State, check_outcome_transition
from .states import TASK_FINAL
from .store import Store

if TYPE_CHECKING:
    import sqlite3

_COLS = (
    "name, job, version, cron, tz, overlap, misfire, paused, overrides, since, created_at, created_by, missed_earlier"
)
_FINAL = tuple(s.value for s in TASK_FINAL)


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """A schedule and its bookkeeping: when it was created and by whom, since when it plans."""

    schedule: Schedule
    since: float  #: created or last resumed at
    created_at: float
    created_by: str
    missed_earlier: int  #: missed fire times counted but not recorded one by one (long outages)


class ScheduleExists(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} already exists; remove it first or pick another name")
        self.name = name


class ScheduleStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.store._conn

    # ------------------------------------------------------------------ schedules
    def add(self, s: Schedule, *, now: float, created_by: str) -> StoredSchedule:
        """Store a new schedule. Raises ScheduleExists."""
        version = s.version if s.version == DEFAULT_VERSION else str(s.version)
        with self.store.db() as c:
            cur = c.execute(
                f"insert into schedules ({_COLS}) values (?,?,?,?,?,?,?,?,?,?,?,?,0) on conflict (name) do nothing",
                (s.name, s.job, version, s.cron, s.tz, str(s.overlap), str(s.misfire), int(s.paused),
                 json.dumps(s.overrides, sort_keys=True), now, now, created_by),
            )  # fmt: skip
            if cur.rowcount != 1:
                raise ScheduleExists(s.name)
            self.store.require_sync()
        return self.get(s.name)

    def get(self, name: str) -> StoredSchedule:
        row = self._conn.execute(f"select {_COLS} from schedules where name=?", (name,)).fetchone()
        if row is None:
            raise NotFound("schedule", name)
        return _stored(row)

    def list(self) -> builtins.list[StoredSchedule]:
        return [_stored(r) for r in self._conn.execute(f"select {_COLS} from schedules order by name")]

    def active_names(self) -> builtins.list[str]:
        """The schedules that are not paused."""
        return [n for (n,) in self._conn.execute("select name from schedules where paused=0")]

    def set_paused(self, name: str, paused: bool, *, now: float) -> bool:
        """Pause, or resume (from ``now``: the paused fire times are not this schedule's).
        False when it already was so."""
        self.get(name)
        with self.store.db() as c:
            if paused:
                cur = c.execute("update schedules set paused=1 where name=? and paused=0", (name,))
            else:
                cur = c.execute("update schedules set paused=0, since=? where name=? and paused=1", (now, name))
            return cur.rowcount == 1

    def remove(self, name: str) -> None:
        """Delete the schedule and its records (its tasks stay)."""
        self.get(name)
        with self.store.db() as c:
            c.execute("delete from schedule_fires where schedule=?", (name,))
            c.execute("delete from schedules where name=?", (name,))
            self.store.require_sync()

    def add_missed_earlier(self, name: str, n: int) -> None:
        with self.store.db() as c:
            c.execute("update schedules set missed_earlier = missed_earlier + ? where name=?", (n, name))

    # ------------------------------------------------------------------ fire times
    def state(self, name: str, since: float) -> State:
        """What the planner needs: the latest fire time, runs still going, fire times queued."""
        c = self._conn
        (last,) = c.execute("select max(fire_time) from schedule_fires where schedule=?", (name,)).fetchone()
        marks = ",".join("?" * len(_FINAL))
        (running,) = c.execute(
            f"select count(*) from schedule_fires f join tasks t on t.id = f.task_id "
            f"where f.schedule=? and t.state not in ({marks})",
            (name, *_FINAL),
        ).fetchone()
        queued = tuple(
            t for (t,) in c.execute(
                "select fire_time from schedule_fires where schedule=? and outcome=? order by fire_time",
                (name, Outcome.QUEUED.value),
            )
        )  # fmt: skip
        return State(since=since, last_fire=last, running=running, queued=queued)

    def insert_fire(self, name: str, fire_time: int, outcome: Outcome, *, now: float) -> bool:
        """Record a decided fire time. False when it was already recorded (by anyone)."""
        with self.store.db() as c:
            cur = c.execute(
                "insert into schedule_fires (schedule, fire_time, outcome, recorded_at) values (?,?,?,?) "
                "on conflict (schedule, fire_time) do nothing",
                (name, fire_time, outcome.value, now),
            )
            return cur.rowcount == 1

    def change_outcome(
        self, name: str, fire_time: int, old: Outcome, new: Outcome, *, error: str | None = None
    ) -> bool:
        """Compare-and-set of a record's outcome. False when it no longer is ``old``."""
        check_outcome_transition(old, new)
        with self.store.db() as c:
            cur = c.execute(
                "update schedule_fires set outcome=?, error=? where schedule=? and fire_time=? and outcome=?",
                (new.value, error, name, fire_time, old.value),
            )
            return cur.rowcount == 1

    def set_task(self, name: str, fire_time: int, task_id: str) -> None:
        with self.store.db() as c:
            c.execute(
                "update schedule_fires set task_id=? where schedule=? and fire_time=?", (task_id, name, fire_time)
            )
            self.store.require_sync()

    def not_started(self, name: str, fire_time: int, error: str) -> None:
        """A due run that could not be created: say why on its record. Only in the
        transaction that recorded (or started) the fire time, before it commits."""
        with self.store.db() as c:
            c.execute(
                "update schedule_fires set outcome=?, error=? where schedule=? and fire_time=?",
                (Outcome.NOT_STARTED.value, error, name, fire_time),
            )

    def schedule_of_task(self, task_id: str) -> str | None:
        row = self._conn.execute("select schedule from schedule_fires where task_id=?", (task_id,)).fetchone()
        return None if row is None else row[0]

    def runs(self, name: str, limit: int = 20) -> builtins.list[dict[str, Any]]:
        """The schedule's records, newest fire time first, with their tasks' states."""
        rows = self._conn.execute(
            "select f.fire_time, f.outcome, f.recorded_at, f.task_id, f.error, t.state, t.finished_at "
            "from schedule_fires f left join tasks t on t.id = f.task_id where f.schedule=? "
            "order by f.fire_time desc limit ?",
            (name, limit),
        )
        keys = ("fire_time", "outcome", "recorded_at", "task_id", "error", "task_state", "finished_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def outcome_counts(self, name: str) -> dict[str, int]:
        rows = self._conn.execute(
            "select outcome, count(*) from schedule_fires where schedule=? group by outcome", (name,)
        )
        return dict(rows.fetchall())


def _stored(r: tuple[Any, ...]) -> StoredSchedule:
    version: int | str = r[2] if r[2] == DEFAULT_VERSION else int(r[2])
    s = Schedule(
        name=r[0], job=r[1], version=version, cron=r[3], tz=r[4], overlap=Overlap.parse(r[5]),
        misfire=Misfire.parse(r[6]), paused=bool(r[7]), overrides=json.loads(r[8]),
    )  # fmt: skip
    return StoredSchedule(s, since=r[9], created_at=r[10], created_by=r[11], missed_earlier=r[12])
