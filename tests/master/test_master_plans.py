"""Plans in the master core (real store, in-memory transport, hand-driven clock): a canary
paused and approved, restarts mid-pause and mid-step, abort, the safety limit, jobs' plans."""

from __future__ import annotations

import pytest

from mschedule_agent import protocol
from mschedule_master import jobs
from mschedule_master.models import InvalidRequest, NotFound, WrongState
from mschedule_master.states import TargetState, TaskState

P = protocol


def _done(rig, task_id: str, agent: str, state: str = "SUCCEED", code: int = 0) -> None:
    rig.from_agent(agent, P.Result(id=task_id, agent_id=agent, state=state, code=code))


def _dispatched(rig) -> list[str]:
    return sorted(topic.split("/")[2] for topic, m in rig.sent("task"))


def _fleet(rig, n: int) -> list[str]:
    agents = [f"a{i}" for i in range(1, n + 1)]
    for a in agents:
        rig.register(a)
    return agents


def test_a_canary_pauses_then_an_approval_with_who_runs_the_rest(rig):
    agents = _fleet(rig, 3)
    task_id = rig.submit(agents, plan="1,pause,rest", parallel=2).task_id
    assert _dispatched(rig) == ["a1"]
    _done(rig, task_id, "a1")
    task = rig.store.get_task(task_id)
    assert task.state is TaskState.PAUSED and task.plan_step == 2 and task.paused_at == rig.clock.now
    assert task.plan == [{"batch": 1}, {"pause": True}, {"batch": "rest"}]
    assert _dispatched(rig) == [], "nothing more while paused"
    rig.tick(1000)
    assert rig.store.get_task(task_id).state is TaskState.PAUSED and _dispatched(rig) == []
    _fleet(rig, 3)  # their heartbeats: online (a copy for an agent gone offline waits for it)
    approved = rig.service.approve(task_id, "alice")
    assert approved.state is TaskState.RUNNING and approved.plan_step == 3 and approved.paused_at is None
    (event,) = rig.store.events(task_id, kind="approved")
    assert event["data"] == {"by": "alice", "step": 2} and event["ts"] == rig.clock.now
    assert _dispatched(rig) == ["a2", "a3"]
    _done(rig, task_id, "a2")
    _done(rig, task_id, "a3")
    assert rig.store.get_task(task_id).state is TaskState.SUCCEED
    changes = [(e["data"]["old"], e["data"]["new"]) for e in rig.store.events(task_id, kind="task")]
    assert changes == [("WAITING", "RUNNING"), ("RUNNING", "PAUSED"), ("PAUSED", "RUNNING"), ("RUNNING", "SUCCEED")]


def test_approve_and_abort_say_why_they_cannot(rig):
    agents = _fleet(rig, 2)
    task_id = rig.submit(agents, plan="1,pause,rest").task_id
    with pytest.raises(WrongState, match="is not paused"):
        rig.service.approve(task_id, "alice")
    with pytest.raises(NotFound):
        rig.service.approve("nosuch", "alice")
    with pytest.raises(NotFound):
        rig.service.abort("nosuch", "alice")
    task = rig.service.abort(task_id, "bob")
    assert rig.store.events(task_id, kind="abort")[0]["data"] == {"by": "bob"}
    _done(rig, task_id, "a1", "KILLED", -15)
    task = rig.store.get_task(task_id)
    assert task.state is TaskState.FAILED and task.reason == "aborted by bob"
    assert task.counts == {"KILLED": 1, "CANCELLED": 1}
    with pytest.raises(WrongState, match="cannot be aborted"):
        rig.service.abort(task_id, "bob")


def test_a_failing_first_batch_stops_the_plan(rig):
    agents = _fleet(rig, 4)
    task_id = rig.submit(agents, plan=[{"batch": 1, "fail_count": 0}, {"pause": True}]).task_id
    _done(rig, task_id, "a1", "FAILED", 3)
    task = rig.store.get_task(task_id)
    assert task.state is TaskState.FAILED and task.reason == "step 1: fail_count 0 exceeded: 1 failure"
    assert task.counts == {"FAILED": 1, "CANCELLED": 3}


def test_a_restart_during_a_pause_keeps_the_pause(tmp_path, rig_factory):
    db = tmp_path / "m.db"
    first = rig_factory(db)
    agents = _fleet(first, 3)
    first.service.flush_agents()
    task_id = first.submit(agents, plan="1,pause,rest", parallel=5).task_id
    _done(first, task_id, "a1")
    paused_at = first.store.get_task(task_id).paused_at
    first.store.close()

    second = rig_factory(db)
    second.clock.now = first.clock.now + 50
    second.registry.load(second.store.load_agents(), second.clock.now)
    assert second.engine.restore() == 1
    task = second.store.get_task(task_id)
    assert task.state is TaskState.PAUSED and task.paused_at == paused_at
    assert _dispatched(second) == []
    second.service.approve(task_id, "carol")
    assert _dispatched(second) == ["a2", "a3"]
    second.store.close()


