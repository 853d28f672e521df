"""The master's durable store: SQLite in WAL mode, modelled on huey's SqliteStorage.

One connection, used only from the master's event-loop thread. ``db()`` opens a
transaction (re-entrant: only the outermost one commits), so a whole batch of incoming
messages is applied in one commit.

Durability is chosen per commit. SQLite runs with ``synchronous=NORMAL`` (a commit
survives the process being killed, not a power cut); a transaction that stored what
someone else is told about — a result about to be acknowledged, a new task about to be
answered, a kill, a task's end — calls :meth:`require_sync`, and its commit is followed
by an fdatasync of the write-ahead log, which is what ``synchronous=FULL`` does on every
commit. Acks, starts, heartbeats and dispatch bookkeeping skip the fsync: losing them in
a power cut only brings a re-delivery the agents de-duplicate. Every read returns :mod:`models` dataclasses; states
are stored as their ``.value`` and parsed back here.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from mschedule_agent import protocol

from . import models
from .dburl import is_postgres_url
from .errors import StoreError
from .rollout import Progress, TargetSnapshot
from .states import TargetState, TaskState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = (
    "create table if not exists schema_version (version integer not null)",
    """create table if not exists agents (
        id text primary key, hostname text not null, ip text not null, labels text not null,
        version text not null, capacity integer not null, online integer not null, dc text,
        started_at real, last_seen real, last_heartbeat real, heartbeat_interval real not null,
        running text not null)""",
    """create table if not exists tasks (
        id text primary key, name text not null, script blob not null, targets_spec text not null,
        timeout real not null, parallel text not null, fail_rate text, fail_count integer not null,
        on_abort text not null, env text not null, cwd text, output_cap integer,
        delivery_timeout real not null, state text not null, reason text not null,
        created_at real not null, finished_at real, target_count integer not null, request_id text)""",
    "create unique index if not exists tasks_request on tasks (request_id) where request_id is not null",
    "create index if not exists tasks_created on tasks (created_at)",
    "create index if not exists tasks_state on tasks (state)",
    """create table if not exists targets (
        task_id text not null, agent_id text not null, state text not null, seq integer not null,
        acked integer not null default 0, dispatched_at real, last_sent_at real, expires_at real,
        started_at real, finished_at real, kill_requested integer not null default 0,
        kill_sent_at real, offline_since real, reason text not null default '',
        code integer, signal integer, stdout blob, stderr blob,
        stdout_bytes integer not null default 0, stderr_bytes integer not null default 0,
        stdout_truncated integer not null default 0, stderr_truncated integer not null default 0,
        run_started_at real, run_finished_at real, result_state text, result_error text,
        result_at real,
        primary key (task_id, agent_id))""",
    """create table if not exists events (
        id integer primary key autoincrement, ts real not null, kind text not null,
        task_id text, agent_id text, data text not null)""",
    "create index if not exists events_task on events (task_id)",
    "create table if not exists migrations (name text primary key, applied_at real not null)",
)

#: Schema changes after version 1, applied once each in this order and recorded by name in
#: ``migrations`` (a database made by an older master gets the ones it lacks; a database
#: that names one this master does not know was made by a newer master and is refused).
#: Add a change as a new ``(name, statements)`` entry at the end; never edit a landed one.
_MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Jobs (mschedule_master/jobstore.py): saved scripts with immutable versions, and which
    # version each task ran (tasks.job/job_version/script_sha256; targets.script_sha256 is
    # what the agent reported it executed). A task re-run from another names it in rerun_of.
    (
        "jobs-1",
        (
            """create table jobs (
                name text primary key, default_version integer, created_at real not null)""",
            """create table job_versions (
                job text not null references jobs (name), version integer not null,
                content_sha256 text not null, script_sha256 text not null, script blob not null,
                description text not null, defaults text not null, author text not null,
                message text not null, created_at real not null,
                primary key (job, version))""",
            """create trigger job_versions_immutable before update on job_versions
                begin select raise(abort, 'a job version never changes'); end""",
            """create trigger job_versions_kept before delete on job_versions
                when exists (select 1 from tasks where job = old.job and job_version = old.version)
                begin select raise(abort, 'a job version that a task ran is never deleted'); end""",
            "alter table tasks add column job text",
            "alter table tasks add column job_version integer",
            "alter table tasks add column script_sha256 text",
            "alter table tasks add column rerun_of text",
            "alter table tasks add column submitted_by text",
            "alter table targets add column script_sha256 text",
            "create index tasks_job on tasks (job, job_version, created_at)",
            "create index tasks_rerun on tasks (rerun_of) where rerun_of is not null",
            "create index targets_agent on targets (agent_id)",
        ),
    ),
    (
        "verdicts-1",  # provisional verdicts revised by late reports; the listening clock
        (
            "alter table tasks add column revised_at real",
            "alter table targets add column revised_at real",
            "alter table targets add column revised_from text",
            "alter table targets add column unheard_since real",
            "create table if not exists listening (id integer primary key check (id = 1), heard_until real not null)",
        ),
    ),
    # What each request_id asked for (Submit.digest()): a re-used id with another request is refused.
    ("request-digest-1", ("create table if not exists request_digests (request_id text primary key, digest text not null)",)),
    # Schedules (mschedule_master/schedulestore.py, docs/schedules.md): a job on a cron, and
    # every decided fire time with its outcome. (schedule, fire_time) is the primary key, so
    # a fire time is decided once however many masters or restarts plan it.
    (
        "schedules-1",
        (
            """create table schedules (
                name text primary key, job text not null, version text not null, cron text not null,
                tz text not null, overlap text not null, misfire text not null, paused integer not null,
                overrides text not null, since real not null, created_at real not null,
                created_by text not null, missed_earlier integer not null default 0)""",
            """create table schedule_fires (
                schedule text not null, fire_time integer not null, outcome text not null,
                recorded_at real not null, task_id text, error text,
                primary key (schedule, fire_time))""",
            "create index schedule_fires_task on schedule_fires (task_id) where task_id is not null",
            "create index schedule_fires_outcome on schedule_fires (schedule, outcome)",
        ),
    ),
    # retention.py: outputs may expire before their task; find expired tasks and events by age.
    # auto_vacuum=incremental takes effect at once only in a new database (Store.__init__ sets it
    # before anything is written); an older one switches at its next VACUUM (README "Operating").
    (
        "retention-1",
        (
            "create table if not exists outputs_expired (task_id text primary key)",
            "create index if not exists tasks_finished on tasks (finished_at) where finished_at is not null",
            "create index if not exists events_ts on events (ts)",
        ),
    ),
    # Live output (mschedule_master/liveoutput.py, docs/protocol.md "output"): the agents'
    # chunks while a target runs, by (task, agent, seq); deleted once the target ends.
    (
        "live-output-1",
        (
            """create table if not exists live_output (
                task_id text not null, agent_id text not null, seq integer not null, stream text not null,
                offset integer not null, skipped integer not null, data blob not null,
                primary key (task_id, agent_id, seq))""",
            "create index if not exists live_output_stream on live_output (task_id, agent_id, stream, offset)",
            "alter table tasks add column stream integer not null default 1",
        ),
    ),
    # audit.py (issue 16): who did what, append-only and hash-chained. AUTOINCREMENT keeps the
    # highest seq ever used in sqlite_sequence, so a deleted last record leaves a visible gap.
    (
        "audit-1",
        (
            """create table audit (
                seq integer primary key autoincrement, at real not null, actor text not null,
                action text not null, task_id text, detail text not null,
                prev text not null, hash text not null)""",
            "create index audit_task on audit (task_id) where task_id is not null",
            """create trigger audit_no_update before update on audit
                begin select raise(abort, 'the audit trail is append-only'); end""",
            """create trigger audit_no_delete before delete on audit
                begin select raise(abort, 'the audit trail is append-only'); end""",
        ),
    ),
    # approvals.py (issue 16): operators' offline signatures of job versions, sent with their tasks.
    (
        "approvals-1",
        (
            """create table job_approvals (
                job text not null, version integer not null, kid text not null, statement text not null,
                sig blob not null, created_at real not null, primary key (job, version, kid),
                foreign key (job, version) references job_versions (job, version))""",
        ),
    ),
    # Rollout plans (mschedule_master/plan.py, docs/rollout.md "Plans"): the plan as submitted
    # (its JSON form) and where the rollout stands in it (rollout.Progress as JSON).
    (
        "plans-1",
        (
            "alter table tasks add column plan text",
            "alter table tasks add column plan_progress text",
        ),
    ),
)

_SNAPSHOT_COLUMNS = (
    "state", "seq", "acked", "dispatched_at", "last_sent_at", "expires_at", "started_at",
    "finished_at", "kill_requested", "kill_sent_at", "offline_since", "unheard_since",
)  # fmt: skip

_AGENT_COLS = (
    "id", "hostname", "ip", "labels", "version", "capacity", "online", "dc", "started_at", "last_seen",
    "last_heartbeat", "heartbeat_interval", "running",
)  # fmt: skip
#: An upsert (SQLite 3.24+ and PostgreSQL both take it), not SQLite's ``insert or replace``.
_SAVE_AGENT_SQL = (
    f"insert into agents ({', '.join(_AGENT_COLS)}) values ({','.join('?' * len(_AGENT_COLS))}) on conflict (id) "
    f"do update set {', '.join(f'{c}=excluded.{c}' for c in _AGENT_COLS[1:])}"
)

_INSERT_SNAPSHOT_SQL = (
    f"insert into targets (task_id, agent_id, {', '.join(_SNAPSHOT_COLUMNS)}) "
    f"values ({','.join('?' * (2 + len(_SNAPSHOT_COLUMNS)))})"
)
#: A result's columns (and ``{sha}``: the script_sha256 it reports, when it does), written
#: only where none is yet: the duplicate check. Formatted once here, not per result.
_RECORD_RESULT_SQL = (
    "update targets set code=?, signal=?, stdout=?, stderr=?, stdout_bytes=?, stderr_bytes=?, "
    "stdout_truncated=?, stderr_truncated=?, run_started_at=?, run_finished_at=?, "
    "result_state=?, result_error=?, result_at=?{sha} where task_id=? and agent_id=? and result_at is null"
)
_RECORD_RESULT_NO_SHA_SQL = _RECORD_RESULT_SQL.format(sha="")
_RECORD_RESULT_SHA_SQL = _RECORD_RESULT_SQL.format(sha=", script_sha256=?")
_SAVE_SNAPSHOT_SQL = (
    f"update targets set {', '.join(f'{col}=?' for col in _SNAPSHOT_COLUMNS)} where task_id=? and agent_id=?"
)


@dataclass(frozen=True, slots=True)
class StoredTask:
    """An unfinished task as reloaded at start-up: its record and its targets' snapshots."""

    task: models.Task
    snapshots: list[TargetSnapshot]
    progress: Progress | None = None  #: where its plan stands; None when never stored


