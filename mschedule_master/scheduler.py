"""Schedules as the master runs them: carries out what the pure planner
(:func:`.schedules.plan`) decides, and the operations the API and CLI offer.

The daemon's loop calls :meth:`Scheduler.tick` and sleeps no longer than
:meth:`Scheduler.next_wake`. Time comes in through ``clock`` (epoch seconds), so tests
drive it by hand, as the rollout engine's. Runs go through :meth:`.JobService.run`, the
path of ``job run``. The rules of docs/schedules.md "Never twice" hold here:

1. A fire time's record and its task are written in one transaction (the engine's batch),
   and the planner's view of the store is read inside it (``begin immediate``), so two
   masters on one database plan a schedule one after the other.
2. A run starts only for a record this transaction inserted (``on conflict do nothing``).
3. A queued fire time starts by compare-and-set (queued -> fired).

Runs on the master's event-loop thread.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from . import models
from .audit import AuditLog
from .engine import Engine
from .errors import StoreError
from .jobs import JobError, build_submit
from .jobservice import JobService
from .models import InvalidRequest, NotFound
from .schedules import (
    DEFAULT_VERSION,
    Outcome,
    Plan,
    Record,
    Schedule,
    ScheduleError,
    StartQueued,
    next_fire_times,
    plan,
)  # fmt: skip
from .schedulestore import ScheduleExists, ScheduleStore, StoredSchedule

log = logging.getLogger(__name__)

#: Longest preview of fire times.
MAX_PREVIEW = 1000
#: A schedule whose planning failed (not the database: that stops the master) is tried again after this (seconds).
RETRY_AFTER = 5.0


class Scheduler:
    def __init__(self, *, engine: Engine, jobs: JobService, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.jobs = jobs
        self.store = ScheduleStore(engine.store)
        self.clock = clock
        self._audit = AuditLog(engine.store, clock=clock)
        self._wake: dict[str, int | None] = {}  #: schedule -> its next fire time, once planned
        self._dirty: set[str] = set()  #: plan these at the next tick (a run ended, a resume)
        engine.subscribe(self._on_event)

    # ------------------------------------------------------------------ operations
    def add(self, s: Schedule, *, created_by: str) -> StoredSchedule:
        """Store a new schedule (its job must exist). Raises InvalidRequest."""
        version = self.jobs.get(s.job, None if s.version == DEFAULT_VERSION else int(s.version))  # NotFound now
        try:  # a run of today's version must be possible (e.g. targets given somewhere), as at fire time
            build_submit(version, _overrides(s))
        except JobError as e:
            raise InvalidRequest(str(e), e.field) from None
        try:
            with self.engine.store.db():
                stored = self.store.add(s, now=self.clock(), created_by=created_by)
                self._audit.append("schedule_add", schedule=s.name, job=s.job, version=str(s.version), cron=s.cron,
                                   tz=s.tz, created_by=created_by)  # fmt: skip
        except ScheduleExists as e:
            raise InvalidRequest(str(e), "name") from None
        log.info("schedule %s added: %s@%s on %r in %s", s.name, s.job, s.version, s.cron, s.tz)
        self._dirty.add(s.name)
        return stored

    def list(self) -> builtins.list[StoredSchedule]:
        return self.store.list()

    def get(self, name: str) -> StoredSchedule:
        return self.store.get(name)

    def pause(self, name: str) -> StoredSchedule:
        with self.engine.store.db():
            changed = self.store.set_paused(name, True, now=self.clock())
            if changed:
                self._audit.append("schedule_pause", schedule=name)
        if changed:
            log.info("schedule %s paused", name)
        self._wake.pop(name, None)
        return self.store.get(name)

    def resume(self, name: str) -> StoredSchedule:
        with self.engine.store.db():
            changed = self.store.set_paused(name, False, now=self.clock())
            if changed:
                self._audit.append("schedule_resume", schedule=name)
        if changed:
            log.info("schedule %s resumed", name)
        self._dirty.add(name)
        return self.store.get(name)

    def remove(self, name: str) -> None:
        with self.engine.store.db():
            self.store.remove(name)
            self._audit.append("schedule_remove", schedule=name)
        self._wake.pop(name, None)
        log.info("schedule %s removed", name)

    def next_times(self, name: str, n: int, after: float | None = None) -> builtins.list[int]:
        if not 1 <= n <= MAX_PREVIEW:
            raise InvalidRequest(f"n must be 1..{MAX_PREVIEW}", "n")
        return next_fire_times(self.store.get(name).schedule, self.clock() if after is None else after, n)

    def runs(self, name: str, limit: int = 20) -> builtins.list[dict[str, Any]]:
        self.store.get(name)
        return self.store.runs(name, limit)

    # ------------------------------------------------------------------ time
    def next_wake(self) -> float | None:
        """The earliest fire time planned for (now, when something is to be planned)."""
        if self._dirty:
            return self.clock()
        return min((w for w in self._wake.values() if w is not None), default=None)

    def tick(self) -> None:
        """Plan every schedule whose fire time came, that is new, or whose run ended."""
        now = self.clock()
        dirty, self._dirty = self._dirty, set()
        for name in self.store.active_names():
            wake = self._wake.get(name, 0)
            if name in dirty or name not in self._wake or (wake is not None and wake <= now):
                try:
                    self.plan_one(name, now)
                except NotFound:
                    self._wake.pop(name, None)  # removed meanwhile
                except (sqlite3.Error, StoreError):  # StoreError: pgstore's DatabaseError, or NotLeader
                    raise  # the daemon stops: memory and disk may disagree (as for a batch of messages)
                except Exception:
                    self._wake[name] = int(now + RETRY_AFTER)
                    log.exception("planning schedule %s failed; will retry in %.0f s", name, RETRY_AFTER)

    def plan_one(self, name: str, now: float) -> Plan:
        """Plan one schedule and carry the plan out, in one transaction."""
        with self.engine.batch():
            stored = self.store.get(name)
            p = plan(stored.schedule, self.store.state(name, stored.since), now)
            for action in p.actions:
                if isinstance(action, StartQueued):
                    self._start_queued(stored.schedule, action.fire_time)
                else:
                    self._record(stored.schedule, action, now)
            if p.missed_earlier:
                self.store.add_missed_earlier(name, p.missed_earlier)
                log.warning("schedule %s: %d older fire times missed (not recorded one by one)", name, p.missed_earlier)
        self._wake[name] = p.wake
        return p

    def _record(self, s: Schedule, record: Record, now: float) -> None:
        if not self.store.insert_fire(s.name, record.fire_time, record.outcome, now=now):
            log.info("schedule %s: fire time %d was already decided; nothing more to do", s.name, record.fire_time)
            return
        if record.outcome is not Outcome.FIRED:
            log.info("schedule %s: fire time %d %s", s.name, record.fire_time, record.outcome.value)
        if record.starts:
            self._start(s, record.fire_time, record.outcome)

    def _start_queued(self, s: Schedule, fire_time: int) -> None:
        if self.store.change_outcome(s.name, fire_time, Outcome.QUEUED, Outcome.FIRED):
            self._start(s, fire_time, Outcome.FIRED)

    def _start(self, s: Schedule, fire_time: int, outcome: Outcome) -> None:
        """Create the run of a fire time just recorded (in the same transaction)."""
        version = None if s.version == DEFAULT_VERSION else int(s.version)
        try:
            task, _ = self.jobs.run(s.job, version, _overrides(s), submitted_by=f"schedule:{s.name}")
        except (InvalidRequest, NotFound, ScheduleError) as e:  # raised before the engine writes anything
            self.store.not_started(s.name, fire_time, str(e))
            log.warning("schedule %s: the run of fire time %d could not start: %s", s.name, fire_time, e)
            return
        self.store.set_task(s.name, fire_time, task.id)
        log.info("schedule %s: fire time %d %s task %s", s.name, fire_time, outcome.value, task.id,
                 extra={"task_id": task.id})  # fmt: skip

    def _on_event(self, event: models.Event) -> None:
        """A run that ended may free a slot for a queued fire time."""
        if event.kind != "task" or event.task_id is None or "old" not in event.data:
            return
        if event.data.get("state") in ("SUCCEED", "FAILED", "KILLED"):
            name = self.store.schedule_of_task(event.task_id)
            if name is not None:
                self._dirty.add(name)


def _overrides(s: Schedule) -> dict[str, Any]:
    """The schedule's run settings over the job version's defaults (never the job or version)."""
    return {k: v for k, v in s.overrides.items() if k not in ("job", "version")}
