"""The SQLite store: round trips, idempotent results, listings, schema version, agents."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from mschedule_agent import protocol
from mschedule_master import models
from mschedule_master.errors import StoreError
from mschedule_master.rollout import TargetSnapshot
from mschedule_master.states import TargetState, TaskState
from mschedule_master.store import Store, open_store


def _task(task_id: str, created_at: float, state=TaskState.WAITING, **kw) -> models.Task:
    base = dict(
        id=task_id, name="n", script=b"echo hi", targets_spec=["all"], timeout=0, parallel="50%", fail_rate=0.2,
        fail_count=-1, on_abort="kill", env={"A": "1"}, cwd=None, output_cap=None, delivery_timeout=60.0,
        state=state, reason="", created_at=created_at, finished_at=None, counts={}, target_count=0,
    )  # fmt: skip
    base.update(kw)
    return models.Task(**base)


BACKENDS = ("sqlite", "postgresql")  # each test that takes `store` runs on both (tests/conftest.py)


@pytest.fixture
def store(db):
    s = open_store(db)
    yield s
    s.close()


def test_a_task_round_trips_with_its_targets_and_counts(store):
    store.insert_task(_task("t1", 1.0), ["a", "b"])
    t = store.get_task("t1")
    assert (t.parallel, t.fail_rate, t.env, t.script) == ("50%", 0.2, {"A": "1"}, b"echo hi")
    assert t.counts == {"WAITING": 2} and t.target_count == 2
    assert [x.agent_id for x in t.targets] == ["a", "b"]
    snap = TargetSnapshot("a", TargetState.RUNNING, seq=0, acked=True, dispatched_at=2.0, expires_at=9.0)
    store.save_snapshots("t1", [snap])
    assert store.load_unfinished()[0].snapshots[0] == snap
    assert store.get_task("t1").counts == {"WAITING": 1, "RUNNING": 1}


def test_a_task_inserted_with_its_targets_snapshots_stores_them_as_they_are(store):
    snaps = [
        TargetSnapshot("a", TargetState.DISPATCHED, seq=0, dispatched_at=2.0, last_sent_at=2.0),
        TargetSnapshot("b", TargetState.WAITING, seq=1),
    ]
    store.insert_task(_task("t1", 1.0), ["a", "b"], snapshots=snaps)
    assert store.load_unfinished()[0].snapshots == snaps
    assert store.get_task("t1").counts == {"WAITING": 1, "DISPATCHED": 1}
    with pytest.raises(ValueError):
        store.insert_task(_task("t2", 1.0), ["b", "a"], snapshots=snaps)


def test_a_result_is_stored_once(store):
    store.insert_task(_task("t1", 1.0), ["a"])
    r1 = protocol.Result(id="t1", agent_id="a", state="FAILED", code=2, output=b"out", output_bytes=3, stderr=b"e", stderr_bytes=1)
    r2 = protocol.Result(id="t1", agent_id="a", state="SUCCEED", code=0)
    assert store.record_result("t1", "a", r1, 5.0) is True
    assert store.record_result("t1", "a", r2, 6.0) is False
    assert store.record_result("t1", "nobody", r2, 6.0) is False
    t = store.get_target("t1", "a")
    assert (t.code, t.stdout, t.stderr, t.stdout_bytes) == (2, b"out", b"e", 3)


def test_a_late_result_after_an_unreachable_verdict_shows_what_the_agent_reported(store):
    store.insert_task(_task("t1", 1.0), ["a", "b"])
    verdict = TargetSnapshot("a", TargetState.UNREACHABLE, seq=0, dispatched_at=2.0, expires_at=9.0, finished_at=14.0)
    store.save_snapshots("t1", [verdict])
    assert store.get_target("t1", "a").agent_state is None  # nothing heard from the agent yet
    late = protocol.Result(id="t1", agent_id="a", state="SUCCEED", code=0, output=b"ran", output_bytes=3)
    assert store.record_result("t1", "a", late, 20.0) is True
    t = store.get_target("t1", "a")
    assert (t.state, t.agent_state, t.code, t.stdout) == (TargetState.UNREACHABLE, "SUCCEED", 0, b"ran")
    assert store.get_target("t1", "b").agent_state is None


def test_listings_are_newest_first_filtered_and_paged(store):
    for i in range(5):
        store.insert_task(_task(f"t{i}", float(i)), ["a"])
    store.set_task_state("t3", TaskState.SUCCEED, "ok", 9.0)
    assert [t.id for t in store.list_tasks()] == ["t4", "t3", "t2", "t1", "t0"]
    assert [t.id for t in store.list_tasks(limit=2, offset=1)] == ["t3", "t2"]
    assert [t.id for t in store.list_tasks(state=TaskState.SUCCEED)] == ["t3"]
    assert all(t.targets is None for t in store.list_tasks())
    assert store.unfinished_task_ids() == ["t0", "t1", "t2", "t4"]


def test_a_rollback_inside_a_batch_undoes_only_that_message(store):
    with store.db():
        store.add_event(1.0, "kept", None, None, {})
        store.savepoint_begin()
        store.add_event(1.0, "undone", None, None, {})
        store.savepoint_rollback()
    assert [e["kind"] for e in store.events()] == ["kept"]


def test_a_savepoint_is_opened_only_by_a_write_and_undoes_only_what_followed(store):
    with store.db():
        store.add_event(1.0, "kept", None, None, {})
        store.savepoint_begin()
        store.events()  # a read opens nothing
        store.savepoint_rollback()  # nothing to undo
        store.savepoint_begin()
        store.add_event(1.0, "also kept", None, None, {})
        store.savepoint_release()
        store.savepoint_begin()
        store.add_event(1.0, "undone", None, None, {})
        store.add_event(1.0, "undone too", None, None, {})
        store.savepoint_rollback()
        store.add_event(1.0, "after", None, None, {})  # no savepoint pending any more
    assert [e["kind"] for e in store.events()] == ["kept", "also kept", "after"]


def test_agents_persist_across_reopen(db):
    s = open_store(db)
    a = models.Agent(
        id="a", hostname="h", ip=["10.0.0.1"], labels={"role": "web"}, version="1", capacity=2, online=True, dc="bj",
        started_at=1.0, last_seen=2.0, last_heartbeat=2.0, heartbeat_interval=5.0, running=["t"],
    )  # fmt: skip
    s.save_agents([a])
    s.save_agents([a])  # saved again: replaced, not doubled
    s.close()
    s = open_store(db)
    assert s.load_agents() == [a]
    s.close()


def test_a_database_from_a_newer_master_is_refused(db):
    s = open_store(db)
    with s.db() as c:
        c.execute("update schema_version set version = 99")
    s.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(db)


def test_a_database_with_an_unknown_migration_is_refused(db):
    s = open_store(db)
    with s.db() as c:
        c.execute("insert into migrations (name, applied_at) values ('from-the-future', 0)")
    s.close()
    with pytest.raises(StoreError, match="from-the-future"):
        open_store(db)


def test_the_tail_of_an_output_is_its_last_bytes(store):
    store.insert_task(_task("t1", 1.0), ["a"])
    r = protocol.Result(id="t1", agent_id="a", state="SUCCEED", code=0, output=b"0123456789", output_bytes=10, stderr=b"ab", stderr_bytes=2)
    store.record_result("t1", "a", r, 5.0)
    (t,) = store.targets("t1", tail=3)
    assert (t.stdout, t.stderr) == (b"6789", b"ab")


def test_migrations_run_once_each_on_an_existing_database(tmp_path, monkeypatch):
    from mschedule_master import store as store_mod

    path = tmp_path / "s.db"
    landed = store_mod._MIGRATIONS
    monkeypatch.setattr(store_mod, "_MIGRATIONS", ())
    Store(str(path)).close()  # a database made before any migration existed
    monkeypatch.setattr(store_mod, "_MIGRATIONS", (*landed, ("t-extra", ("alter table tasks add column extra text",))))
    Store(str(path)).close()
    Store(str(path)).close()  # a second open must not add the column again
    with closing(sqlite3.connect(path)) as c:
        cols = [r[1] for r in c.execute("pragma table_info(tasks)")]
        names = [r[0] for r in c.execute("select name from migrations")]
    assert cols.count("extra") == 1
    assert sorted(names) == sorted([*(name for name, _ in landed), "t-extra"])


def test_tasks_listed_by_id_prefix_are_the_ids_that_start_with_it(store):
    """The CLI's short ids: a range on the key, not a scan."""
    for i, task_id in enumerate(("ab12", "ab13", "ac00", "b")):
        store.insert_task(_task(task_id, float(i)), ["a"])
    assert [t.id for t in store.list_tasks(id_prefix="ab")] == ["ab13", "ab12"]
    assert [t.id for t in store.list_tasks(id_prefix="ab1", limit=1)] == ["ab13"]
    assert [t.id for t in store.list_tasks(id_prefix="ac0")] == ["ac00"]
    assert store.list_tasks(id_prefix="z") == []
