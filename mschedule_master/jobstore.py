"""The jobs' tables in the master's store (migration ``jobs-1`` in :mod:`.store`).

Uses the store's one connection and its ``db()`` transaction, so a save is atomic and
saves are serialised: two saves of the same job make two versions (N+1 and N+2), never
one lost edit. Versions are never updated (a trigger refuses it) nor deleted while a
task refers to them. Reads return :mod:`.jobs` dataclasses.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .jobs import JobContent, JobSummary, Version
from .models import NotFound
from .store import Store

if TYPE_CHECKING:
    import sqlite3

_VERSION_COLS = (
    "job, version, content_sha256, script_sha256, script, description, defaults, author, message, created_at"
)


@dataclass(frozen=True, slots=True)
class TaskLink:
    """What a task ran: the job version (when it came from a job) and the script's sha256."""

    task_id: str
    job: str | None
    job_version: int | None
    script_sha256: str | None
    rerun_of: str | None
    submitted_by: str | None
    reported: dict[str, str | None]  #: agent id -> sha256 of the script it reported executing


class JobStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.store._conn

    # ------------------------------------------------------------------ versions
    def save(self, name: str, content: JobContent, *, author: str, message: str, now: float) -> tuple[Version, bool]:
        """Store ``content`` as the next version unless the latest one has equal content.
        ``(version, created)``."""
        with self.store.db() as c:
            row = c.execute(
                f"select {_VERSION_COLS} from job_versions where job=? order by version desc limit 1", (name,)
            ).fetchone()
            if row is not None and row[2] == content.sha256:
                return _version(row), False
            number = 1 if row is None else row[1] + 1
            if row is None:
                c.execute("insert into jobs (name, default_version, created_at) values (?, null, ?) "
                          "on conflict (name) do nothing", (name, now))  # fmt: skip
            c.execute(
                f"insert into job_versions ({_VERSION_COLS}) values (?,?,?,?,?,?,?,?,?,?)",
                (
                    name, number, content.sha256, content.script_sha256, content.script, content.description,
                    _dumps(content.defaults), author, message, now,
                ),
            )  # fmt: skip
            self.store.require_sync()
        return Version(name, number, content, content.sha256, content.script_sha256, author, message, now), True

    def get(self, name: str, version: int | None = None) -> Version:
        """A version, or the job's default one. Raises NotFound naming the job or version."""
        if version is None:
            version = self.summary(name).effective_default
        row = self._conn.execute(
            f"select {_VERSION_COLS} from job_versions where job=? and version=?", (name, version)
        ).fetchone()
        if row is None:
            self.summary(name)  # NotFound("job") first when the job itself is unknown
            raise NotFound("job version", f"{name}@{version}")
        return _version(row)

    def versions(self, name: str) -> list[Version]:
        """Every version, newest first (scripts included)."""
        self.summary(name)
        sql = f"select {_VERSION_COLS} from job_versions where job=? order by version desc"
        rows = self._conn.execute(sql, (name,))
        return [_version(r) for r in rows]

    def summary(self, name: str) -> JobSummary:
        out = self._summaries("where j.name=?", (name,))
        if not out:
            raise NotFound("job", name)
        return out[0]

    def list(self) -> builtins.list[JobSummary]:
        return self._summaries("", ())

    def _summaries(self, where: str, args: tuple[Any, ...]) -> builtins.list[JobSummary]:
        rows = self._conn.execute(
            "select j.name, v.version, j.default_version, v.description, v.created_at, v.author from jobs j "
            "join job_versions v on v.job = j.name and v.version = "
            f"(select max(version) from job_versions where job = j.name) {where} order by j.name",
            args,
        )
        return [JobSummary(*r) for r in rows]

    def set_default(self, name: str, version: int | None) -> JobSummary:
        """Pin the default version (None: the latest again)."""
        if version is not None:
            self.get(name, version)
        else:
            self.summary(name)
        with self.store.db() as c:
            c.execute("update jobs set default_version=? where name=?", (version, name))
        return self.summary(name)

    # ------------------------------------------------------------------ tasks
    def link_task(
        self, task_id: str, *, job: str | None, version: int | None, script_sha256: str,
        rerun_of: str | None = None, submitted_by: str | None = None,
    ) -> None:  # fmt: skip
        """Record what a new task runs (once: a repeated request id keeps the first task's)."""
        with self.store.db() as c:
            c.execute(
                "update tasks set job=?, job_version=?, script_sha256=?, rerun_of=?, submitted_by=? "
                "where id=? and script_sha256 is null",
                (job, version, script_sha256, rerun_of, submitted_by, task_id),
            )

    def task_link(self, task_id: str) -> TaskLink | None:
        row = self._conn.execute(
            "select job, job_version, script_sha256, rerun_of, submitted_by from tasks where id=?", (task_id,)
        ).fetchone()
        if row is None:
            return None
        reported = dict(self._conn.execute("select agent_id, script_sha256 from targets where task_id=?", (task_id,)))
        job, job_version, script_sha256, rerun_of, submitted_by = row
        return TaskLink(task_id, job, job_version, script_sha256, rerun_of, submitted_by, reported)

    def runs(self, name: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """The job's tasks, newest first: version, task, when, who, state and target counts."""
        self.summary(name)
        rows = self._conn.execute(
            "select id, job_version, created_at, finished_at, state, submitted_by, rerun_of, target_count from tasks "
            "where job=? order by created_at desc, rowid desc limit ?",
            (name, limit),
        ).fetchall()
        counts = self.store._counts([r[0] for r in rows])
        keys = ("task_id", "version", "created_at", "finished_at", "state", "submitted_by", "rerun_of", "target_count")
        return [{**dict(zip(keys, r, strict=True)), "counts": counts.get(r[0], {})} for r in rows]

    def agent_history(self, agent_id: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """What ran on an agent, newest first: the task, its job version, the script's
        sha256 the master sent and the one the agent reported, and how it ended."""
        rows = self._conn.execute(
            "select t.task_id, k.name, k.job, k.job_version, k.script_sha256, t.script_sha256, t.state, t.code, "
            "t.reason, k.created_at, coalesce(t.run_finished_at, t.finished_at) from targets t "
            "join tasks k on k.id = t.task_id where t.agent_id=? order by k.created_at desc, k.rowid desc limit ?",
            (agent_id, limit),
        )
        keys = ("task_id", "name", "job", "version", "script_sha256", "reported_sha256", "state", "code", "reason",
                "created_at", "finished_at")  # fmt: skip
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def footprint(self, name: str, version: int) -> dict[str, dict[str, Any]]:
        """agent id -> how the last run of ``name@version`` there ended (task, state, code)."""
        self.get(name, version)
        rows = self._conn.execute(
            "select t.agent_id, t.task_id, t.state, t.code, t.script_sha256 from targets t "
            "join tasks k on k.id = t.task_id where k.job=? and k.job_version=? order by k.created_at, k.rowid",
            (name, version),
        )
        return {r[0]: {"task_id": r[1], "state": r[2], "code": r[3], "reported_sha256": r[4]} for r in rows}


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _version(r: tuple[Any, ...]) -> Version:
    content = JobContent(script=r[4], description=r[5], defaults=json.loads(r[6]))
    return Version(job=r[0], version=r[1], content=content, content_sha256=r[2], script_sha256=r[3], author=r[7],
                   message=r[8], created_at=r[9])  # fmt: skip
