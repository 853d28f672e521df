"""After a handler fails mid-message, the rollout in memory is rebuilt from the database:
memory and disk agree, and the rollout carries on."""

from __future__ import annotations

from mschedule_agent import protocol as P
from mschedule_master.states import TargetState, TaskState


def _memory_and_disk(rig, task_id):
    active = rig.engine._active.get(task_id)
    memory = {a: t.state for a, t in active.rollout.targets.items()} if active else None
    disk = {t.agent_id: t.state for t in rig.store.get_task(task_id).targets}
    return memory, disk


def test_a_handler_failing_after_the_rollout_changed_leaves_memory_as_the_database_says(rig, monkeypatch):
    for a in ("a1", "a2", "a3"):
        rig.register(a)
    task_id = rig.submit(["a1", "a2", "a3"], parallel=2).task_id
    real = rig.engine._target_changed

    def boom(active, action, now, code):
        if action.agent_id == "a1" and action.new.final:
            raise RuntimeError("bug after the rollout moved a1")
        return real(active, action, now, code)

    monkeypatch.setattr(rig.engine, "_target_changed", boom)
    t = rig.topics.results
    rig.feed(
        rig.incoming(t("a2"), P.Ack(id=task_id, agent_id="a2", at=rig.clock.now)),  # an earlier message: kept
        rig.incoming(t("a1"), P.Ack(id=task_id, agent_id="a1", at=rig.clock.now)),
        rig.incoming(t("a1"), P.Result(id=task_id, agent_id="a1", state="FAILED", code=1)),  # fails half-way
    )
    memory, disk = _memory_and_disk(rig, task_id)
    assert memory == disk
    assert disk == {"a1": TargetState.DISPATCHED, "a2": TargetState.DISPATCHED, "a3": TargetState.WAITING}
    assert rig.store.get_target(task_id, "a1").code is None  # the result's write was rolled back too
    # the earlier ack of a2 survives in memory and on disk; a1's, in the failed call's target, is
    # forgotten with it (the agent answers the re-sent copy with a duplicate ack)
    acked = {s.agent_id: s.acked for s in rig.store.load_stored(task_id).snapshots}
    assert acked == {a: t.acked for a, t in rig.engine._active[task_id].rollout.targets.items()}
    assert acked == {"a1": False, "a2": True, "a3": False}

    monkeypatch.setattr(rig.engine, "_target_changed", real)  # the bug is fixed; the agent re-sends
    for a, state in (("a1", "FAILED"), ("a2", "SUCCEED")):
        rig.from_agent(a, P.Result(id=task_id, agent_id=a, state=state, code=0 if state == "SUCCEED" else 1))
    rig.from_agent("a3", P.Ack(id=task_id, agent_id="a3", at=rig.clock.now))
    memory, disk = _memory_and_disk(rig, task_id)
    assert memory == disk and disk["a3"] is TargetState.DISPATCHED
    rig.from_agent("a3", P.Result(id=task_id, agent_id="a3", state="SUCCEED", code=0))
    task = rig.store.get_task(task_id)
    assert task.state is TaskState.FAILED and task.counts == {"FAILED": 1, "SUCCEED": 2}
    assert task_id not in rig.engine._active


def test_a_rollout_that_cannot_be_rebuilt_is_left_to_the_next_start_and_the_batch_goes_on(rig, monkeypatch):
    for a in ("a1", "a2"):
        rig.register(a)
    broken = rig.submit(["a1"]).task_id
    fine = rig.submit(["a2"]).task_id

    def boom(*_a, **_kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(rig.engine, "_target_changed", boom)
    monkeypatch.setattr(rig.store, "load_stored", boom)
    t = rig.topics.results
    rig.feed(
        rig.incoming(t("a1"), P.Result(id=broken, agent_id="a1", state="SUCCEED", code=0)),
        rig.incoming(t("a2"), P.Ack(id=fine, agent_id="a2", at=rig.clock.now)),
    )
    assert broken not in rig.engine._active and fine in rig.engine._active
    assert rig.store.get_task(broken).state is TaskState.RUNNING  # as stored: a restart resumes it
    assert broken in [s.task.id for s in rig.store.load_unfinished()] and rig.store.get_target(fine, "a2").acked


def test_a_submission_failing_half_way_leaves_no_task_and_sends_no_copy(rig, monkeypatch):
    for a in ("a1", "a2"):
        rig.register(a)
    rig.sent()
    real = rig.engine._target_changed

    def boom(active, action, now, code):
        if action.agent_id == "a2":  # after a1's copy was queued
            raise RuntimeError("bug half-way through the dispatches")
        return real(active, action, now, code)

    monkeypatch.setattr(rig.engine, "_target_changed", boom)
    with rig.engine.batch():
        rig.engine.guarded("a submission", rig.engine.submit, P.Submit(targets=["a1", "a2"], script_text="x", parallel=2))
        rig.engine.guarded("another", lambda: None)
    assert rig.engine.active_ids() == [] and rig.store.list_tasks() == []
    assert rig.sent("task") == [], "the failed call's copies are dropped with its writes"
    monkeypatch.setattr(rig.engine, "_target_changed", real)
    task_id = rig.submit(["a1", "a2"], parallel=2).task_id
    assert sorted(t for t, _ in rig.sent("task")) == [rig.topics.tasks("a1"), rig.topics.tasks("a2")]
    assert rig.engine.active_ids() == [task_id]
