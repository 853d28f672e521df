"""Leadership epochs on the agent (mschedule_agent/fencing.py): a task or kill from a
master older than the newest leader seen is refused with a ``stale_epoch`` reject."""

from __future__ import annotations

from mschedule_agent.fencing import EpochFence
from mschedule_agent.protocol import Reject, Started


def test_a_task_from_an_older_epoch_is_refused_and_never_run(core):
    core.send_task("t-new", epoch=3)
    core.send_task("t-old", epoch=2)
    msgs = core.sent()
    rejects = [m for m in msgs if isinstance(m, Reject)]
    assert [(r.id, r.code) for r in rejects] == [("t-old", "stale_epoch")]
    assert "epoch 2 is older than epoch 3" in rejects[0].reason
    assert [r.spec.task_id for r in core.executor.runs] == ["t-new"]
    assert core.ledger.get("t-old") is None  # refused before the ledger: a current leader may still send it
    assert len(core.acks) == 2  # both PUBACKed: the broker must not re-deliver the stale one


def test_a_kill_from_an_older_epoch_is_refused_and_the_task_runs_on(core):
    core.send_task("t1", epoch=5)
    core.send_control("kill", "t1", epoch=4)
    assert core.executor.runs[0].killed is None
    assert [(type(m).__name__, getattr(m, "code", None)) for m in core.sent()][-1] == ("Reject", "stale_epoch")
    core.send_control("kill", "t1", epoch=5)
    assert core.executor.runs[0].killed is not None


def test_messages_without_an_epoch_are_always_taken(core):
    core.send_task("t1", epoch=7)
    core.send_task("t2")  # a single master's: no epoch field at all
    assert [(type(m).__name__, m.id) for m in core.sent() if not isinstance(m, Started)] == [("Ack", "t1"), ("Ack", "t2")]


def test_the_highest_epoch_survives_a_restart(tmp_path):
    path = tmp_path / "leader-epoch"
    fence = EpochFence(path)
    assert fence.admit(4) is None and fence.admit(9) is None
    again = EpochFence(path)
    assert again.highest == 9
    assert again.admit(8) is not None and again.admit(9) is None and again.admit(None) is None
    (tmp_path / "junk").write_text("not a number")
    assert EpochFence(tmp_path / "junk").highest == 0  # unreadable: starts afresh, logged