#: Largest write-ahead log kept between transactions (bytes); SQLite's auto-checkpoint
#: alone never shrinks the file.
WAL_LIMIT = 16 * 1024 * 1024
#: SQLite's page cache, KiB (its default: 2,000). The targets of a big fan-out are read and
#: written again and again; past the cache, every page comes back by a pread() (31,000 of
#: them while ingesting 20,000 results, 4,500 with this cache). Taken only as the database
#: grows, and given back after large results (:meth:`Store.shrink_memory`).
CACHE_KIB = 32 * 1024


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def open_store(db: str) -> Store:
    """The store ``db`` names: a ``postgresql://`` URL (pgstore.py), else an SQLite file path."""
    if is_postgres_url(db):
        from .pgstore import PgStore

        return PgStore(db)
    return Store(db)


class _Joined:
    """A nested :meth:`Store.db`: joins the outermost transaction."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        return self._store._join()

    def __exit__(self, *exc: object) -> None:
        self._store._depth -= 1


class Store:
    #: What a failed statement raises (the daemon stops on these; pgstore.py's differ).
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._conn.execute("pragma auto_vacuum=incremental")  # a new database only: before WAL, before tables
            self._conn.execute("pragma journal_mode=wal")
            self._conn.execute(f"pragma synchronous={synchronous}")
            self._conn.execute("pragma busy_timeout=10000")
            self._conn.execute(f"pragma journal_size_limit={WAL_LIMIT}")
            self._conn.execute(f"pragma cache_size=-{CACHE_KIB}")
            self._depth = 0
            self._began = False  #: the outermost db() has begun its transaction (see lazy)
            self._joined = _Joined(self)  #: what a nested db() returns
            self._savepoint = ""  #: "" none, "pending" (opened at the first write), "open"
            self._sync_needed = False
            self._wal_fd: int | None = None
            self.syncs = 0  #: fsyncs of the write-ahead log so far
            self.on_commit: Callable[[float], None] | None = None  #: gets each commit's seconds (metrics)
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {path}: {e}") from e

    def close(self) -> None:
        self._conn.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    def db(self, *, lazy: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """A transaction; nested uses join the outermost one, which commits or rolls back.

        ``lazy`` (the engine's batches): the transaction begins at the first nested
        ``db()``, which every write method opens, and a batch that wrote nothing (heartbeats,
        acks of nothing new) neither begins nor commits. Reads before it see what is
        committed, which is the same: this connection is the only writer. Only for bodies
        that write through nested ``db()`` uses, never through the yielded connection.

        A nested use is a plain object, not a generator: every write of every message
        opens one (a generator-based context manager was ~10 % of the master's CPU).
        """
        if self._depth:
            return self._joined
        return self._outermost(lazy)

    def _join(self) -> sqlite3.Connection:
        """Entering a nested db(): begin the lazy transaction, open the pending savepoint."""
        if not self._began:
            self._conn.execute("begin immediate")
            self._began = True
        if self._savepoint == "pending":
            self._conn.execute("savepoint msg")
            self._savepoint = "open"
        self._depth += 1
        return self._conn

    @contextmanager
    def _outermost(self, lazy: bool) -> Iterator[sqlite3.Connection]:
        if not lazy:
            self._conn.execute("begin immediate")
        self._began = not lazy
        self._depth = 1
        try:
            yield self._conn
        except BaseException:
            self._depth = 0
            self._savepoint = ""
            self._sync_needed = False
            if self._began:
                self._began = False
                self._conn.execute("rollback")
            raise
        self._depth = 0
        if not self._began:
            self._sync_needed = False
            return
        self._began = False
        started = time.perf_counter()
        self._conn.execute("commit")
        if self._sync_needed:
            self._sync_needed = False
            self._sync_wal()
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)
        self._bound_wal()

    def _bound_wal(self) -> None:
        """A write-ahead log grown past WAL_LIMIT (a batch of large outputs) is checkpointed
        into the database and truncated at once, not left to sit on disk at its peak."""
        try:
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return
        if size > WAL_LIMIT:
            busy, _, _ = self._conn.execute("pragma wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("could not truncate the write-ahead log of %s (%d bytes); will retry", self.path, size)

    def require_sync(self) -> None:
        """The current transaction must be on disk (not just in the OS) when db() returns."""
        self._sync_needed = True

    def _sync_wal(self) -> None:
        try:
            if self._wal_fd is None:
                self._wal_fd = os.open(self.path + "-wal", os.O_RDONLY)
            os.fdatasync(self._wal_fd)  # data and the size, not the times: as SQLite's own syncs on Linux
        except OSError as e:
            raise StoreError(f"cannot sync the write-ahead log of {self.path}: {e}") from e
        self.syncs += 1

    def savepoint_begin(self) -> None:
        """Inside a transaction: mark a point that :meth:`savepoint_rollback` returns to.

        The SQL savepoint is opened only at the first write after it: most messages (acks,
        starts, heartbeats) write nothing, and each statement is a GIL hand-off to paho's
        busy thread (py-spy: ``release`` was 10 % of a 5,000-agent fan-out's master).
        Not nested: one savepoint at a time.
        """
        self._savepoint = "pending"

    def savepoint_release(self) -> None:
        opened, self._savepoint = self._savepoint == "open", ""
        if opened:
            self._conn.execute("release msg")

    def savepoint_rollback(self) -> None:
        opened, self._savepoint = self._savepoint == "open", ""
        if opened:
            self._conn.execute("rollback to msg")
            self._conn.execute("release msg")

    def _migrate(self) -> None:
        with self.db() as c:
            for stmt in _SCHEMA:
                c.execute(stmt)
            row = c.execute("select version from schema_version").fetchone()
            if row is None:
                c.execute("insert into schema_version (version) values (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise StoreError(f"database schema {row[0]} is newer than this master ({SCHEMA_VERSION})")
            self._apply_migrations(c)

    def _apply_migrations(self, c: sqlite3.Connection) -> None:
        done = {name for (name,) in c.execute("select name from migrations")}
        known = {name for name, _ in _MIGRATIONS}
        if unknown := sorted(done - known):
            raise StoreError(f"database has migrations this master does not know ({', '.join(unknown)}): made by a newer master")
        for name, statements in _MIGRATIONS:
            if name in done:
                continue
            for stmt in statements:
                c.execute(stmt)
            c.execute("insert into migrations (name, applied_at) values (?, ?)", (name, time.time()))
            log.info("database migrated: %s", name)

    # ------------------------------------------------------------------ agents
    def save_agents(self, agents: Iterable[models.Agent]) -> None:
        rows = [
            (
                a.id, a.hostname, _dumps(a.ip), _dumps(a.labels), a.version, a.capacity, int(a.online), a.dc,
                a.started_at, a.last_seen, a.last_heartbeat, a.heartbeat_interval, _dumps(a.running),
            )
            for a in agents
        ]  # fmt: skip
        with self.db() as c:
            c.executemany(_SAVE_AGENT_SQL, rows)

    def load_agents(self) -> list[models.Agent]:
        rows = self._conn.execute("select * from agents").fetchall()
        return [
            models.Agent(
                id=r[0], hostname=r[1], ip=json.loads(r[2]), labels=json.loads(r[3]), version=r[4], capacity=r[5],
                online=bool(r[6]), dc=r[7], started_at=r[8], last_seen=r[9], last_heartbeat=r[10],
                heartbeat_interval=r[11], running=json.loads(r[12]),
            )
            for r in rows
        ]  # fmt: skip

    # ------------------------------------------------------------------ tasks
    def insert_task(
        self,
        task: models.Task,
        agent_ids: list[str],
        request_id: str | None = None,
        digest: str | None = None,
        *,
        snapshots: Sequence[TargetSnapshot] | None = None,
    ) -> None:
        """The task and its targets, WAITING in ``agent_ids`` order; or, given ``snapshots``
        (one per agent id, in that order: a started rollout's), the targets as they say, so
        that a fan-out's targets are written once, not inserted and then updated."""
        if snapshots is not None and [s.agent_id for s in snapshots] != agent_ids:
            raise ValueError("insert_task: the snapshots must be the targets', in order")
        with self.db() as c:
            if request_id is not None and digest is not None:
                c.execute("insert into request_digests (request_id, digest) values (?,?)", (request_id, digest))
            c.execute(
                f"insert into tasks ({_INSERT_TASK_COLS}) values ({_INSERT_TASK_MARKS})",
                (
                    task.id, task.name, task.script, _dumps(task.targets_spec), task.timeout, _dumps(task.parallel),
                    _dumps(task.fail_rate), task.fail_count, task.on_abort, _dumps(task.env), task.cwd,
                    task.output_cap, task.delivery_timeout, task.state.value, task.reason, task.created_at,
                    task.finished_at, len(agent_ids), request_id, int(task.stream),
                    _dumps(task.plan) if task.plan is not None else None,
                ),
            )  # fmt: skip
            if snapshots is None:
                c.executemany(
                    "insert into targets (task_id, agent_id, state, seq) values (?,?,?,?)",
                    # seq = dispatch order from the start: a restore sorts by it, and a plan's steps are seq ranges
                    [(task.id, a, TargetState.WAITING.value, i) for i, a in enumerate(agent_ids)],
                )
            else:
                c.executemany(_INSERT_SNAPSHOT_SQL, [(task.id, s.agent_id, *_snapshot_values(s)) for s in snapshots])
            self.require_sync()

    def set_task_state(self, task_id: str, state: TaskState, reason: str, finished_at: float | None) -> None:
        with self.db() as c:
            c.execute(
                "update tasks set state=?, reason=?, finished_at=? where id=?",
                (state.value, reason, finished_at, task_id),
            )
            if state.final:
                self.require_sync()

    def save_snapshots(self, task_id: str, snapshots: Iterable[TargetSnapshot]) -> None:
        rows = [(*_snapshot_values(s), task_id, s.agent_id) for s in snapshots]
        with self.db() as c:
            c.executemany(_SAVE_SNAPSHOT_SQL, rows)

    def set_plan_progress(self, task_id: str, progress: Progress, step: int) -> None:
        """Where the task's plan stands; ``step`` is the user's step number shown for it."""
        doc = {"stage": progress.stage, "step": step, "paused_at": progress.paused_at, "aborted": progress.aborted}
        with self.db() as c:
            c.execute("update tasks set plan_progress=? where id=?", (_dumps(doc), task_id))

    def set_target_reason(self, task_id: str, agent_id: str, reason: str) -> None:
        with self.db() as c:
            c.execute("update targets set reason=? where task_id=? and agent_id=?", (reason, task_id, agent_id))

    def set_target_revised(self, task_id: str, agent_id: str, old: TargetState, now: float) -> None:
        """Record that a late report replaced the target's provisional verdict ``old``."""
        with self.db() as c:
            c.execute(
                "update targets set revised_at=?, revised_from=coalesce(revised_from, ?) where task_id=? and agent_id=?",
                (now, old.value, task_id, agent_id),
            )

    def set_task_revised(self, task_id: str, now: float) -> None:
        with self.db() as c:
            c.execute("update tasks set revised_at=? where id=?", (now, task_id))
            self.require_sync()

    def load_task(self, task_id: str) -> StoredTask | None:
        """One task (finished or not) with its targets' snapshots, to carry on its rollout."""
        task = self.get_task(task_id, with_targets=False)
        if task is None:
            return None
        cols = ", ".join(("agent_id",) + _SNAPSHOT_COLUMNS)
        rows = self._conn.execute(f"select {cols} from targets where task_id=? order by rowid", (task_id,))
        row = self._conn.execute("select plan_progress from tasks where id=?", (task_id,)).fetchone()
        doc = json.loads(row[0]) if row and row[0] else None
        progress = Progress(doc["stage"], doc["paused_at"], doc["aborted"]) if doc else None
        return StoredTask(task, [_snapshot(r) for r in rows], progress)

    def heard_until(self) -> float | None:
        """The listening clock's persisted mark: time up to which deadlines have been accounted."""
        row = self._conn.execute("select heard_until from listening where id=1").fetchone()
        return row[0] if row else None

    def set_heard_until(self, ts: float) -> None:
        with self.db() as c:
            c.execute(
                "insert into listening (id, heard_until) values (1, ?) "
                "on conflict (id) do update set heard_until=excluded.heard_until",
                (ts,),
            )

    def record_result(self, task_id: str, agent_id: str, result: protocol.Result, now: float) -> bool:
        """Store a target's result once, with the sha256 of the script the agent reports it
        executed (mschedule_master/jobstore.py), in one statement. False when it was already
        stored (or no such target)."""
        values = (
            result.code, result.signal, result.output, result.stderr, result.output_bytes,
            result.stderr_bytes, int(result.output_truncated), int(result.stderr_truncated),
            result.started_at, result.finished_at, result.state, result.error, now,
        )  # fmt: skip
        with self.db() as c:
            if result.script_sha256 is None:  # an agent older than the field
                cur = c.execute(_RECORD_RESULT_NO_SHA_SQL, (*values, task_id, agent_id))
            else:
                cur = c.execute(_RECORD_RESULT_SHA_SQL, (*values, result.script_sha256, task_id, agent_id))
            if cur.rowcount != 1:
                return False
            self.require_sync()
            return True

    def add_event(self, ts: float, kind: str, task_id: str | None, agent_id: str | None, data: dict[str, Any]) -> None:
        with self.db() as c:
            c.execute(
                "insert into events (ts, kind, task_id, agent_id, data) values (?,?,?,?,?)",
                (ts, kind, task_id, agent_id, _dumps(data)),
            )

    def events(self, task_id: str | None = None, kind: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql = "select ts, kind, task_id, agent_id, data from events where 1=1"
        args: list[Any] = []
        if task_id is not None:
            sql, args = sql + " and task_id=?", [*args, task_id]
        if kind is not None:
            sql, args = sql + " and kind=?", [*args, kind]
        rows = self._conn.execute(sql + " order by id limit ?", [*args, limit]).fetchall()
        return [{"ts": r[0], "kind": r[1], "task_id": r[2], "agent_id": r[3], "data": json.loads(r[4])} for r in rows]

    # ------------------------------------------------------------------ reads
    def task_for_request(self, request_id: str) -> str | None:
        row = self._conn.execute("select id from tasks where request_id=?", (request_id,)).fetchone()
        return row[0] if row else None

    def request_digest(self, request_id: str) -> str | None:
        """What ``request_id`` asked for (None: unknown, or a task from before digests were kept)."""
        row = self._conn.execute("select digest from request_digests where request_id=?", (request_id,)).fetchone()
        return row[0] if row else None

    def task_exists(self, task_id: str) -> bool:
        return self._conn.execute("select 1 from tasks where id=?", (task_id,)).fetchone() is not None

    def get_task(
        self, task_id: str, *, with_targets: bool = True, outputs: bool = True, tail: int | None = None
    ) -> models.Task | None:
        """The task; with its targets unless ``with_targets=False``, their stdout and stderr
        only with ``outputs`` (a poll of a 2,000-target task reads no output bytes), only the
        last ``tail`` + 1 bytes of each with ``tail`` (one more than shown: it tells a cut)."""
        row = self._conn.execute(f"select {_TASK_COLS} from tasks where id=?", (task_id,)).fetchone()
        if row is None:
            return None
        counts = self._counts([task_id]).get(task_id, {})
        targets = self.targets(task_id, outputs=outputs, tail=tail) if with_targets else None
        return _task(row, counts, targets)

    def list_tasks(
        self, *, state: TaskState | None = None, limit: int = 50, offset: int = 0, id_prefix: str | None = None
    ) -> list[models.Task]:
        """Newest first; ``id_prefix``: only ids starting with it (a range on the key, as git's short ids)."""
        where: list[str] = []
        args: list[str | int] = []
        if state is not None:
            where, args = ["state=?"], [state.value]
        if id_prefix:
            where += ["id >= ?", "id < ?"]
            args += [id_prefix, id_prefix + "\U0010ffff"]
        sql = f"select {_TASK_COLS} from tasks" + (" where " + " and ".join(where) if where else "")
        rows = self._conn.execute(
            sql + " order by created_at desc, rowid desc limit ? offset ?", [*args, limit, offset]
        ).fetchall()
        counts = self._counts([r[0] for r in rows])
        return [_task(r, counts.get(r[0], {}), None) for r in rows]

    def unfinished_task_ids(self) -> list[str]:
        finals = [s.value for s in TaskState if s.final]
        rows = self._conn.execute(
            f"select id from tasks where state not in ({','.join('?' * len(finals))}) order by created_at", finals
        )
        return [r[0] for r in rows]

    def finished_since(self, ts: float) -> list[str]:
        rows = self._conn.execute("select id from tasks where finished_at >= ? order by finished_at", (ts,))
        return [r[0] for r in rows]

    def load_unfinished(self) -> list[StoredTask]:
        out = []
        for task_id in self.unfinished_task_ids():
            stored = self.load_task(task_id)
            if stored is not None:
                out.append(stored)
        return out

    def load_stored(self, task_id: str) -> StoredTask | None:
        """One task's record and its targets' snapshots, as :meth:`load_unfinished` reads them
        (the rebuild after a handler error asks by this name; the same read as :meth:`load_task`)."""
        return self.load_task(task_id)

    def targets(self, task_id: str, *, outputs: bool = True, tail: int | None = None) -> list[models.Target]:
        """The task's targets; without ``outputs`` their stdout and stderr are empty (not read)."""
        cols = _TARGET_COLS if outputs else _TARGET_COLS_NO_OUTPUT
        if outputs and tail is not None:
            n = int(tail) + 1
            cols = _TARGET_COLS.replace("t.stdout, t.stderr,", f"{self._tail('t.stdout', n)}, {self._tail('t.stderr', n)},")
        rows = self._conn.execute(
            f"select {cols} from targets t left join agents a on a.id = t.agent_id "
            "where t.task_id=? order by t.rowid",
            (task_id,),
        )
        return [_target(r) for r in rows]

    def get_target(self, task_id: str, agent_id: str) -> models.Target | None:
        row = self._conn.execute(
            f"select {_TARGET_COLS} from targets t left join agents a on a.id = t.agent_id "
            "where t.task_id=? and t.agent_id=?",
            (task_id, agent_id),
        ).fetchone()
        return None if row is None else _target(row)

    def target_code(self, task_id: str, agent_id: str) -> int | None:
        row = self._conn.execute("select code from targets where task_id=? and agent_id=?", (task_id, agent_id)).fetchone()
        return row[0] if row else None

    def target_states(self, task_id: str) -> dict[str, dict[str, Any]]:
        """agent id -> {state, code}: the summary of a task's targets, without their output."""
        rows = self._conn.execute("select agent_id, state, code from targets where task_id=? order by rowid", (task_id,))
        return {r[0]: {"state": r[1], "code": r[2]} for r in rows}

    def task_state_counts(self) -> dict[str, int]:
        """Task state -> how many tasks the database holds in it (for metrics)."""
        return dict(self._conn.execute("select state, count(*) from tasks group by state").fetchall())

    def _tail(self, column: str, n: int) -> str:
        """SQL for the last ``n`` bytes of a blob column."""
        return f"substr({column}, -{int(n)})"

    def notify(self, channel: str, payload: str) -> None:
        """Tell other masters on the database (PostgreSQL's NOTIFY); one master per SQLite file: no-op."""

    def incremental_vacuum(self, pages: int) -> int:
        """Hand up to ``pages`` free pages back to the file system (``auto_vacuum=incremental``
        databases; a no-op otherwise). Returns how many were free before."""
        free: int = self._conn.execute("pragma freelist_count").fetchone()[0]
        if free and not self._depth:
            self._conn.executescript(f"pragma incremental_vacuum({int(pages)});")  # execute() frees one page only
        return free

    def shrink_memory(self) -> None:
        """Free the page cache (after large results, whose pages it would otherwise keep).
        Outside a transaction only: the daemon's timer calls it between batches."""
        if not self._depth:
            self._conn.execute("pragma shrink_memory")

    def check_writable(self) -> str | None:
        """None when the database takes a write lock now, else why not (for /readyz)."""
        if self._depth:
            return None  # inside a transaction: it holds the lock already
        try:
            self._conn.execute("begin immediate")
            self._conn.execute("rollback")
        except sqlite3.Error as e:
            return f"database not writable: {e}"
        return None

    def _counts(self, task_ids: list[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for i in range(0, len(task_ids), 500):
            chunk = task_ids[i : i + 500]
            rows = self._conn.execute(
                f"select task_id, state, count(*) from targets where task_id in ({','.join('?' * len(chunk))}) "
                "group by task_id, state",
                chunk,
            )
            for task_id, state, n in rows:
                out.setdefault(task_id, {})[state] = n
        return out


_INSERT_TASK_COLS = (
    "id, name, script, targets_spec, timeout, parallel, fail_rate, fail_count, on_abort, env, cwd, output_cap, "
    "delivery_timeout, state, reason, created_at, finished_at, target_count, request_id, stream, plan"
)
_INSERT_TASK_MARKS = ",".join("?" * len(_INSERT_TASK_COLS.split(",")))
_TASK_COLS = (
    "id, name, script, targets_spec, timeout, parallel, fail_rate, fail_count, on_abort, env, cwd, "
    "output_cap, delivery_timeout, state, reason, created_at, finished_at, target_count, revised_at, stream, plan, "
    "plan_progress"
)
_TARGET_COLS = (
    "t.task_id, t.agent_id, t.state, t.acked, t.code, t.signal, t.reason, t.dispatched_at, "
    "coalesce(t.run_started_at, t.started_at), coalesce(t.run_finished_at, t.finished_at), t.stdout, t.stderr, "
    "t.stdout_bytes, t.stderr_bytes, t.stdout_truncated, t.stderr_truncated, a.hostname, t.result_state, "
    "t.result_error, t.revised_at, t.revised_from, t.kill_requested"
)
#: The same columns with NULL for the two output blobs: SQLite never reads their pages.
_TARGET_COLS_NO_OUTPUT = _TARGET_COLS.replace("t.stdout, t.stderr,", "NULL, NULL,")
assert _TARGET_COLS_NO_OUTPUT != _TARGET_COLS


def _task(r: tuple[Any, ...], counts: dict[str, int], targets: list[models.Target] | None) -> models.Task:
    return models.Task(
        id=r[0], name=r[1], script=r[2], targets_spec=json.loads(r[3]), timeout=r[4], parallel=json.loads(r[5]),
        fail_rate=json.loads(r[6]) if r[6] is not None else None, fail_count=r[7], on_abort=r[8],
        env=json.loads(r[9]), cwd=r[10], output_cap=r[11], delivery_timeout=r[12], state=TaskState(r[13]),
        reason=r[14], created_at=r[15], finished_at=r[16], counts=counts, target_count=r[17], targets=targets,
        revised_at=r[18], stream=bool(r[19]), plan=json.loads(r[20]) if r[20] else None, **_plan_fields(r[21]),
    )  # fmt: skip


def _plan_fields(progress: str | None) -> dict[str, Any]:
    if not progress:
        return {}
    doc = json.loads(progress)
    return {"plan_step": doc.get("step"), "paused_at": doc.get("paused_at")}


def _target(r: tuple[Any, ...]) -> models.Target:
    return models.Target(
        task_id=r[0], agent_id=r[1], state=TargetState(r[2]), acked=bool(r[3]), code=r[4], signal=r[5],
        reason=r[6], dispatched_at=r[7], started_at=r[8], finished_at=r[9], stdout=r[10] or b"",
        stderr=r[11] or b"", stdout_bytes=r[12], stderr_bytes=r[13], stdout_truncated=bool(r[14]),
        stderr_truncated=bool(r[15]), hostname=r[16], agent_state=r[17], error=r[18] or None, revised_at=r[19],
        revised_from=r[20], kill_requested=bool(r[21]),
    )  # fmt: skip


def _snapshot_values(s: TargetSnapshot) -> tuple[Any, ...]:
    return (
        s.state.value, s.seq, int(s.acked), s.dispatched_at, s.last_sent_at, s.expires_at, s.started_at,
        s.finished_at, int(s.kill_requested), s.kill_sent_at, s.offline_since, s.unheard_since,
    )  # fmt: skip


def _snapshot(r: tuple[Any, ...]) -> TargetSnapshot:
    return TargetSnapshot(
        agent_id=r[0], state=TargetState(r[1]), seq=r[2], acked=bool(r[3]), dispatched_at=r[4], last_sent_at=r[5],
        expires_at=r[6], started_at=r[7], finished_at=r[8], kill_requested=bool(r[9]), kill_sent_at=r[10],
        offline_since=r[11], unheard_since=r[12],
    )  # fmt: skip
