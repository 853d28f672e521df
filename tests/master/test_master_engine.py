"""The engine and service on an in-memory transport with a hand-driven clock: delivery,
expiry, rejects, kills, stray and malformed messages, datacenters, restart."""

from __future__ import annotations

import pytest

from mschedule_agent import protocol
from mschedule_master.models import InvalidRequest
from mschedule_master.states import TargetState, TaskState

P = protocol


def _ack(rig, task_id, agent):
    rig.from_agent(agent, P.Ack(id=task_id, agent_id=agent, at=rig.clock.now))


def _result(rig, task_id, agent, state="SUCCEED", code=0, dc=None):
    rig.from_agent(agent, P.Result(id=task_id, agent_id=agent, state=state, code=code), dc=dc)


def test_an_unacknowledged_task_is_republished_until_acked(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    assert len(rig.sent("task")) == 1
    rig.tick(2.1)
    again = rig.sent("task")
    assert len(again) == 1 and again[0][1].id == task_id
    _ack(rig, task_id, "a1")
    rig.tick(2.1)
    rig.tick(2.1)
    assert rig.sent("task") == []


def test_a_task_never_accepted_becomes_unreachable_after_its_expiry_and_grace(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    for _ in range(5):
        rig.tick(2.0)  # t = 10: expires_at reached, grace (1 s) not yet over
    assert rig.store.get_target(task_id, "a1").state is TargetState.DISPATCHED
    rig.tick(1.1)
    assert rig.store.get_target(task_id, "a1").state is TargetState.UNREACHABLE
    assert rig.store.get_task(task_id).state is TaskState.FAILED


@pytest.mark.parametrize(
    "code, state",
    [("expired", TargetState.UNREACHABLE), ("killed", TargetState.KILLED), ("bad_script", TargetState.REJECTED),
     ("too_large", TargetState.REJECTED), ("bad_message", TargetState.REJECTED)],
)  # fmt: skip
def test_reject_codes_map_to_target_states(rig, code, state):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.from_agent("a1", P.Reject(id=task_id, agent_id="a1", code=code, reason="because"))
    target = rig.store.get_target(task_id, "a1")
    assert target.state is state
    assert code in target.reason and "because" in target.reason


def test_a_result_for_an_unknown_task_or_from_a_non_target_is_recorded_not_applied_and_acked(rig):
    rig.register("a1")
    rig.register("a2")
    task_id = rig.submit(["a1"]).task_id
    rig.sent()
    _result(rig, "no-such-task", "a1")
    _result(rig, task_id, "a2")
    assert [e["kind"] for e in rig.store.events(kind=None) if e["kind"].startswith("result_")] == [
        "result_unknown_task",
        "result_not_target",
    ]
    acks = [(t, m.id) for t, m in rig.sent("result_ack")]
    assert acks == [("test/agents/a1/control", "no-such-task"), ("test/agents/a2/control", task_id)]
    assert rig.store.get_target(task_id, "a1").state is TargetState.DISPATCHED
    assert rig.store.get_target(task_id, "a2") is None


def test_an_agent_offline_mid_run_makes_its_target_lost_after_the_grace(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.from_agent("a1", P.Started(id=task_id, agent_id="a1", started_at=rig.clock.now))
    rig.feed(rig.incoming("test/agents/a1/status", P.Offline(id="a1")))
    assert not rig.registry.is_online("a1")
    rig.tick(4.0)
    assert rig.store.get_target(task_id, "a1").state is TargetState.RUNNING
    rig.tick(1.5)
    assert rig.store.get_target(task_id, "a1").state is TargetState.LOST


def test_stale_heartbeats_take_an_agent_offline_after_three_intervals(rig):
    rig.register("a1")  # heartbeat interval 1 s
    rig.tick(2.9)
    assert rig.registry.is_online("a1")
    rig.tick(1.0)  # swept once a second
    assert not rig.registry.is_online("a1")
    hb = P.Heartbeat(id="a1", hostname="a1", ip=[], ts=rig.clock.now, interval=1.0)
    rig.feed(rig.incoming("test/agents/a1/heartbeat", hb))
    assert rig.registry.is_online("a1")


def test_kill_sends_kill_until_the_target_reports_then_the_task_is_killed(rig):
    for a in ("a1", "a2"):
        rig.register(a)
    task_id = rig.submit(["a1", "a2"], parallel=1).task_id
    rig.from_agent("a1", P.Started(id=task_id, agent_id="a1", started_at=rig.clock.now))
    rig.sent()
    rig.service.kill(task_id)
    assert [(t, m.TYPE) for t, m in rig.sent("kill")] == [("test/agents/a1/control", "kill")]
    assert rig.store.get_target(task_id, "a2").state is TargetState.CANCELLED
    rig.tick(2.1)
    assert len(rig.sent("kill")) == 1
    rig.from_agent("a1", P.Result(id=task_id, agent_id="a1", state="KILLED", code=143, signal=15))
    task = rig.store.get_task(task_id)
    assert task.state is TaskState.KILLED and task.counts == {"KILLED": 1, "CANCELLED": 1}
    rig.tick(2.1)
    assert rig.sent("kill") == []


def test_agents_of_a_datacenter_are_reached_through_its_bridged_topics(rig):
    rig.register("a1", dc="bj")
    task_id = rig.submit(["a1"]).task_id
    assert [t for t, _ in rig.sent("task")] == ["test/dc/bj/agents/a1/tasks"]
    _result(rig, task_id, "a1", dc="bj")
    assert ("test/dc/bj/agents/a1/control", "result_ack") in [(t, m.TYPE) for t, m in rig.sent()]
    assert rig.store.get_target(task_id, "a1").state is TargetState.SUCCEED


def test_a_bridge_going_down_takes_its_agents_offline_and_up_lets_heartbeats_return_them(rig):
    rig.register("a1", dc="bj")
    rig.register("a2")
    rig.feed(rig.incoming("$SYS/broker/connection/mschedule-bridge-bj/state", b"0"))
    assert not rig.registry.is_online("a1") and rig.registry.is_online("a2")
    rig.clock.advance(0.5)
    rig.feed(rig.incoming("$SYS/broker/connection/mschedule-bridge-bj/state", b"1"))
    assert not rig.registry.is_online("a1")  # the bridge's word alone is no evidence
    rig.clock.advance(0.5)
    hb = P.Heartbeat(id="a1", hostname="a1", ip=[], ts=rig.clock.now, interval=1.0)
    rig.feed(rig.incoming("test/dc/bj/agents/a1/heartbeat", hb))
    assert rig.registry.is_online("a1")


def test_selectors_that_match_nothing_are_refused_naming_them(rig):
    rig.register("a1")
    with pytest.raises(InvalidRequest) as e:
        rig.submit(["a1", "nope"])
    assert e.value.field == "targets" and "nope" in str(e.value)
    assert rig.store.list_tasks() == []


def test_a_repeated_request_id_answers_with_the_first_task(rig):
    rig.register("a1")
    first = rig.submit(["a1"], request_id="r1")
    again = rig.submit(["a1"], request_id="r1")
    assert first.task_id == again.task_id and len(rig.store.list_tasks()) == 1


def _submit_incoming(rig, payload: bytes, **kw):
    return rig.incoming("test/submit", payload, **kw)


@pytest.mark.parametrize(
    "payload, field",
    [
        (b'{"type":"submit","payload":{"request_id":"r1","targets":["all"],"script_text":"x","parallel":0}}', "parallel"),
        (b'{"type":"submit","payload":{"request_id":"r1","targets":["all"],"script_text":"x","fail_rate":1.5}}', "fail_rate"),
        (b'{"type":"submit","payload":{"request_id":"r1","targets":["all"],"script_text":"x","timeout":-1}}', "timeout"),
        (b'{"type":"submit","payload":{"request_id":"r1","targets":["all"],"script_text":""}}', "script"),
        (b'{"type":"submit","payload":{"request_id":"r1","targets":[],"script_text":"x"}}', "targets"),
        (b'{"type":"submit","payload":{"request_id":"r1","targets":["ghost"],"script_text":"x"}}', "targets"),
        (b'{"type":"submit","payload":{"request_id":"r1","script_text":"x"}}', "targets"),
    ],
)
def test_bad_submissions_are_answered_with_the_error_and_field(rig, payload, field):
    rig.register("a1")
    rig.feed(_submit_incoming(rig, payload))
    ((topic, reply),) = rig.sent("submit_reply")
    assert topic == "test/submit/reply/r1"
    assert (reply.ok, reply.field, reply.request_id) == (False, field, "r1")
    assert reply.error


def test_a_submission_with_a_response_topic_is_answered_there_with_its_correlation_data(rig):
    rig.register("a1")
    payload = b'{"type":"submit","payload":{"targets":["a1"],"script_text":"true"}}'
    rig.feed(_submit_incoming(rig, payload, response_topic="test/submit/reply/me", correlation_data=b"c1"))
    (p,) = [p for p in rig.transport.take() if p.topic == "test/submit/reply/me"]
    reply = P.decode(p.payload)
    assert p.correlation_data == b"c1" and reply.ok and reply.targets == ["a1"]
    assert rig.store.get_task(reply.task_id).state is TaskState.RUNNING


@pytest.mark.parametrize(
    "topic, payload",
    [
        ("test/agents/a9/status", b"not json"),
        ("test/agents/a9/status", b'{"type":"register","payload":{"id":"OTHER","hostname":"h","ip":[]}}'),
        ("test/agents/a9/heartbeat", b'{"type":"heartbeat","payload":{"id":"a9"}}'),
        ("test/agents/a9/status", b""),
        ("test/results/a9", b'{"type":"result","payload":{"id":"t","agent_id":"a9","state":"BOGUS","code":0}}'),
        ("test/results/a9", b"\xff\xfe"),
        ("test/submit", b"[]"),
        ("test/agents/a9/tasks", b"{}"),
        ("elsewhere/x", b"{}"),
        ("$SYS/broker/connection/mschedule-bridge-x/state", b"maybe"),
    ],
)
def test_malformed_input_is_logged_and_acked_never_fatal(rig, topic, payload):
    rig.acked.clear()
    rig.feed(rig.incoming(topic, payload))
    assert rig.acked == [topic]
    assert rig.registry.get("a9") is None
    rig.register("a1")  # still working
    assert rig.registry.is_online("a1")


def test_an_undecodable_result_with_a_readable_id_is_acked_so_the_agent_stops_resending(rig):
    bad = b'{"type":"result","payload":{"id":"t1","agent_id":"a9","state":"BOGUS","code":0}}'
    rig.feed(rig.incoming("test/results/a9", bad))
    assert [(t, m.id) for t, m in rig.sent("result_ack")] == [("test/agents/a9/control", "t1")]
    assert rig.store.events(kind="bad_message")[0]["agent_id"] == "a9"


def test_a_failing_message_is_skipped_without_losing_the_rest_of_its_batch(rig, monkeypatch):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    real = rig.engine.on_agent_message

    def flaky(info, incoming):
        if info.agent_id == "boom":
            rig.store.add_event(rig.clock.now, "half-done", None, "boom", {})
            raise RuntimeError("bug")
        return real(info, incoming)

    monkeypatch.setattr(rig.engine, "on_agent_message", flaky)
    rig.acked.clear()
    ok = rig.incoming("test/results/a1", P.Result(id=task_id, agent_id="a1", state="SUCCEED", code=0))
    rig.feed(rig.incoming("test/results/boom", b"{}"), ok)
    assert rig.acked == ["test/results/boom", "test/results/a1"]
    assert rig.store.get_target(task_id, "a1").state is TargetState.SUCCEED
    assert rig.store.events(kind="half-done") == []


def test_a_report_failing_amid_a_run_of_reports_spoils_none_of_the_others(rig, monkeypatch):
    """A run of agent reports shares one savepoint; when one raises, the run is undone and
    replayed one report at a time: each other result is stored, answered and PUBACKed once."""
    agents = [f"a{i}" for i in range(5)]
    for a in agents:
        rig.register(a)
    task_id = rig.submit(agents, parallel=5).task_id
    real = rig.engine.on_agent_message
    calls: list[str] = []

    def flaky(info, incoming):
        calls.append(info.agent_id)
        if info.agent_id == "a2":
            rig.store.add_event(rig.clock.now, "half-done", task_id, "a2", {})
            raise RuntimeError("bug")
        return real(info, incoming)

    monkeypatch.setattr(rig.engine, "on_agent_message", flaky)
    rig.sent()
    rig.acked.clear()
    results = [rig.incoming(rig.topics.results(a), P.Result(id=task_id, agent_id=a, state="SUCCEED", code=0)) for a in agents]
    rig.feed(*results)
    assert calls == ["a0", "a1", "a2", *agents]  # the run up to the failure, then each report again
    assert rig.acked == [rig.topics.results(a) for a in agents]
    assert sorted(m.agent_id for _, m in rig.sent("result_ack")) == ["a0", "a1", "a3", "a4"]  # once each
    stored = {a: rig.store.get_target(task_id, a) for a in agents}
    assert {a: t.state for a, t in stored.items()} == {a: TargetState.DISPATCHED if a == "a2" else TargetState.SUCCEED for a in agents}
    assert rig.store.events(kind="half-done") == []
    memory = {a: t.state for a, t in rig.engine._active[task_id].rollout.targets.items()}
    assert memory == {a: t.state for a, t in stored.items()}

    monkeypatch.setattr(rig.engine, "on_agent_message", real)  # the agent re-sends: the task ends
    rig.from_agent("a2", P.Result(id=task_id, agent_id="a2", state="SUCCEED", code=0))
    task = rig.store.get_task(task_id)
    assert task.state is TaskState.SUCCEED and task.counts == {"SUCCEED": 5}


def test_a_restarted_master_reloads_its_fleet_and_unfinished_tasks_and_carries_on(tmp_path, rig_factory):
    db = tmp_path / "m.db"
    first = rig_factory(db)
    for a in ("a1", "a2", "a3"):
        first.register(a)
    first.service.flush_agents()
    task_id = first.submit(["a1", "a2", "a3"], parallel=2).task_id
    _ack(first, task_id, "a1")
    _result(first, task_id, "a1")
    # a2 and a3 (dispatched when a1 finished) were never acked when the master died
    first.store.close()

    second = rig_factory(db)
    second.clock.now = first.clock.now + 1
    second.registry.load(second.store.load_agents(), second.clock.now)
    assert second.registry.is_online("a3")
    assert second.engine.restore() == 1
    sent = second.sent("task")
    assert sorted((t, m.id) for t, m in sent) == [("test/agents/a2/tasks", task_id), ("test/agents/a3/tasks", task_id)]
    _result(second, task_id, "a2", code=0)
    _result(second, task_id, "a3", state="FAILED", code=7)
    task = second.store.get_task(task_id)
    assert task.state is TaskState.FAILED and task.counts == {"SUCCEED": 2, "FAILED": 1}
    ((_, summary),) = second.sent("summary")
    assert summary.targets == {  # a1's code was stored before the restart: the summary still has it
        "a1": {"state": "SUCCEED", "code": 0},
        "a2": {"state": "SUCCEED", "code": 0},
        "a3": {"state": "FAILED", "code": 7},
    }
    second.store.close()


def test_a_restart_publishes_recent_summaries_again(tmp_path, rig_factory):
    db = tmp_path / "m.db"
    first = rig_factory(db)
    first.register("a1")
    task_id = first.submit(["a1"]).task_id
    _result(first, task_id, "a1")
    first.store.close()
    second = rig_factory(db)
    second.clock.now = first.clock.now + 10
    assert second.engine.restore() == 0
    ((topic, summary),) = second.sent("summary")
    assert topic == f"test/tasks/{task_id}/summary" and summary.state == "SUCCEED"
    assert summary.targets == {"a1": {"state": "SUCCEED", "code": 0}}
    second.store.close()


def test_an_offline_agent_gets_no_redeliveries_until_it_registers_again(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.feed(rig.incoming("test/agents/a1/status", P.Offline(id="a1")))
    rig.sent()
    rig.tick(2.1)
    rig.tick(2.1)
    assert rig.sent("task") == []  # its broker session already queues the first copy
    rig.register("a1")
    assert [(t, m.id) for t, m in rig.sent("task")] == [("test/agents/a1/tasks", task_id)]


def test_a_reconnecting_agent_is_sent_its_unacknowledged_task_and_owed_kill_at_once(rig):
    for a in ("a1", "a2"):
        rig.register(a)
    t1 = rig.submit(["a1"]).task_id
    t2 = rig.submit(["a2"]).task_id
    rig.from_agent("a2", P.Started(id=t2, agent_id="a2", started_at=rig.clock.now))
    rig.service.kill(t2)
    rig.sent()
    rig.register("a1")
    rig.register("a2")
    assert [(t, m.TYPE, m.id) for t, m in rig.sent()] == [
        ("test/agents/a1/tasks", "task", t1),
        ("test/agents/a2/control", "kill", t2),
    ]


def test_verdicts_wait_while_the_inbox_is_behind(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.clock.advance(20)  # far past expiry (10 s) and grace
    rig.service.housekeeping(verdicts=False)
    assert rig.store.get_target(task_id, "a1").state is TargetState.DISPATCHED
    assert rig.registry.is_online("a1")  # no staleness verdict either
    _ack(rig, task_id, "a1")  # the ack that was waiting in the backlog
    rig.service.housekeeping()
    assert rig.store.get_target(task_id, "a1").state is TargetState.DISPATCHED


def test_only_what_others_are_told_about_waits_for_an_fsync(rig):
    rig.register("a1")
    before = rig.store.syncs
    task_id = rig.submit(["a1"]).task_id  # the submitter gets an answer: synced
    assert rig.store.syncs == before + 1
    _ack(rig, task_id, "a1")
    rig.from_agent("a1", P.Started(id=task_id, agent_id="a1", started_at=rig.clock.now))
    rig.register("a1")
    assert rig.store.syncs == before + 1  # losing these in a power cut costs a re-delivery
    _result(rig, task_id, "a1")  # about to be result_acked: synced
    assert rig.store.syncs == before + 2
    _result(rig, task_id, "a1")  # a duplicate stores nothing
    assert rig.store.syncs == before + 2


def test_group_selectors_come_from_the_config(tmp_path, rig_factory):
    from mschedule_master.rollout import Timing

    rig = rig_factory(tmp_path / "g.db", timing=Timing(), groups={"web": ["role=web"], "all-web": ["@web", "db1"]})
    rig.register("w1", role="web")
    rig.register("w2", role="web")
    rig.register("db1", role="db")
    assert sorted(rig.submit(["@all-web"]).targets) == ["db1", "w1", "w2"]
    with pytest.raises(InvalidRequest, match="nope"):
        rig.submit(["@nope"])
    rig.store.close()


def test_an_ack_after_the_unreachable_verdict_is_recorded(rig):
    rig.register("a1")
    rig.register("a2")
    task_id = rig.submit(["a1", "a2"], parallel=2).task_id
    _ack(rig, task_id, "a2")  # keeps the task running
    rig.clock.advance(11.5)
    rig.service.housekeeping()
    assert rig.store.get_target(task_id, "a1").state is TargetState.UNREACHABLE
    _ack(rig, task_id, "a1")
    (event,) = rig.store.events(kind="ack_after_verdict")
    assert event["agent_id"] == "a1" and event["data"]["state"] == "UNREACHABLE"


class _Pending:
    """A publication the broker has not acknowledged yet (still in our client's queue)."""

    def __init__(self) -> None:
        self.done = False

    def wait(self, timeout: float) -> bool:
        return self.done


def _stored_snapshot(rig, task_id, agent_id):
    stored = rig.store.load_stored(task_id)
    return next(t for t in stored.snapshots if t.agent_id == agent_id)


def test_the_delivery_clock_waits_while_the_first_copy_has_not_reached_the_broker(rig, monkeypatch):
    pubs: list[_Pending] = []
    publish = rig.transport.publish

    def slow_publish(topic, payload, **kw):
        publish(topic, payload, **kw)
        pubs.append(_Pending())
        return pubs[-1]

    monkeypatch.setattr(rig.transport, "publish", slow_publish)
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    (_, first), = rig.sent("task")
    for _ in range(30):  # three delivery timeouts, the copy still in our own client: no clock, no copy, no verdict
        rig.tick(1.0)
        rig.register("a1")  # online all along (a registration asks for a copy: one is on its way already)
    assert rig.sent("task") == []
    target = _stored_snapshot(rig, task_id, "a1")
    assert (target.state, target.expires_at) == (TargetState.DISPATCHED, None)
    for p in pubs:
        p.done = True  # the broker's PUBACK: the clock starts at the next pump
    rig.tick(0.1)
    handed = rig.clock.now
    assert _stored_snapshot(rig, task_id, "a1").expires_at == pytest.approx(handed + 10)
    assert first.expires_at == pytest.approx(handed - 30.1 + 20), "its accept-by: sent + 2 x delivery_timeout"
    rig.tick(2.0)  # back-off from the PUBACK: 2 s
    assert [m.id for _, m in rig.sent("task")] == [task_id]
    rig.register("a1")  # a registration re-sends at once, unless a copy is still on its way
    assert rig.sent("task") == []
    for p in pubs:
        p.done = True
    rig.register("a1")
    assert [m.id for _, m in rig.sent("task")] == [task_id]
    rig.tick(9.0)  # expires_at + ack_grace after the PUBACK
    assert rig.store.get_target(task_id, "a1").state is TargetState.UNREACHABLE


def _snapshot_writes(rig, monkeypatch) -> list[list[str]]:
    """The agent ids of each save_snapshots call from now on (the real one still runs)."""
    writes: list[list[str]] = []
    save = rig.store.save_snapshots

    def counting_save(t, snaps):
        writes.append(sorted(s.agent_id for s in snaps))
        save(t, snaps)

    monkeypatch.setattr(rig.store, "save_snapshots", counting_save)
    return writes


def test_a_batch_writes_each_changed_target_once_and_a_reader_sees_it_after_the_commit(rig, monkeypatch):
    for a in ("a1", "a2"):
        rig.register(a)
    task_id = rig.submit(["a1", "a2"], parallel=2).task_id
    writes = _snapshot_writes(rig, monkeypatch)
    now = rig.clock.now
    msgs = [
        P.Ack(id=task_id, agent_id="a1", at=now),
        P.Started(id=task_id, agent_id="a1", started_at=now),
        P.Ack(id=task_id, agent_id="a2", at=now),
    ]
    rig.feed(*[rig.incoming(rig.topics.results(m.agent_id), m) for m in msgs])
    assert writes == [["a1", "a2"]], "three messages, two targets, one write"
    assert rig.store.get_target(task_id, "a1").state is TargetState.RUNNING
    assert rig.store.get_target(task_id, "a2").acked


def test_a_submission_inserts_its_targets_as_the_started_rollout_holds_them_and_writes_them_once(rig, monkeypatch):
    for a in ("a1", "a2", "a3"):
        rig.register(a)
    saves = _snapshot_writes(rig, monkeypatch)
    task_id = rig.submit(["a1", "a2", "a3"], parallel=2).task_id
    # one write: the delivery clocks started at the broker's PUBACK (MemoryTransport's is at
    # once); the submission's commit does not update the rows it inserted
    assert saves == [["a1", "a2"]]
    memory = rig.engine._active[task_id].rollout.targets
    stored = {s.agent_id: s for s in rig.store.load_task(task_id).snapshots}
    assert stored == memory
    assert [stored[a].state for a in ("a1", "a2", "a3")] == [TargetState.DISPATCHED, TargetState.DISPATCHED, TargetState.WAITING]
    assert stored["a1"].expires_at is not None, "the clock started at the broker's PUBACK, and was saved"
    assert [m.id for _, m in rig.sent("task")] == [task_id, task_id]


# ------------------------------------------------------------------ provisional verdicts, the listening clock


def test_an_ack_after_the_unreachable_verdict_revives_the_target_in_the_open_task(rig):
    rig.register("a1")
    rig.register("a2")
    task_id = rig.submit(["a1", "a2"], parallel=2).task_id
    _ack(rig, task_id, "a2")
    rig.tick(11.5)
    assert rig.store.get_target(task_id, "a1").state is TargetState.UNREACHABLE
    _ack(rig, task_id, "a1")
    target = rig.store.get_target(task_id, "a1")
    assert (target.state, target.acked, target.revised_from) == (TargetState.DISPATCHED, True, "UNREACHABLE")
    _result(rig, task_id, "a1")
    _result(rig, task_id, "a2")
    task = rig.store.get_task(task_id)
    assert (task.state, task.counts, task.revised_at) == (TaskState.SUCCEED, {"SUCCEED": 2}, None)


def test_a_late_result_after_the_task_ended_revises_it_and_its_retained_summary(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.tick(11.5)
    ((_, first),) = rig.sent("summary")
    assert first.state == "FAILED" and first.targets == {"a1": {"state": "UNREACHABLE", "code": None}}
    rig.tick(5)
    _ack(rig, task_id, "a1")  # reopens the task while the script runs
    assert rig.store.get_task(task_id).state is TaskState.RUNNING
    rig.from_agent("a1", P.Started(id=task_id, agent_id="a1", started_at=rig.clock.now))
    _result(rig, task_id, "a1")
    task = rig.store.get_task(task_id)
    assert (task.state, task.counts, task.revised_at) == (TaskState.SUCCEED, {"SUCCEED": 1}, rig.clock.now)
    (target,) = task.targets
    assert (target.state, target.code, target.revised_from, target.revised_at) == (
        TargetState.SUCCEED, 0, "UNREACHABLE", rig.clock.now)  # fmt: skip
    ((topic, summary),) = rig.sent("summary")
    assert topic == f"test/tasks/{task_id}/summary" and summary.state == "SUCCEED"
    assert summary.targets == {"a1": {"state": "SUCCEED", "code": 0}}
    kinds = [(e["agent_id"], e["data"]["old"], e["data"]["new"]) for e in rig.store.events(task_id, kind="revised")]
    assert kinds == [("a1", "UNREACHABLE", "DISPATCHED"), (None, "FAILED", "RUNNING"), (None, "RUNNING", "SUCCEED")]


def test_an_expired_reject_confirms_the_unreachable_verdict(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.tick(11.5)
    rig.from_agent("a1", P.Reject(id=task_id, agent_id="a1", code="expired", reason="too late"))
    assert rig.store.get_task(task_id).revised_at is None
    assert [e["kind"] for e in rig.store.events(task_id) if e["kind"].startswith("late_")] == ["late_reject"]


def test_a_result_the_agent_could_not_start_carries_its_error_as_the_reason(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.from_agent("a1", P.Result(id=task_id, agent_id="a1", state="FAILED", code=None, error="cwd /x: No such file"))
    target = rig.store.get_target(task_id, "a1")
    assert (target.state, target.code, target.error) == (TargetState.FAILED, None, "cwd /x: No such file")
    assert target.reason == "agent: cwd /x: No such file"


def test_a_restart_defers_every_deadline_by_the_time_the_master_was_not_listening(tmp_path, rig_factory):
    db = tmp_path / "m.db"
    first = rig_factory(db)
    first.register("a1")
    first.service.flush_agents()
    task_id = first.submit(["a1"]).task_id  # expires at +10, UNREACHABLE at +11
    first.engine.heard(first.clock.now + 1)  # the daemon's last listening mark
    first.store.close()

    second = rig_factory(db)
    second.clock.now = first.clock.now + 70  # down for 69 s after it last listened
    second.registry.load(second.store.load_agents(), second.clock.now)
    assert second.engine.restore() == 1
    assert second.store.get_target(task_id, "a1").state is TargetState.DISPATCHED
    second.tick(9.5)  # 10.5 s of listening time since the submit
    assert second.store.get_target(task_id, "a1").state is TargetState.DISPATCHED
    (topic, copy), *_ = second.sent("task")
    assert copy.expires_at == first.clock.now + 10 + 69, "redelivered copies carry the moved expiry"
    second.tick(1.0)
    assert second.store.get_target(task_id, "a1").state is TargetState.UNREACHABLE
    second.store.close()


def test_a_bridge_down_stops_the_lost_clock_of_its_agents_until_lost_max(tmp_path, rig_factory):
    from mschedule_master.rollout import Timing

    rig = rig_factory(tmp_path / "m.db")
    rig.engine.timing = Timing(delivery_timeout=10, redeliver_interval=2, ack_grace=1, lost_grace=5, lost_max=30)
    rig.register("a1", dc="bj")
    task_id = rig.submit(["a1"]).task_id
    rig.from_agent("a1", P.Started(id=task_id, agent_id="a1", started_at=rig.clock.now), dc="bj")
    rig.feed(rig.incoming("$SYS/broker/connection/mschedule-bridge-bj/state", b"0"))
    rig.tick(20)
    assert rig.store.get_target(task_id, "a1").state is TargetState.RUNNING, "lost_grace 5 does not run unheard"
    rig.feed(rig.incoming("$SYS/broker/connection/mschedule-bridge-bj/state", b"1"))
    rig.tick(4.9)
    assert rig.store.get_target(task_id, "a1").state is TargetState.RUNNING
    rig.tick(0.2)  # 5 s offline and heard: LOST
    target = rig.store.get_target(task_id, "a1")
    assert (target.state, target.reason) == (TargetState.LOST, "agent offline for more than lost_grace 5s")
    rig.store.close()


def test_a_datacenter_that_never_comes_back_still_ends_the_task_after_lost_max(tmp_path, rig_factory):
    from mschedule_master.rollout import Timing

    rig = rig_factory(tmp_path / "m.db")
    rig.engine.timing = Timing(delivery_timeout=10, redeliver_interval=2, ack_grace=1, lost_grace=5, lost_max=30)
    rig.register("a1", dc="bj")
    task_id = rig.submit(["a1"]).task_id
    rig.from_agent("a1", P.Started(id=task_id, agent_id="a1", started_at=rig.clock.now), dc="bj")
    rig.feed(rig.incoming("$SYS/broker/connection/mschedule-bridge-bj/state", b"0"))
    rig.tick(29.9)
    assert rig.store.get_target(task_id, "a1").state is TargetState.RUNNING
    rig.tick(0.2)
    target = rig.store.get_target(task_id, "a1")
    assert (target.state, target.reason) == (TargetState.LOST, "datacenter unreachable for more than lost_max 30s")
    assert rig.store.get_task(task_id).state is TaskState.FAILED
    rig.store.close()


def test_late_reports_of_one_finished_task_load_its_targets_once(rig, monkeypatch):
    for a in ("a1", "a2", "a3"):
        rig.register(a)
    task_id = rig.submit(["a1", "a2", "a3"], parallel=3).task_id
    rig.tick(11.5)  # all three UNREACHABLE: the task ends FAILED
    loads = []
    real = rig.store.load_task
    monkeypatch.setattr(rig.store, "load_task", lambda tid: loads.append(tid) or real(tid))
    for a in ("a1", "a2", "a3"):
        _result(rig, task_id, a)
    assert loads == [task_id]
    task = rig.store.get_task(task_id)
    assert (task.state, task.counts) == (TaskState.SUCCEED, {"SUCCEED": 3})


def test_a_copy_for_an_offline_agent_waits_in_the_master_and_leaves_when_it_comes_online(rig):
    rig.register("a1")
    rig.tick(30)  # its heartbeats stopped: offline
    assert not rig.registry.is_online("a1")
    task_id = rig.submit(["a1"]).task_id  # named: it may be offline
    assert rig.sent("task") == [], "nothing for the broker to hold for an absent agent"
    rig.tick(5)
    rig.register("a1")  # back: its copy leaves now, with a fresh accept-by
    ((_, copy),) = rig.sent("task")
    assert copy.id == task_id and copy.expires_at == pytest.approx(rig.clock.now + 20), "2 x delivery_timeout"
    assert _stored_snapshot(rig, task_id, "a1").expires_at == pytest.approx(rig.clock.now + 10)


def test_an_agent_that_stays_offline_while_its_copy_waits_is_unreachable_after_delivery_timeout(rig):
    rig.register("a1")
    rig.tick(30)
    task_id = rig.submit(["a1"]).task_id
    rig.tick(10.9)  # delivery_timeout 10 + ack_grace 1 after it was seen offline
    assert rig.store.get_target(task_id, "a1").state is TargetState.DISPATCHED
    rig.tick(0.2)
    target = rig.store.get_target(task_id, "a1")
    assert (target.state, target.reason) == (
        TargetState.UNREACHABLE, "agent offline for more than delivery_timeout 10s; never sent"
    )
    assert rig.sent("task") == []


def test_a_submission_leaves_the_garbage_collector_as_it_found_it(rig):
    import gc

    from mschedule_master.models import InvalidRequest

    rig.register("a1")
    seen = []
    real = rig.engine._submit

    def spy(spec):
        seen.append(gc.isenabled())
        return real(spec)

    rig.engine._submit = spy
    assert gc.isenabled()
    rig.submit(["a1"])
    with pytest.raises(InvalidRequest):
        rig.submit(["nobody"])
    assert gc.isenabled() and seen == [False, False], "off during the submission, on again after, even when it fails"
    gc.disable()
    try:
        rig.submit(["a1"])
        assert not gc.isenabled(), "a collector someone else turned off stays off"
    finally:
        gc.enable()
