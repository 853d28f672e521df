"""The Agent core against MemoryTransport, a fake clock and a fake executor."""

from __future__ import annotations

import base64

import orjson
import pytest

from mschedule_agent.ledger import LedgerState
from mschedule_agent.protocol import MAX_SCRIPT_BYTES, Ack, Heartbeat, Register, Reject, Result, Started, decode
from mschedule_agent.transport import Incoming

AGENT_ID = "a" * 32  # the id tests/agent/conftest.py gives the core


def task_bytes(task_id: str, script: bytes = b"true", **fields) -> bytes:
    payload = {"id": task_id, "script": base64.b64encode(script).decode(), **fields}
    return orjson.dumps({"type": "task", "payload": payload})


def kinds(msgs):
    return [type(m).__name__ for m in msgs]


def test_task_is_committed_before_puback_then_acked_run_and_reported(core):
    seen_at_puback = []
    payload = task_bytes("t1", b"echo hi")

    def puback():
        seen_at_puback.append(core.ledger.get("t1"))

    core.agent.handle(Incoming(core.topics.tasks(AGENT_ID), payload, 1, False, _ack=puback))
    assert seen_at_puback[0] is not None and seen_at_puback[0].task == payload
    assert len(core.executor.runs) == 1 and core.executor.runs[0].spec.script == b"echo hi"
    assert core.ledger.get("t1").state is LedgerState.RUNNING
    core.executor.runs[0].finish(code=0, out=b"hi\n")
    msgs = core.sent()
    assert kinds(msgs) == ["Ack", "Started", "Result"]
    result = msgs[2]
    assert (result.state, result.code, result.output, result.agent_id) == ("SUCCEED", 0, b"hi\n", AGENT_ID)
    assert core.ledger.get("t1").state is LedgerState.DONE


def test_same_task_delivered_twice_runs_once_and_the_duplicate_gets_the_state(core):
    core.send_task("t1")
    core.send_task("t1")
    assert len(core.executor.runs) == 1
    msgs = core.sent()
    dup = msgs[-1]
    assert isinstance(dup, Ack) and dup.duplicate and dup.state == "RUNNING"
    core.executor.runs[0].finish(code=1)
    core.sent()
    core.send_task("t1")
    again = core.sent()
    assert kinds(again) == ["Ack", "Result"] and again[0].state == "DONE" and again[1].code == 1
    assert len(core.executor.runs) == 1
    assert core.acks == [core.topics.tasks(AGENT_ID)] * 3


def test_task_received_after_expiry_is_rejected_recorded_and_never_run(core):
    core.send_task("t1", expires_at=core.clock() - 1)
    core.send_task("t1", expires_at=core.clock() + 100)  # the same id again, now "in time"
    msgs = core.sent()
    assert [(m.code, type(m).__name__) for m in msgs] == [("expired", "Reject")] * 2
    assert core.executor.runs == []
    assert core.ledger.get("t1").state is LedgerState.EXPIRED


def test_result_is_resent_every_interval_until_result_ack(core):
    core.agent.on_connect(False)
    core.agent.tick(core.clock.advance(0.1))  # the post-connect flush of an empty outbox
    core.send_task("t1")
    core.executor.runs[0].finish()
    core.published()
    resent = 0
    for _ in range(12):  # 12 s of ticks, resend every 5 s
        core.agent.tick(core.clock.advance(1.0))
        resent += sum(isinstance(m, Result) for m in core.sent())
    assert resent == 2
    core.send_control("result_ack", "t1")
    for _ in range(12):
        core.agent.tick(core.clock.advance(1.0))
        assert not any(isinstance(m, Result) for m in core.sent())
    entry = core.ledger.get("t1")
    assert entry.result is None and entry.result_acked and entry.state is LedgerState.DONE


def test_outbox_waits_while_disconnected_and_is_flushed_on_reconnect(core):
    core.send_task("t1")
    core.transport.connected = False
    core.executor.runs[0].finish()
    core.sent()
    for _ in range(20):
        core.agent.tick(core.clock.advance(1.0))
    assert not any(isinstance(m, Result) for m in core.sent())
    core.transport.connected = True
    core.agent.on_connect(True)
    core.agent.tick(core.clock.advance(0.1))
    assert [m.id for m in core.sent() if isinstance(m, Result)] == ["t1"]


