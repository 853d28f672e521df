"""The agent's durable memory: every task id it has seen, its state, and the outbox.

One SQLite file in the state directory (WAL, ``synchronous=FULL``). The rules it keeps:

* a task is INSERTed and COMMITted before its PUBACK and before it runs;
* it is marked RUNNING (durably) before its process is started -- in the commit that
  records it when it starts at once, else just before the exec -- so a crash can never
  lead to a second run: RUNNING at start-up means INTERRUPTED;
* a finished task's result sits in the outbox (``result`` not null, ``result_acked`` 0)
  until the master's ``result_ack``; then the output is dropped, the id kept for dedup;
* finished ids are pruned after ``keep_ids`` (30 days, :meth:`Ledger.prune`, hourly): the
  de-dup window. A task can be re-delivered only until its ``expires_at`` (the master's
  delivery timeout, a minute by default); after that the agent refuses it as ``expired``
  whether or not it still knows the id, so the window need only outlast that (it does, by
  far; it also bounds how long an unacknowledged result is re-sent).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import LedgerError

SCHEMA_VERSION = 2

_SCHEMA = """
create table if not exists tasks (
    seq          integer primary key autoincrement,
    id           text not null unique,
    state        text not null,
    received_at  real not null,
    task         blob,            -- the encoded task, dropped once finished
    started_at   real,
    finished_at  real,
    result       blob,            -- the encoded result (outbox), dropped once acked
    result_acked integer not null default 0,
    pid          integer,         -- the run's process (group) id, to find it after a crash
    pid_start    text             -- "<boot id>:<start ticks>" of that process: guards against pid reuse
);
create index if not exists tasks_state on tasks(state);
create index if not exists tasks_outbox on tasks(seq) where result is not null and result_acked = 0;
"""


class LedgerState(str, Enum):
    ACCEPTED = "ACCEPTED"  #: recorded and acked; waiting for a slot (or for a restart)
    RUNNING = "RUNNING"  #: its process was (about to be) started
    DONE = "DONE"  #: finished; the result is in the outbox until acked
    EXPIRED = "EXPIRED"  #: arrived after its expires_at; rejected, never run
    TOMBSTONE = "TOMBSTONE"  #: killed before it ever arrived; a later delivery is rejected


#: Schema changes, applied in order to older ledgers: version reached -> statements.
_MIGRATIONS: dict[int, list[str]] = {
    2: ["alter table tasks add column pid integer", "alter table tasks add column pid_start text"],
}

#: Allowed transitions; anything else is a bug and raises LedgerError.
TRANSITIONS: dict[LedgerState, frozenset[LedgerState]] = {
    LedgerState.ACCEPTED: frozenset({LedgerState.RUNNING, LedgerState.DONE}),
    LedgerState.RUNNING: frozenset({LedgerState.DONE}),
    LedgerState.DONE: frozenset(),
    LedgerState.EXPIRED: frozenset(),
    LedgerState.TOMBSTONE: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    state: LedgerState
    received_at: float
    task: bytes | None
    started_at: float | None
    finished_at: float | None
    result: bytes | None
    result_acked: bool
    pid: int | None = None
    pid_start: str | None = None


_COLUMNS = "id, state, received_at, task, started_at, finished_at, result, result_acked, pid, pid_start"


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(row[0], LedgerState(row[1]), row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8], row[9])


class Ledger:
    """Thread-safe (one connection behind a lock); every write commits before returning."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=full")
        with self.db() as c:
            version = c.execute("pragma user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {self.path} has schema version {version}, newer than {SCHEMA_VERSION}")
            fresh = c.execute("select count(*) from sqlite_master where name = 'tasks'").fetchone()[0] == 0
            if not fresh:
                for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                    for stmt in _MIGRATIONS[target]:
                        c.execute(stmt)
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute(f"pragma user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def db(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: begins, commits on success, rolls back on error.

        ``durable`` (the default) fsyncs the commit (synchronous=FULL): it survives a
        power cut. ``durable=False`` survives a crash of the agent, not of the machine;
        used only where losing the change is harmless (the next durable commit carries
        it to disk anyway)."""
        with self._lock:
            if not durable:
                self._db.execute("pragma synchronous=normal")
            try:
                self._db.execute("begin immediate")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("rollback")
                    raise
                self._db.execute("commit")
            finally:
                if not durable:
                    self._db.execute("pragma synchronous=full")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ reads
    def get(self, task_id: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(f"select {_COLUMNS} from tasks where id = ?", (task_id,)).fetchone()
        return _entry(row) if row else None

    def in_state(self, state: LedgerState) -> list[Entry]:
        """Entries in ``state``, oldest first."""
        with self._lock:
            rows = self._db.execute(f"select {_COLUMNS} from tasks where state = ? order by seq", (state.value,)).fetchall()
        return [_entry(r) for r in rows]

    def outbox(self, limit: int = 1000) -> list[Entry]:
        """Entries whose result waits for the master's result_ack, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"select {_COLUMNS} from tasks where result is not null and result_acked = 0 order by seq limit ?",
                (limit,),
            ).fetchall()
        return [_entry(r) for r in rows]

    def outbox_ids(self, limit: int = 1000) -> list[str]:
        """Ids whose result waits for the master's result_ack, oldest first (no blobs read)."""
        with self._lock:
            rows = self._db.execute(
                "select id from tasks where result is not null and result_acked = 0 order by seq limit ?", (limit,)
            ).fetchall()
        return [r[0] for r in rows]

    def result(self, task_id: str) -> bytes | None:
        """The stored result of ``task_id`` while it waits for its result_ack."""
        with self._lock:
            row = self._db.execute(
                "select result from tasks where id = ? and result_acked = 0", (task_id,)
            ).fetchone()
        return row[0] if row else None

    def count(self) -> int:
        with self._lock:
            n: int = self._db.execute("select count(*) from tasks").fetchone()[0]
        return n

    # ------------------------------------------------------------------ writes
    def insert(
        self,
        task_id: str,
        state: LedgerState,
        *,
        now: float,
        task: bytes | None = None,
        result: bytes | None = None,
        started_at: float | None = None,
    ) -> bool:
        """Record a new id (state RUNNING: it starts at once, see Agent._accept). False (and
        nothing changed) when the id is already known."""
        with self.db() as c:
            cur = c.execute(
                "insert or ignore into tasks (id, state, received_at, task, result, started_at) values (?, ?, ?, ?, ?, ?)",
                (task_id, state.value, now, task, result, started_at),
            )
            return cur.rowcount == 1

    def mark_running(self, task_id: str, *, now: float) -> None:
        self._move(task_id, LedgerState.RUNNING, "started_at = ?", (now,))

    def set_pid(self, task_id: str, pid: int, pid_start: str | None) -> None:
        """Remember a running task's process (not fsynced: it only helps clean up after a crash)."""
        with self.db(durable=False) as c:
            c.execute("update tasks set pid = ?, pid_start = ? where id = ?", (pid, pid_start, task_id))

    def finish(self, task_id: str, result: bytes, *, now: float, durable: bool = True) -> None:
        """Store the result in the outbox and drop the task's script.

        A non-durable finish lost to a power cut leaves the task RUNNING: reported
        INTERRUPTED after the reboot, never run again."""
        self._move(task_id, LedgerState.DONE, "finished_at = ?, result = ?, task = null", (now, result), durable)

    def ack_result(self, task_id: str) -> bool:
        """The master stored the result: forget the output, keep the id. True if it was pending.
        Not fsynced: if a power cut loses it, the result is only sent once more."""
        with self.db(durable=False) as c:
            cur = c.execute(
                "update tasks set result_acked = 1, result = null where id = ? and result is not null and result_acked = 0",
                (task_id,),
            )
            return cur.rowcount == 1

    def prune(self, *, before: float) -> int:
        """Forget finished ids received before ``before``, acknowledged or not (a result
        nobody acknowledged in that long is given up). Returns how many."""
        final = (LedgerState.DONE.value, LedgerState.EXPIRED.value, LedgerState.TOMBSTONE.value)
        with self.db() as c:
            cur = c.execute("delete from tasks where received_at < ? and state in (?, ?, ?)", (before, *final))
            return cur.rowcount

    def unacked_before(self, before: float) -> list[str]:
        """Ids whose result still waits for its result_ack and were received before ``before``."""
        with self._lock:
            rows = self._db.execute(
                "select id from tasks where received_at < ? and result is not null and result_acked = 0", (before,)
            ).fetchall()
        return [r[0] for r in rows]

    def _move(self, task_id: str, to: LedgerState, sets: str, args: tuple[Any, ...], durable: bool = True) -> None:
        with self.db(durable=durable) as c:
            row = c.execute("select state from tasks where id = ?", (task_id,)).fetchone()
            if row is None:
                raise LedgerError(f"task {task_id} is not in the ledger")
            current = LedgerState(row[0])
            if to not in TRANSITIONS[current]:
                raise LedgerError(f"task {task_id}: {current.value} -> {to.value} is not allowed")
            c.execute(f"update tasks set state = ?, {sets} where id = ?", (to.value, *args, task_id))
