"""A standby's engine stores submissions and kills for the leader, which adopts them
(mschedule_master/ha.py, Engine.adopt): unit tests on both stores, no network."""

from __future__ import annotations

from mschedule_master.ha import KILLS_CHANNEL, TASKS_CHANNEL, on_notification, sweep, take_over_requests

BACKENDS = ("sqlite", "postgresql")


def standby_of(rig_factory, db, notes):
    standby = rig_factory(db)
    standby.engine.driving = False
    standby.engine.notify = lambda what, task_id: notes.append((what, task_id))
    return standby


def test_a_standby_stores_a_submission_the_leader_adopts_and_dispatches_once(rig, rig_factory, db):
    notes: list[tuple[str, str]] = []
    rig.register("a1")
    rig.register("a2")
    rig.service.flush_agents()
    standby = standby_of(rig_factory, db, notes)
    standby.registry.load(standby.store.load_agents(), standby.clock())
    try:
        reply = standby.submit(["all"], parallel=2)
        assert notes == [("task", reply.task_id)]
        assert standby.sent("task") == []  # a standby publishes nothing
        assert rig.store.get_task(reply.task_id).counts == {"WAITING": 2}
        on_notification(rig.engine, TASKS_CHANNEL, reply.task_id)
        on_notification(rig.engine, TASKS_CHANNEL, reply.task_id)  # told twice: adopted once
        assert sorted(t.split("/")[-2] for t, _ in rig.sent("task")) == ["a1", "a2"]
        assert sweep(rig.engine, rig.store) == 0  # nothing left undriven
    finally:
        standby.store.close()


def test_the_leaders_sweep_adopts_a_task_whose_notification_was_missed(rig, rig_factory, db):
    rig.register("a1")
    rig.service.flush_agents()
    standby = standby_of(rig_factory, db, [])
    standby.registry.load(standby.store.load_agents(), standby.clock())
    try:
        task_id = standby.submit(["a1"]).task_id
        assert sweep(rig.engine, rig.store) == 1
        assert [t for t, _ in rig.sent("task")] == [rig.topics.tasks("a1")]
        assert rig.engine.active_ids() == [task_id]
    finally:
        standby.store.close()


def test_a_kill_asked_of_a_standby_reaches_the_leader_now_or_at_its_takeover(rig, rig_factory, db):
    notes: list[tuple[str, str]] = []
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.sent()
    standby = standby_of(rig_factory, db, notes)
    try:
        standby.engine.kill(task_id)
        assert notes == [("kill", task_id)]
        assert take_over_requests(rig.engine, rig.store) == 1  # a new leader, after its restore
        assert [m.id for _, m in rig.sent("kill")] == [task_id]
        on_notification(rig.engine, KILLS_CHANNEL, task_id)  # the notification too: no harm
        assert take_over_requests(rig.engine, rig.store) == 0
    finally:
        standby.store.close()


def test_the_leader_stamps_its_epoch_and_ignores_refusals_of_an_older_leaders_messages(rig):
    from mschedule_agent import protocol

    rig.engine.epoch = 4
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    ((_, task),) = rig.sent("task")
    assert task.epoch == 4
    stale = protocol.Reject(id=task_id, agent_id="a1", code="stale_epoch", reason="epoch 3 is older than epoch 4")
    rig.from_agent("a1", stale)
    assert rig.store.get_task(task_id).counts == {"DISPATCHED": 1}  # the target is untouched
    assert [e["kind"] for e in rig.store.events(task_id)][-1] == "stale_epoch"
    rig.engine.kill(task_id)
    assert [m.epoch for _, m in rig.sent("kill")] == [4]