def test_kill_running_queued_and_unknown_tasks(core):
    core.send_task("run1")
    core.send_task("queued1")
    assert [r.spec.task_id for r in core.executor.runs] == ["run1"]
    core.sent()
    core.send_control("kill", "queued1")
    core.send_control("kill", "run1", reason="operator")
    core.send_control("kill", "ghost")
    assert core.executor.runs[0].killed == ("KILLED", "killed on request: operator")
    core.executor.runs[0].join()
    results = {m.id: m for m in core.sent() if isinstance(m, Result)}
    assert results["queued1"].state == "KILLED" and results["queued1"].code is None
    assert results["ghost"].state == "KILLED" and results["ghost"].code is None
    assert results["run1"].state == "KILLED"
    assert [r.spec.task_id for r in core.executor.runs] == ["run1"]  # queued1 never ran
    core.send_task("ghost")
    (reject,) = core.sent()
    assert isinstance(reject, Reject) and reject.code == "killed"
    assert core.ledger.get("ghost").state is LedgerState.TOMBSTONE


def test_capacity_limits_concurrent_runs_and_queued_tasks_start_in_order(core_factory):
    h = core_factory(max_tasks=2)
    for i in range(4):
        h.send_task(f"t{i}")
    assert [r.spec.task_id for r in h.executor.runs] == ["t0", "t1"]
    h.executor.runs[1].finish()
    assert [r.spec.task_id for r in h.executor.runs] == ["t0", "t1", "t2"]
    h.executor.runs[0].finish()
    h.executor.runs[2].finish()
    assert [r.spec.task_id for r in h.executor.runs] == ["t0", "t1", "t2", "t3"]


def test_crash_reports_running_task_interrupted_and_runs_accepted_ones(core):
    core.send_task("was_running")
    core.send_task("was_queued")
    core.sent()
    agent = core.restart()
    assert core.ledger.get("was_running").state is LedgerState.DONE
    agent.tick(core.clock.advance(0.3))
    assert [r.spec.task_id for r in core.executor.runs] == ["was_queued"]
    core.agent.on_connect(True)
    core.agent.tick(core.clock.advance(0.3))
    results = [m for m in core.sent() if isinstance(m, Result)]
    assert {(r.id, r.state, r.code) for r in results} == {("was_running", "INTERRUPTED", None)}
    assert core.executor.orphans_killed == [(42, "boot:42", 5.0)]  # the pid recorded at start
    assert "leftover processes were killed" in results[0].error


def _task_doc(**payload):
    return orjson.dumps({"type": "task", "payload": payload})


B64 = base64.b64encode(b"true").decode()

