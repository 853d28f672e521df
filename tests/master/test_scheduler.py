"""Schedules in the master core (issue 15): the scheduler carries out the pure planner's
decisions against the real store and engine, with the clock driven by hand. A master
"down" across fire times is a fresh master core over the same database at a later time;
two masters on one database are two cores over one file."""

from __future__ import annotations

import sqlite3

import pytest

from mschedule_agent import protocol as P
from mschedule_master.schedules import Misfire, Overlap, Schedule

BACKENDS = ("sqlite", "postgresql")  # tests taking `rig` or `db` run on both stores (tests/conftest.py)

MIN = 60
#: the rig's clock starts at 1_000_000 = 16666 min + 40 s: the next fire time of "* * * * *"
FIRST = 1_000_020


def _job(rig, name="backup", targets=("all",)) -> None:
    rig.service.jobs.save(name, b"#!/bin/sh\necho hi\n", defaults={"targets": list(targets)})


def _add(rig, name="nightly", **kw) -> None:
    kw.setdefault("job", "backup")
    kw.setdefault("cron", "* * * * *")
    rig.service.schedules.add(Schedule(name, **kw), created_by="test")


def _at(rig, t: float) -> None:
    """Move the clock to ``t`` and let the scheduler plan (no rollout timers run)."""
    rig.clock.now = t
    rig.service.schedules.tick()


def _records(rig, name="nightly") -> list[tuple[int, str]]:
    return [(r["fire_time"], r["outcome"]) for r in reversed(rig.service.schedules.runs(name, 1000))]


def _tasks_of(store, name="nightly") -> list[str]:
    sql = "select id from tasks where submitted_by=? order by created_at, rowid"
    rows = store._conn.execute(sql, (f"schedule:{name}",))
    return [r[0] for r in rows]


def _finish(rig, task_id: str, agent="a1") -> None:
    rig.from_agent(agent, P.Result(id=task_id, agent_id=agent, state="SUCCEED", code=0))


def _setup(rig, **kw) -> None:
    rig.register("a1")
    _job(rig)
    _add(rig, **kw)


def test_each_fire_time_starts_one_task_of_the_job_and_records_it_fired(rig):
    _setup(rig)
    _at(rig, FIRST - 1)
    assert _records(rig) == [] and rig.service.schedules.next_wake() == FIRST
    _at(rig, FIRST + 0.2)
    _at(rig, FIRST + 0.7)  # the same fire time planned again: nothing more
    tasks = _tasks_of(rig.store)
    assert _records(rig) == [(FIRST, "fired")] and len(tasks) == 1
    run = rig.service.schedules.runs("nightly")[0]
    assert run["task_id"] == tasks[0] and run["task_state"] in ("WAITING", "RUNNING")
    link = rig.service.jobs.task_link(tasks[0])
    assert (link.job, link.job_version, link.submitted_by) == ("backup", 1, "schedule:nightly")
    assert [t for _, t in rig.sent("task")]  # dispatched to the agent
    _finish(rig, tasks[0])
    _at(rig, FIRST + MIN)
    assert _records(rig) == [(FIRST, "fired"), (FIRST + MIN, "fired")] and len(_tasks_of(rig.store)) == 2
    assert rig.service.schedules.next_wake() == FIRST + 2 * MIN


def test_default_follows_the_jobs_default_at_fire_time_and_a_pin_does_not(rig):
    rig.register("a1")
    _job(rig)
    _add(rig, "follows")
    _add(rig, "pinned", version=1)
    rig.service.jobs.save("backup", b"#!/bin/sh\necho two\n", defaults={"targets": ["all"]})
    _at(rig, FIRST)
    follows, pinned = _tasks_of(rig.store, "follows"), _tasks_of(rig.store, "pinned")
    assert rig.service.jobs.task_link(follows[0]).job_version == 2
    assert rig.service.jobs.task_link(pinned[0]).job_version == 1


def test_two_masters_on_one_database_fire_a_fire_time_once(rig, rig_factory, db):
    _setup(rig)
    other = rig_factory(db)  # a restarted (or second) master on the same file
    rig.service.flush_agents()
    other.registry.load(other.store.load_agents(), rig.clock())
    try:
        other.clock.now = rig.clock.now = FIRST + 1
        rig.service.schedules.tick()
        other.service.schedules.tick()
        assert len(_tasks_of(rig.store)) == 1 and len(_tasks_of(other.store)) == 1
        n = rig.store._conn.execute("select count(*) from schedule_fires where schedule='nightly'").fetchone()[0]
        assert n == 1 and _records(other) == [(FIRST, "fired")]
        assert other.sent("task") == []  # the second master started nothing
    finally:
        other.store.close()


