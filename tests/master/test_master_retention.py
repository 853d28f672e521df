"""Retention on the real store and engine (in-memory transport, hand-driven clock): exactly
the expired records go, in small batches interleaved with a running rollout; nothing
unfinished is touched."""

from __future__ import annotations

import time

import pytest

from mschedule_agent import protocol as P
from mschedule_master import retention
from mschedule_master.retention import DAY, Policy, Retention
from mschedule_master.states import TaskState

BACKENDS = ("sqlite", "postgresql")  # tests taking `rig` or `db` run on both stores (tests/conftest.py)


def _finish(rig, task_id, agents, output=b"out\n"):
    for a in agents:
        rig.from_agent(a, P.Ack(id=task_id, agent_id=a, at=rig.clock.now))
        rig.from_agent(a, P.Result(id=task_id, agent_id=a, state="SUCCEED", code=0, output=output, stderr=b"err\n"))


def _rows(rig, sql, *args):
    with rig.store.db() as c:
        return c.execute(sql, args).fetchall()


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(retention, "BATCH_ROWS", 3)
    monkeypatch.setattr(retention, "BATCH_TASKS", 2)


def test_retention_deletes_exactly_the_expired_records_while_a_rollout_runs(rig, small_batches):
    for a in ("a", "b", "c", "d"):
        rig.register(a)
    t0 = rig.clock.now
    old = [rig.submit(["a", "b", "c", "d"], parallel="100%").task_id for _ in range(3)]
    for task_id in old:
        _finish(rig, task_id, ["a", "b", "c", "d"])
    stuck = rig.submit(["a"], parallel=1).task_id  # never finishes: old, but unfinished
    rig.store.add_event(t0, "agent_online", None, "a", {"reason": "old"})
    rig.clock.advance(20 * DAY)
    mid = rig.submit(["b", "c"]).task_id
    _finish(rig, mid, ["b", "c"])
    rig.store.add_event(rig.clock.now, "agent_online", None, "b", {"reason": "newer"})
    rig.clock.advance(11 * DAY)
    running = rig.submit(["b", "c", "d"], parallel=1).task_id
    kept_events = {t: len(rig.store.events(task_id=t)) for t in (stuck, mid)}
    rig.transport.take()

    cleared: list[str] = []
    ret = Retention(
        store=rig.store, policy=Policy(days=30, output_days=10), active_ids=rig.engine.active_ids,
        clear_summary=cleared.append,
    )  # fmt: skip
    steps, order = 0, ["b", "c", "d"]
    while ret.step(rig.clock.now):
        steps += 1
        assert steps < 100
        if order and steps % 2:  # the rollout goes on between batches
            _finish(rig, running, [order.pop(0)])
    for a in order:
        _finish(rig, running, [a])

    assert steps > 3  # small batches: 3 tasks x (4 targets + events) cannot go in one
    assert sorted(cleared) == sorted(old)
    assert {r[0] for r in _rows(rig, "select id from tasks")} == {stuck, mid, running}
    assert _rows(rig, f"select count(*) from targets where task_id in ({','.join('?' * 3)})", *old) == [(0,)]
    assert _rows(rig, f"select count(*) from events where task_id in ({','.join('?' * 3)})", *old) == [(0,)]
    reasons = [e["data"]["reason"] for e in rig.store.events(kind="agent_online")]
    assert "newer" in reasons and "old" not in reasons  # events of no task: by age
    assert {t: len(rig.store.events(task_id=t)) for t in (stuck, mid)} == kept_events
    # the 20-day-old task keeps its record and states, its outputs are gone (older than 10 days)
    mid_task = rig.store.get_task(mid)
    assert mid_task.state is TaskState.SUCCEED and mid_task.counts == {"SUCCEED": 2}
    assert [(t.stdout, t.stderr, t.stdout_bytes, t.code) for t in mid_task.targets] == [(b"", b"", 4, 0)] * 2
    # the unfinished old task is whole; the running one finished normally, outputs intact
    assert rig.store.get_task(stuck).state is TaskState.RUNNING and len(rig.store.get_task(stuck).targets) == 1
    done = rig.store.get_task(running)
    assert done.state is TaskState.SUCCEED and {t.stdout for t in done.targets} == {b"out\n"}


def test_nothing_is_deleted_with_retention_off_and_outputs_go_with_their_task_by_default():
    assert Policy(days=0).task_cutoff(1e9) is None and Policy(days=0).output_cutoff(1e9) is None
    assert Policy(days=30).output_cutoff(1e9) is None
    assert Policy(days=30, output_days=7).output_cutoff(1e9) == 1e9 - 7 * DAY
    assert Policy(days=0, output_days=7).output_cutoff(1e9) == 1e9 - 7 * DAY


def test_freed_pages_are_handed_back(rig, backend):
    if backend != "sqlite":
        pytest.skip("SQLite's incremental vacuum; PostgreSQL's autovacuum reclaims space itself")
    rig.register("a")
    task_id = rig.submit(["a"]).task_id
    _finish(rig, task_id, ["a"], output=b"x" * 2_000_000)

    def size() -> int:
        return _rows(rig, "pragma page_count")[0][0]

    before = size()
    rig.clock.advance(31 * DAY)
    ret = Retention(store=rig.store, policy=Policy(days=30), clear_summary=lambda _t: None)
    while ret.step(rig.clock.now):
        pass
    assert _rows(rig, "pragma auto_vacuum") == [(2,)]  # incremental: set before the first table
    assert size() < before - 400  # 2 MB of 4 KiB pages back to the file system


def test_a_real_master_expires_finished_tasks_and_clears_their_retained_summaries(broker, tmp_path):
    import urllib.error
    import urllib.request
    import uuid

    from harness.fleet import Fleet
    from harness.mqtt import Collector
    from harness.procs import wait_until

    def status(fleet, task_id):
        try:
            with urllib.request.urlopen(f"{fleet.master.http_url}/api/v1/tasks/{task_id}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            with e:
                return e.code

    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(tmp_path, broker.url, prefix, agents=1, master_flags={"retention_days": 3 / DAY}) as fleet:
        done = fleet.submit(["all"], "echo hi")
        assert fleet.wait_task(done)["state"] == "SUCCEED"
        slow = fleet.submit(["all"], "sleep 6")
        summary = f"{prefix}/tasks/{done}/summary"
        fleet.client.wait_for(lambda m: m.topic == summary and m.payload == b"", 20)
        wait_until(lambda: status(fleet, done) == 404, timeout=10, what="the expired task to go")
        assert status(fleet, slow) == 200  # running: never a candidate, however short the retention
        with Collector(broker.url, [summary]) as late:  # a new subscriber gets no retained summary
            time.sleep(0.5)
            assert [m for m in late.messages if m.payload] == []
        assert fleet.wait_task(slow, timeout=30)["state"] == "SUCCEED"