def test_a_timed_pause_ends_on_time_across_a_restart(tmp_path, rig_factory):
    db = tmp_path / "m.db"
    first = rig_factory(db)
    agents = _fleet(first, 2)
    first.service.flush_agents()
    task_id = first.submit(agents, plan="1,pause 30,rest").task_id
    _done(first, task_id, "a1")
    first.store.close()

    second = rig_factory(db)
    second.clock.now = first.clock.now + 10
    second.registry.load(second.store.load_agents(), second.clock.now)
    second.engine.restore()
    second.tick(19)
    assert second.store.get_task(task_id).state is TaskState.PAUSED
    _fleet(second, 2)  # their heartbeats: online (a copy for an agent gone offline waits for it)
    second.tick(1.5)
    task = second.store.get_task(task_id)
    assert task.state is TaskState.RUNNING and _dispatched(second) == ["a2"]
    assert task.reason == "pause of 30s over"
    second.store.close()


def test_a_restart_mid_step_carries_on_with_that_step(tmp_path, rig_factory):
    db = tmp_path / "m.db"
    first = rig_factory(db)
    agents = _fleet(first, 4)
    first.service.flush_agents()
    task_id = first.submit(agents, plan="1,2,rest", parallel=1).task_id
    _done(first, task_id, "a1")  # step 2 (a2, a3) starts with a2
    assert _dispatched(first) == ["a1", "a2"]
    first.store.close()

    second = rig_factory(db)
    second.clock.now = first.clock.now + 1
    second.registry.load(second.store.load_agents(), second.clock.now)
    second.engine.restore()
    assert _dispatched(second) == ["a2"], "the unacked dispatch again, nothing more"
    _done(second, task_id, "a2")
    assert _dispatched(second) == ["a3"]
    assert second.store.get_task(task_id).plan_step == 2
    _done(second, task_id, "a3")
    assert _dispatched(second) == ["a4"] and second.store.get_task(task_id).plan_step == 3
    second.store.close()


def test_a_big_task_needs_a_plan_or_a_parallel(rig):
    agents = _fleet(rig, 3)
    rig.engine.unplanned_target_limit = 2
    with pytest.raises(InvalidRequest) as e:
        rig.submit(agents)
    assert e.value.field == "plan"
    assert "3 targets, more than unplanned_target_limit 2" in str(e.value) and "--canary 1" in str(e.value)
    assert "--parallel 1" in str(e.value)
    assert rig.submit(agents, parallel=1).task_id
    assert rig.submit(agents, plan="1,rest").task_id
    assert rig.submit(agents[:2]).task_id, "at the limit: no plan needed"
    rig.engine.unplanned_target_limit = 0
    assert rig.submit(agents).task_id, "0: no limit"


def test_a_bad_plan_is_refused_naming_the_field(rig):
    agents = _fleet(rig, 2)
    with pytest.raises(InvalidRequest) as e:
        rig.submit(agents, plan="1,lots")
    assert e.value.field == "plan" and "bad step 'lots'" in str(e.value)


def test_a_job_carries_a_default_plan_and_a_run_may_replace_it(rig):
    agents = _fleet(rig, 3)
    rig.service.jobs.save("deploy", b"echo deploy", defaults={"targets": agents, "plan": "1,pause,rest"}, author="me")
    task, _ = rig.service.jobs.run("deploy", None, {})
    assert task.plan == [{"batch": 1}, {"pause": True}, {"batch": "rest"}]
    task, _ = rig.service.jobs.run("deploy", None, {"plan": "2,rest"})
    assert rig.store.get_task(task.id).plan == [{"batch": 2}, {"batch": "rest"}]
    with pytest.raises(InvalidRequest):
        rig.service.jobs.save("bad", b"true", defaults={"plan": "x"}, author="me")


def test_a_job_plan_with_step_limits_writes_and_reads_back_as_toml(tmp_path):
    steps = [{"batch": 1, "fail_count": 0, "ignore": ["TIMEOUT"]}, {"pause": "10m"}]
    content = jobs.make_content(b"true", defaults={"plan": steps})
    jobs.write_job(tmp_path, "j", content)
    ((job),) = jobs.read_dir(tmp_path)
    assert job.content.defaults["plan"] == steps


def test_rerun_keeps_the_plan(rig):
    agents = _fleet(rig, 2)
    task_id = rig.submit(agents, plan="1,rest").task_id
    _done(rig, task_id, "a1")
    _done(rig, task_id, "a2")
    again, _ = rig.service.jobs.rerun(task_id)
    assert again.plan == [{"batch": 1}, {"batch": "rest"}]
    assert rig.store.get_target(again.id, "a2").state is TargetState.WAITING