def test_a_restart_at_a_fire_time_fires_it_once(rig, rig_factory, db):
    _setup(rig)
    _at(rig, FIRST + 0.5)
    rig.service.flush_agents()
    rig.store.close()
    again = rig_factory(db)
    try:
        again.engine.restore()
        again.clock.now = FIRST + 2  # back within the fire time's grace
        again.service.schedules.tick()
        assert _records(again) == [(FIRST, "fired")] and len(_tasks_of(again.store)) == 1
    finally:
        again.store.close()


def test_a_paused_schedule_fires_nothing_and_resume_does_not_run_the_paused_times(rig):
    _setup(rig)
    rig.service.schedules.pause("nightly")
    for k in range(3):
        _at(rig, FIRST + k * MIN)
    assert _records(rig) == [] and rig.service.schedules.next_wake() is None
    assert rig.service.schedules.get("nightly").schedule.paused
    _at(rig, FIRST + 2 * MIN + 30)
    rig.service.schedules.resume("nightly")
    _at(rig, FIRST + 2 * MIN + 31)
    assert _records(rig) == []  # 00, 01, 02 were the operator's choice, not misfires
    _at(rig, FIRST + 3 * MIN)
    assert _records(rig) == [(FIRST + 3 * MIN, "fired")]


#: every 5 minutes: the rig's first fire time of "*/5 * * * *"
F5 = 1_000_200


def _down_across_three_fire_times(rig, rig_factory, db, misfire: str) -> list[tuple[int, str]]:
    """Every 5 min; up until F5 - 30, down across F5, +5 min, +10 min, back at +12 min."""
    _setup(rig, cron="*/5 * * * *", misfire=Misfire.parse(misfire), overlap=Overlap.parse("allow(5)"))
    _at(rig, F5 - 30)
    rig.service.flush_agents()
    rig.store.close()
    again = rig_factory(db)
    again.registry.load(again.store.load_agents(), F5)
    try:
        again.clock.now = F5 + 12 * MIN
        again.service.schedules.tick()
        return _records(again)
    finally:
        again.store.close()


def test_down_across_three_fire_times_skip_records_them_missed(rig, rig_factory, db):
    out = _down_across_three_fire_times(rig, rig_factory, db, "skip")
    assert out == [(F5, "missed"), (F5 + 5 * MIN, "missed"), (F5 + 10 * MIN, "missed")]


def test_down_across_three_fire_times_run_once_runs_the_latest(rig, rig_factory, db):
    out = _down_across_three_fire_times(rig, rig_factory, db, "run_once")
    assert out == [(F5, "missed"), (F5 + 5 * MIN, "missed"), (F5 + 10 * MIN, "caught-up")]


def test_down_across_three_fire_times_catch_up_runs_each_within_its_limit(rig, rig_factory, db):
    out = _down_across_three_fire_times(rig, rig_factory, db, "catch_up(2, 1h)")
    assert out == [(F5, "missed"), (F5 + 5 * MIN, "caught-up"), (F5 + 10 * MIN, "caught-up")]


def test_overlap_skip_skips_a_fire_time_while_the_long_run_goes_on(rig):
    _setup(rig)
    _at(rig, FIRST)
    (task,) = _tasks_of(rig.store)
    _at(rig, FIRST + MIN)
    _at(rig, FIRST + 2 * MIN)
    assert _records(rig) == [(FIRST, "fired"), (FIRST + MIN, "skipped-overlap"), (FIRST + 2 * MIN, "skipped-overlap")]
    _finish(rig, task)
    _at(rig, FIRST + 3 * MIN)
    assert _records(rig)[-1] == (FIRST + 3 * MIN, "fired") and len(_tasks_of(rig.store)) == 2


