"""The master core end to end on an in-memory transport: submit -> dispatch -> ack ->
started -> result stored -> result_ack, with progress and summary."""

from __future__ import annotations

from mschedule_agent import protocol
from mschedule_master.states import TargetState, TaskState


def test_one_target_runs_from_submit_to_stored_result(rig):
    rig.register("a1")
    reply = rig.submit(["a1"])
    task_id = reply.task_id
    tasks = rig.sent("task")
    assert [t for t, _ in tasks] == ["test/agents/a1/tasks"]
    # its accept-by: twice delivery_timeout (10) after it left; the master's clock: 10 from the PUBACK
    assert tasks[0][1].id == task_id and tasks[0][1].expires_at == rig.clock.now + 20
    assert rig.store.get_task(task_id).state is TaskState.RUNNING

    rig.from_agent("a1", protocol.Ack(id=task_id, agent_id="a1", at=rig.clock.now))
    assert rig.store.get_target(task_id, "a1").acked
    rig.from_agent("a1", protocol.Started(id=task_id, agent_id="a1", started_at=rig.clock.now))
    assert rig.store.get_target(task_id, "a1").state is TargetState.RUNNING
    rig.sent()
    result = protocol.Result(id=task_id, agent_id="a1", state="SUCCEED", code=0, output=b"hi\n", output_bytes=3)
    rig.from_agent("a1", result)

    target = rig.store.get_target(task_id, "a1")
    assert (target.state, target.code, target.stdout) == (TargetState.SUCCEED, 0, b"hi\n")
    task = rig.store.get_task(task_id)
    assert task.state is TaskState.SUCCEED and task.finished_at is not None
    sent = rig.sent()
    kinds = [(topic, m.TYPE) for topic, m in sent]
    assert ("test/agents/a1/control", "result_ack") in kinds
    assert (f"test/tasks/{task_id}/progress", "progress") in kinds
    summary = [m for topic, m in sent if m.TYPE == "summary"]
    assert summary[0].state == "SUCCEED" and summary[0].targets == {"a1": {"state": "SUCCEED", "code": 0}}


def test_a_second_copy_of_a_result_changes_nothing_but_is_acked_again(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    first = protocol.Result(id=task_id, agent_id="a1", state="FAILED", code=3, output=b"x", output_bytes=1)
    rig.from_agent("a1", first)
    rig.sent()
    second = protocol.Result(id=task_id, agent_id="a1", state="SUCCEED", code=0, output=b"y", output_bytes=1)
    rig.from_agent("a1", second)
    target = rig.store.get_target(task_id, "a1")
    assert (target.state, target.code, target.stdout) == (TargetState.FAILED, 3, b"x")
    assert [m.TYPE for _, m in rig.sent()] == ["result_ack"]


def test_publications_and_pubacks_wait_for_the_commit(rig):
    rig.register("a1")
    rig.acked.clear()
    task_id = rig.submit(["a1"]).task_id
    rig.sent()
    seen = []
    # a subscriber runs after the commit: the result must already be readable then
    rig.engine.subscribe(lambda e: seen.append(rig.store.get_target(task_id, "a1").code))
    rig.from_agent("a1", protocol.Result(id=task_id, agent_id="a1", state="SUCCEED", code=0))
    assert rig.acked == ["test/results/a1"]
    assert seen and all(code == 0 for code in seen)
