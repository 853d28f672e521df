"""The audit trail (mschedule_master/audit.py) on a real SQLite store: the chain, and what
verify finds after someone goes around the append-only triggers."""

from __future__ import annotations

import sqlite3

import pytest

from mschedule_master.audit import ACTOR, AuditLog, AuditUnavailable, verify
from mschedule_master.store import Store


@pytest.fixture
def trail(tmp_path):
    store = Store(str(tmp_path / "m.db"))
    clock = iter(range(1000, 2000))
    log = AuditLog(store, clock=lambda: float(next(clock)))
    for i in range(5):
        log.append("submit", task_id=f"t{i}", actor="alice", selector=["role=web"], resolved=3, script_sha256="ab" * 32)
    yield store, log
    store.close()



def tamper(store, *statements: str) -> None:
    with store.db() as c:
        c.execute("drop trigger audit_no_update")
        c.execute("drop trigger audit_no_delete")
        for s in statements:
            c.execute(s)


def check(store):
    with store.db() as c:
        return verify(c)


def test_records_chain_each_to_the_one_before(trail):
    store, log = trail
    records = log.records()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert all(b.prev == a.hash for a, b in zip(records, records[1:], strict=False))
    assert records[0].actor == "alice" and records[0].detail["resolved"] == 3
    v = check(store)
    assert v.ok and v.count == 5 and v.head_hash == records[-1].hash and v.problems == []


def test_the_table_refuses_updates_and_deletes(trail):
    store, _ = trail
    for stmt in ("update audit set actor = 'mallory' where seq = 2", "delete from audit where seq = 2"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"), store.db() as c:
            c.execute(stmt)


def test_verify_detects_an_edited_record(trail):
    store, _ = trail
    tamper(store, "update audit set actor = 'mallory' where seq = 3")
    v = check(store)
    assert not v.ok and v.problems == ["record 3 was edited: its hash does not match its content"]


def test_verify_detects_a_deleted_record_in_the_middle(trail):
    store, _ = trail
    tamper(store, "delete from audit where seq = 2")
    v = check(store)
    assert v.problems == [
        "records 2..2 are missing (deleted)",
        "record 3 does not follow the record before it (one was deleted or re-ordered)",
    ]


def test_verify_detects_a_deleted_last_record(trail):
    store, log = trail
    tamper(store, "delete from audit where seq = 5")
    assert check(store).problems == ["records 5..5 are missing at the end (deleted)"]
    log.append("kill", task_id="t1", actor="bob")  # a later record does not hide the gap
    assert any("records 5..5 are missing" in p for p in check(store).problems)


def test_verify_detects_an_edited_record_whose_hash_was_recomputed(trail):
    """Whoever edits a record and fixes its hash breaks the next record's link instead."""
    store, log = trail
    r = log.records()[1]
    from mschedule_master.audit import record_hash

    new = record_hash(r.seq, r.at, "mallory", r.action, r.task_id, '{"resolved":3}', r.prev)
    tamper(store, f"update audit set actor = 'mallory', detail = '{{\"resolved\":3}}', hash = '{new}' where seq = 2")
    assert check(store).problems == ["record 3 does not follow the record before it (one was deleted or re-ordered)"]


def test_an_append_that_cannot_be_written_raises_and_leaves_nothing(trail):
    store, log = trail
    with store.db() as c:
        c.execute("create trigger audit_full before insert on audit begin select raise(abort, 'disk full'); end")
    with pytest.raises(AuditUnavailable, match="disk full"):
        log.append("submit", task_id="t9")
    assert len(log.records()) == 5 and check(store).ok


def test_the_actor_comes_from_the_request_context(trail):
    _, log = trail
    token = ACTOR.set("carol")
    try:
        assert log.append("kill", task_id="t0").actor == "carol"
    finally:
        ACTOR.reset(token)
    assert log.append("kill", task_id="t0").actor == "mqtt"