def test_overlap_queue_starts_the_queued_fire_time_when_the_run_ends(rig):
    _setup(rig, overlap=Overlap.parse("queue(1)"))
    _at(rig, FIRST)
    (first,) = _tasks_of(rig.store)
    _at(rig, FIRST + MIN)
    _at(rig, FIRST + 2 * MIN)
    assert _records(rig) == [(FIRST, "fired"), (FIRST + MIN, "queued"), (FIRST + 2 * MIN, "skipped-overlap")]
    rig.clock.now = FIRST + 2 * MIN + 10
    _finish(rig, first)  # the run's end makes the scheduler plan again, before any fire time
    assert rig.service.schedules.next_wake() == rig.clock.now
    rig.service.schedules.tick()
    assert _records(rig)[1] == (FIRST + MIN, "fired") and len(_tasks_of(rig.store)) == 2
    assert rig.service.schedules.runs("nightly")[1]["task_id"] == _tasks_of(rig.store)[1]


def test_a_run_that_cannot_be_created_is_recorded_not_started_with_why(rig):
    rig.register("a1")
    _job(rig, targets=["nosuchhost"])
    _add(rig)
    _at(rig, FIRST)
    (run,) = rig.service.schedules.runs("nightly")
    assert run["outcome"] == "not-started" and run["task_id"] is None and "nosuchhost" in run["error"]
    assert _tasks_of(rig.store) == []


def test_removing_a_schedule_stops_it_and_forgets_its_records(rig):
    _setup(rig)
    _at(rig, FIRST)
    rig.service.schedules.remove("nightly")
    _at(rig, FIRST + MIN)
    assert len(_tasks_of(rig.store)) == 1 and rig.service.schedules.list() == []


def test_a_schedule_whose_planning_fails_is_retried_later_not_at_every_tick(rig, monkeypatch, caplog):
    _setup(rig)
    calls = []

    def broken(*args, **kw):
        calls.append(args)
        raise RuntimeError("planner bug")

    monkeypatch.setattr("mschedule_master.scheduler.plan", broken)
    _at(rig, FIRST)
    _at(rig, FIRST + 1)
    assert len(calls) == 1 and "will retry in 5 s" in caplog.text
    assert rig.service.schedules.next_wake() == FIRST + 5
    monkeypatch.undo()
    _at(rig, FIRST + 5)
    assert _records(rig) == [(FIRST, "fired")]


def test_the_record_and_its_task_are_one_transaction_a_failure_between_them_leaves_neither(rig, monkeypatch):
    _setup(rig)

    def disk_full(*args, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr("mschedule_master.schedulestore.ScheduleStore.set_task", disk_full)
    rig.clock.now = FIRST
    with pytest.raises(sqlite3.OperationalError):  # the daemon stops on it; a restart resumes
        rig.service.schedules.tick()
    assert _records(rig) == [] and _tasks_of(rig.store) == []
    n = rig.store._conn.execute("select count(*) from tasks").fetchone()[0]
    assert n == 0


def test_a_queued_fire_time_whose_run_cannot_start_is_recorded_not_started(rig):
    _setup(rig, overlap=Overlap.parse("queue(1)"))
    _at(rig, FIRST)
    _at(rig, FIRST + MIN)
    assert _records(rig) == [(FIRST, "fired"), (FIRST + MIN, "queued")]
    rig.service.jobs.save("backup", b"#!/bin/sh\necho v2\n", defaults={"targets": ["gone-host"]})
    rig.clock.now = FIRST + MIN + 5
    _finish(rig, _tasks_of(rig.store)[0])
    rig.service.schedules.tick()
    (run,) = [r for r in rig.service.schedules.runs("nightly") if r["fire_time"] == FIRST + MIN]
    assert run["outcome"] == "not-started" and "gone-host" in run["error"] and run["task_id"] is None


def test_adding_a_schedule_that_could_not_run_today_is_refused_naming_the_setting(rig):
    from mschedule_master.models import InvalidRequest, NotFound

    rig.service.jobs.save("bare", b"#!/bin/sh\necho hi\n")  # no default targets
    with pytest.raises(InvalidRequest, match="no default targets") as e:
        rig.service.schedules.add(Schedule("s1", job="bare", cron="@daily"), created_by="test")
    assert e.value.field == "targets"
    with pytest.raises(NotFound, match="job 'nope'"):
        rig.service.schedules.add(Schedule("s2", job="nope", cron="@daily"), created_by="test")
    with pytest.raises(NotFound, match="bare@4"):
        rig.service.schedules.add(Schedule("s3", job="bare", version=4, cron="@daily", overrides={"targets": ["all"]}),
                                  created_by="test")  # fmt: skip
    rig.service.schedules.add(Schedule("s4", job="bare", cron="@daily", overrides={"targets": ["all"]}), created_by="t")
    assert [st.schedule.name for st in rig.service.schedules.list()] == ["s4"]
