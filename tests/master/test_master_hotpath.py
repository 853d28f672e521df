"""The master's hot path keeps its promises while doing less per message: one ``progress``
per task per batch that still names every change, and a batch that writes nothing opens no
SQLite transaction (while one that writes commits it, or rolls it back)."""

from __future__ import annotations

import pytest

from mschedule_agent import protocol
from mschedule_agent.protocol import Progress, Summary, Topics
from mschedule_agent.transport import MemoryTransport
from mschedule_master import models
from mschedule_master.store import Store
from mschedule_master.submissions import ProgressPublisher


def _target(task: str, agent: str, state: str, code: int | None = None, ts: float = 1.0) -> models.Event:
    counts = {"RUNNING": 1, state: 1}
    data = {"agent_id": agent, "old": "DISPATCHED", "new": state, "reason": "", "state": state, "code": code,
            "task_state": "RUNNING", "counts": counts, "revised": False}  # fmt: skip
    return models.Event(kind="target", task_id=task, ts=ts, data=data)


def test_one_progress_per_task_per_batch_names_each_target_at_its_latest_state():
    transport, topics = MemoryTransport(), Topics("p")
    ProgressPublisher(transport, topics).publish([
        _target("t1", "a", "RUNNING"), _target("t2", "c", "RUNNING"), _target("t1", "b", "FAILED", 2),
        _target("t1", "a", "SUCCEED", 0, ts=2.0),
    ])  # fmt: skip
    sent = {m.topic: protocol.decode_as(m.payload, Progress) for m in transport.take()}
    assert set(sent) == {topics.task_progress("t1"), topics.task_progress("t2")}
    p1, p2 = sent[topics.task_progress("t1")], sent[topics.task_progress("t2")]
    assert (p1.agent_id, p1.target_state, p1.code, p1.ts) == ("a", "SUCCEED", 0, 2.0)  # the last change
    assert p1.changes == {"a": {"state": "SUCCEED", "code": 0}, "b": {"state": "FAILED", "code": 2}}
    assert (p2.agent_id, p2.target_state, p2.changes) == ("c", "RUNNING", None)


def test_one_target_changing_twice_in_a_batch_is_one_change_at_its_latest_state():
    transport, topics = MemoryTransport(), Topics("p")
    ProgressPublisher(transport, topics).publish([_target("t1", "a", "RUNNING"), _target("t1", "a", "SUCCEED", 0)])
    (sent,) = transport.take()
    p = protocol.decode_as(sent.payload, Progress)
    assert (p.agent_id, p.target_state, p.code, p.changes) == ("a", "SUCCEED", 0, None)


def test_a_single_change_is_sent_as_before_without_changes_and_the_summary_follows_its_progress():
    transport, topics = MemoryTransport(), Topics("p")
    end = models.Event(kind="task", task_id="t1", ts=3.0, data={
        "state": "SUCCEED", "old": "RUNNING", "reason": "", "counts": {"SUCCEED": 1}, "targets": {"a": {"state": "SUCCEED", "code": 0}}})  # fmt: skip
    ProgressPublisher(transport, topics).publish([_target("t1", "a", "SUCCEED", 0), end])
    first, second = transport.take()
    assert b'"changes"' not in first.payload  # an older reader still decodes it
    assert protocol.decode_as(first.payload, Progress).target_state == "SUCCEED"
    assert second.retain and protocol.decode_as(second.payload, Summary).state == "SUCCEED"


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    yield s
    s.close()


def test_a_lazy_batch_that_only_reads_opens_no_transaction(store):
    commits = []
    store.on_commit = commits.append
    with store.db(lazy=True):
        assert not store.task_exists("nope")
        assert not store._conn.in_transaction
    assert commits == []


def test_a_lazy_batch_begins_at_its_first_write_and_commits_it(store):
    with store.db(lazy=True):
        assert not store._conn.in_transaction
        store.add_event(1.0, "x", None, None, {})
        assert store._conn.in_transaction
        store.add_event(2.0, "y", None, None, {})
    assert not store._conn.in_transaction
    assert [e["kind"] for e in store.events()] == ["x", "y"]


def test_a_lazy_batch_that_fails_after_writing_leaves_nothing(store):
    with pytest.raises(RuntimeError), store.db(lazy=True):
        store.add_event(1.0, "x", None, None, {})
        raise RuntimeError("boom")
    assert store.events() == [] and not store._conn.in_transaction


def test_a_savepoint_in_a_lazy_batch_undoes_only_its_own_writes(store):
    with store.db(lazy=True):
        store.savepoint_begin()
        store.add_event(1.0, "kept", None, None, {})
        store.savepoint_release()
        store.savepoint_begin()
        store.add_event(2.0, "undone", None, None, {})
        store.savepoint_rollback()
    assert [e["kind"] for e in store.events()] == ["kept"]


def test_a_lazy_batch_whose_first_write_is_rolled_back_to_its_savepoint_keeps_the_later_ones(store):
    with store.db(lazy=True):
        store.savepoint_begin()
        store.add_event(1.0, "undone", None, None, {})  # begins the transaction, then the savepoint
        store.savepoint_rollback()
        store.savepoint_begin()
        store.add_event(2.0, "kept", None, None, {})
        store.savepoint_release()
    assert [e["kind"] for e in store.events()] == ["kept"]