BAD_INPUTS = [
    # (case, payload, expected reject code, the reject's id: None when no id can be read)
    ("malformed json", b'{"type": "task", "payload": {"id": "x1"', "bad_message", None),
    ("not an object", b"[1, 2]", "bad_message", None),
    ("empty", b"", "bad_message", None),
    ("not utf-8", b"\xff\xfe", "bad_message", None),
    ("deeply nested", b'{"type": "task", "payload": {"id": "x9", "env": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "bad_message", None),
    ("nested in env", _task_doc(id="x10", script=B64, env={"a": [[[[]]]]}), "bad_message", "x10"),
    ("bad base64", _task_doc(id="x2", script="%%%not-base64"), "bad_script", "x2"),
    ("unknown type", orjson.dumps({"type": "frobnicate", "payload": {"id": "x3"}}), "bad_message", "x3"),
    ("missing script", _task_doc(id="x4"), "bad_script", "x4"),
    ("missing id", _task_doc(script=B64), "bad_message", None),
    ("wrong field type", _task_doc(id="x5", script=B64, timeout="soon"), "bad_message", "x5"),
    ("unknown field", _task_doc(id="x6", script=B64, colour="red"), "bad_message", "x6"),
    ("empty script", _task_doc(id="x7", script=""), "bad_script", "x7"),
    ("oversize script", _task_doc(id="x8", script=base64.b64encode(b"#" * (MAX_SCRIPT_BYTES + 1)).decode()), "too_large", "x8"),
    ("bad id", _task_doc(id="a/b", script=B64), "bad_message", None),
    ("nul in cwd", _task_doc(id="x11", script=B64, cwd="/tmp\x00/x"), "bad_message", "x11"),
    ("nul in env", _task_doc(id="x12", script=B64, env={"A": "1\x002"}), "bad_message", "x12"),
]


@pytest.mark.parametrize("case,payload,code,task_id", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_task_input_is_always_rejected_and_the_agent_carries_on(core, case, payload, code, task_id):
    core.deliver(core.topics.tasks(AGENT_ID), payload)
    msgs = core.sent()
    assert core.acks == [core.topics.tasks(AGENT_ID)]
    assert len(msgs) == 1 and isinstance(msgs[0], Reject) and msgs[0].code == code and msgs[0].reason
    assert msgs[0].id == task_id
    assert core.ledger.count() == 0 and core.executor.runs == []
    core.send_task("good")
    assert [r.spec.task_id for r in core.executor.runs] == ["good"]


def test_bad_message_reusing_a_known_task_id_does_not_reject_that_task(core):
    core.send_task("t1")
    core.sent()
    core.deliver(core.topics.tasks(AGENT_ID), _task_doc(id="t1", script="%%%"))
    assert core.sent() == []
    assert core.ledger.get("t1").state is LedgerState.RUNNING


def test_bad_control_messages_are_acked_and_ignored(core):
    for payload in (b"garbage", orjson.dumps({"type": "kill", "payload": {}}), task_bytes("t9")):
        core.deliver(core.topics.control(AGENT_ID), payload)
    assert len(core.acks) == 3 and core.sent() == [] and core.ledger.count() == 0


def test_registration_on_connect_and_heartbeat_on_its_interval(core_factory):
    h = core_factory(heartbeat=2.0, labels={"role": "web"}, max_tasks=3)
    h.agent.on_connect(False)
    (reg,) = h.published()
    msg = decode(reg.payload)
    assert reg.retain and reg.qos == 1 and reg.topic == h.topics.status(AGENT_ID)
    assert isinstance(msg, Register) and msg.labels == {"role": "web"} and msg.capacity == 3 and msg.ip == ["10.0.0.1"]
    h.send_task("t1")
    h.published()
    beats = []
    for _ in range(10):  # 5 s
        h.agent.tick(h.clock.advance(0.5))
        beats += [p for p in h.published() if p.topic == h.topics.heartbeat(AGENT_ID)]
    assert 2 <= len(beats) <= 3
    hb = decode(beats[-1].payload)
    assert isinstance(hb, Heartbeat) and hb.running == ["t1"] and beats[-1].retain and beats[-1].qos == 0


def test_host_info_is_read_once_then_on_its_slow_timer(core_factory):
    h = core_factory(hostinfo_refresh=60.0)
    calls = []
    h.agent.presence.hostinfo = lambda: calls.append(1) or h.agent.host
    for _ in range(100):  # 50 s
        h.agent.tick(h.clock.advance(0.5))
    assert calls == []
    h.agent.tick(h.clock.advance(11))
    assert calls == [1]


def test_shutdown_kills_running_reports_it_and_leaves_new_tasks_unacked(core):
    core.send_task("t1")
    core.send_task("t2")
    core.sent()
    core.acks.clear()
    core.agent.shutdown(timeout=1)
    assert core.executor.runs[0].killed == ("KILLED", "agent shutdown")
    results = [m for m in core.sent() if isinstance(m, Result)]
    assert [(r.id, r.state, r.error) for r in results] == [("t1", "KILLED", "agent shutdown")]
    core.send_task("t3")
    assert core.acks == [] and core.ledger.get("t3") is None
    assert core.ledger.get("t2").state is LedgerState.ACCEPTED and len(core.executor.runs) == 1


def test_started_carries_the_pid(core):
    core.send_task("t1")
    started = [m for m in core.sent() if isinstance(m, Started)]
    assert started and started[0].pid == 42


class _Pending:
    def __init__(self) -> None:
        self.done = False

    def wait(self, timeout: float) -> bool:
        return self.done


def test_a_result_copy_awaiting_its_puback_is_not_piled_up(core):
    from mschedule_agent.agent import STUCK_RESENDS

    pubs = []
    real = core.transport.publish

    def publish(topic, payload, **kw):
        real(topic, payload, **kw)
        pubs.append(_Pending())
        return pubs[-1]

    core.transport.publish = publish
    core.agent.on_connect(False)
    core.agent.tick(core.clock.advance(0.1))
    core.send_task("t1")
    core.executor.runs[0].finish()
    core.sent()
    for _ in range(30):  # 30 s with the copy never PUBACKed: nothing more is sent
        core.agent.tick(core.clock.advance(1.0))
    assert not any(isinstance(m, Result) for m in core.sent())
    for _ in range(STUCK_RESENDS * 5 - 30):  # ...until it counts as stuck
        core.agent.tick(core.clock.advance(1.0))
    assert sum(isinstance(m, Result) for m in core.sent()) == 1
    pubs[-1].done = True  # PUBACKed: the normal interval applies again
    for _ in range(6):
        core.agent.tick(core.clock.advance(1.0))
    assert sum(isinstance(m, Result) for m in core.sent()) == 1


def test_ids_are_kept_for_dedup_then_forgotten_after_keep_ids(core_factory):
    h = core_factory(keep_ids=7200.0)
    h.send_task("t1")
    h.executor.runs[0].finish()
    h.send_control("result_ack", "t1")
    h.agent.tick(h.clock.advance(3600.0))
    assert h.ledger.get("t1") is not None  # still deduplicated after an hour
    h.agent.tick(h.clock.advance(2 * 3600.0))
    h.agent.tick(h.clock.advance(3600.0))
    assert h.ledger.get("t1") is None


def test_running_is_durable_before_exec_in_one_commit_or_on_the_run_thread(core):
    """A task that starts at once is recorded RUNNING by the commit before its PUBACK (one
    fsync); a task that had to wait is marked RUNNING by the run's ``before_exec`` (run
    thread, not the MQTT thread). Either way the ledger says RUNNING before any exec."""
    seen = []
    real_start = core.executor.start

    def start(spec, *, on_started, on_done):
        seen.append((spec.task_id, core.ledger.get(spec.task_id).state, spec.before_exec is not None))
        return real_start(spec, on_started=on_started, on_done=on_done)

    core.executor.start = start
    pubacked = []
    core.agent.handle(Incoming(core.topics.tasks(AGENT_ID), task_bytes("t1"), 1, False,
                               _ack=lambda: pubacked.append(core.ledger.get("t1").state)))  # fmt: skip
    core.send_task("t2")  # the one slot is busy: waits
    assert pubacked == [LedgerState.RUNNING] and core.ledger.get("t2").state is LedgerState.ACCEPTED
    core.executor.runs[0].finish()
    assert seen == [("t1", LedgerState.RUNNING, False), ("t2", LedgerState.ACCEPTED, True)]
    assert core.ledger.get("t2").state is LedgerState.RUNNING  # the fake executor called before_exec


def test_crash_between_the_commit_and_the_exec_reports_interrupted_never_runs(core):
    core.executor.start = lambda spec, **kw: (_ for _ in ()).throw(RuntimeError("no thread"))
    core.send_task("t1")
    assert kinds(core.sent()) == ["Ack"]
    agent = core.restart()
    agent.on_connect(False)
    agent.tick(core.clock.advance(0.1))
    results = [m for m in core.sent() if isinstance(m, Result)]
    assert [(r.id, r.state, r.code) for r in results] == [("t1", "INTERRUPTED", None)]
    assert core.executor.runs == []


def test_outbox_lives_in_memory_mirrors_the_ledger_and_survives_a_restart(core):
    core.agent.on_connect(False)
    core.send_task("done1")
    core.send_task("queued1")
    core.send_control("kill", "ghost")  # a tombstone's KILLED result
    core.executor.runs[0].finish()  # done1 done, queued1 starts
    assert core.agent.outbox_ids() == ["ghost", "done1"]  # in the order the results were made
    assert sorted(core.ledger.outbox_ids()) == ["done1", "ghost"]
    calls = []
    real = core.ledger.outbox_ids
    core.ledger.outbox_ids = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    for _ in range(20):  # idle ticks never query the ledger for the outbox
        core.agent.tick(core.clock.advance(1.0))
    assert calls == []
    core.send_control("result_ack", "ghost")
    assert core.agent.outbox_ids() == ["done1"]
    agent = core.restart()  # queued1 was RUNNING: reported INTERRUPTED, into the outbox
    assert agent.outbox_ids() == ["done1", "queued1"] == sorted(core.ledger.outbox_ids())
    core.sent()
    agent.on_connect(True)
    agent.tick(core.clock.advance(0.1))
    assert sorted(m.id for m in core.sent() if isinstance(m, Result)) == ["done1", "queued1"]


def test_prune_drops_given_up_results_from_the_in_memory_outbox(core_factory):
    core = core_factory(keep_ids=100.0)
    core.send_task("t1")
    core.executor.runs[0].finish()
    assert core.agent.outbox_ids() == ["t1"]
    core.agent.tick(core.clock.advance(4000.0))  # past keep_ids and the prune interval
    assert core.agent.outbox_ids() == [] and core.ledger.get("t1") is None
