"""The audit trail: an append-only, hash-chained record of who did what (issue 16).

Every submission, kill, job version, job default change, schedule change and signing key
change appends one record: who (the API token's name, ``mqtt`` for a submit on the broker,
``schedule:NAME`` for a fire), what, when, and its details (selector and resolved count, job
version, script sha256). A task's outcome is appended when it ends.

Each record's ``hash`` is the sha256 of its own fields and the previous record's hash, so
:func:`verify` detects an edited record (its hash no longer matches), a deleted one (the
next one's ``prev`` points at nothing, or the sequence has a gap, at the end too: SQLite's
AUTOINCREMENT remembers the highest seq) and a re-ordered one. Triggers refuse UPDATE and
DELETE on the table; the chain catches whoever goes around them. A submission is written
in the same transaction as its record: if the record cannot be written, nothing is.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

from .models import ServiceError
from .store import Store

log = logging.getLogger(__name__)

GENESIS = "0" * 64

#: Who is acting in this request: set by the HTTP API's auth middleware (the token's name);
#: outside a request (a submit on the broker) it stays ``mqtt``.
ACTOR: ContextVar[str] = ContextVar("mschedule_actor", default="mqtt")

ACTIONS = frozenset(
    {"submit", "kill", "approval", "outcome", "job_version", "job_default", "schedule_add", "schedule_pause",
     "schedule_resume", "schedule_remove", "signing_key", "plan_approve", "plan_abort"}
)  # fmt: skip


class AuditUnavailable(ServiceError):
    """The audit record could not be written: what it records was refused."""


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    at: float
    actor: str
    action: str
    task_id: str | None
    detail: dict[str, Any]
    prev: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "actor": self.actor, "action": self.action, "task_id": self.task_id,
                "detail": self.detail, "prev": self.prev, "hash": self.hash}  # fmt: skip


def record_hash(seq: int, at: float, actor: str, action: str, task_id: str | None, detail_text: str, prev: str) -> str:
    doc = [seq, at, actor, action, task_id, detail_text, prev]
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()


class AuditLog:
    def __init__(self, store: Store, *, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def append(self, action: str, *, task_id: str | None = None, actor: str | None = None, **detail: Any) -> Record:
        """Append a record in the caller's transaction (or its own). Raises AuditUnavailable."""
        assert action in ACTIONS, action
        who = actor or ACTOR.get()
        try:
            with self.store.db() as c:
                return _append(c, self.clock(), who, action, task_id, detail)
        except sqlite3.Error as e:
            log.error("cannot write the audit record (%s %s by %s): %s", action, task_id, who, e)
            raise AuditUnavailable(f"the audit trail cannot be written ({e}); {action} refused") from None

    def records(
        self, *, after: int = 0, limit: int = 100, task_id: str | None = None, action: str | None = None
    ) -> list[Record]:
        sql, args = "select * from audit where seq > ?", list[Any]([after])
        if task_id is not None:
            sql, args = sql + " and task_id = ?", [*args, task_id]
        if action is not None:
            sql, args = sql + " and action = ?", [*args, action]
        with self.store.db() as c:
            return [_record(r) for r in c.execute(sql + " order by seq limit ?", (*args, limit))]

    def note_signing_key(self, kid: str | None) -> None:
        """At start-up: a record when the master signs with another key than last time (or none)."""
        last = self.last("signing_key")
        previous = last.detail.get("kid") if last is not None else None
        if last is None and kid is None:
            return
        if last is None or previous != kid:
            self.append("signing_key", actor="master", kid=kid, previous=previous)
            log.warning("the master's signing key is now %s (was %s)", kid or "none", previous or "none")

    def last(self, action: str) -> Record | None:
        with self.store.db() as c:
            row = c.execute("select * from audit where action = ? order by seq desc limit 1", (action,)).fetchone()
        return _record(row) if row else None


def _highest(c: Any) -> int:
    """The highest seq ever used: SQLite keeps it in sqlite_sequence (AUTOINCREMENT), so a deleted
    last record shows as a gap. On PostgreSQL (pgstore.py) the highest stored one: there the
    append-only trigger is the guard against deleting the last record."""
    if isinstance(c, sqlite3.Connection):
        row = c.execute("select seq from sqlite_sequence where name = 'audit'").fetchone()
    else:
        row = c.execute("select max(seq) from audit").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _append(c: sqlite3.Connection, at: float, actor: str, action: str, task_id: str | None, detail: dict[str, Any]) -> Record:
    seq = _highest(c) + 1
    last = c.execute("select hash from audit order by seq desc limit 1").fetchone()
    prev = last[0] if last else GENESIS
    text = orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode()
    digest = record_hash(seq, at, actor, action, task_id, text, prev)
    c.execute("insert into audit values (?,?,?,?,?,?,?,?)", (seq, at, actor, action, task_id, text, prev, digest))
    return Record(seq, at, actor, action, task_id, detail, prev, digest)


def _record(r: tuple[Any, ...]) -> Record:
    return Record(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), r[6], r[7])


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    problems: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "count": self.count, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "problems": self.problems}  # fmt: skip


def _rows(c: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    yield from c.execute("select seq, at, actor, action, task_id, detail, prev, hash from audit order by seq")


def verify(c: sqlite3.Connection, *, max_problems: int = 20) -> Verdict:
    """Walk the chain; report every edited, deleted or re-ordered record (up to ``max_problems``)."""
    problems: list[str] = []
    prev, expected_seq, count = GENESIS, 1, 0
    for seq, at, actor, action, task_id, text, stored_prev, digest in _rows(c):
        count += 1
        if seq != expected_seq:
            problems.append(f"records {expected_seq}..{seq - 1} are missing (deleted)")
        if stored_prev != prev:
            problems.append(f"record {seq} does not follow the record before it (one was deleted or re-ordered)")
        if record_hash(seq, at, actor, action, task_id, text, stored_prev) != digest:
            problems.append(f"record {seq} was edited: its hash does not match its content")
        prev, expected_seq = digest, seq + 1
        if len(problems) >= max_problems:
            break
    highest = _highest(c)
    if len(problems) < max_problems and highest >= expected_seq:
        problems.append(f"records {expected_seq}..{highest} are missing at the end (deleted)")
    return Verdict(not problems, count, expected_seq - 1, prev, problems)
