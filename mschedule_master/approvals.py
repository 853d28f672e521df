"""Operators' approvals of job versions (issue 16, docs/security.md "Two keys").

An operator signs a job version's script offline (``mschedule keys approve``); the master
keeps the signature and sends it in the signed header of every task that runs that version.
An agent with ``require_approval`` runs only such tasks, so a compromised master (or its
online key) cannot run a script that no operator approved. The master checks an approval
against the version before it keeps it; the agents are what enforce it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from mschedule_agent import keys, protocol
from mschedule_agent.signing import SignedApproval, signature_ok

from .audit import AuditLog
from .jobstore import JobStore
from .models import InvalidRequest
from .store import Store

log = logging.getLogger(__name__)

#: The job version a submission being created runs: its first copies are sealed before the
#: task row names its job (JobService._start links it in the same transaction, after).
STARTING: ContextVar[tuple[str, int] | None] = ContextVar("mschedule_starting_job", default=None)


class Approvals:
    def __init__(self, store: Store, *, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.jobs = JobStore(store)
        self.audit = AuditLog(store, clock=clock)

    def add(self, job: str, version: int, *, public: bytes, statement: str, sig: bytes) -> dict[str, Any]:
        """Keep an approval that verifies and names this version's script. Raises InvalidRequest."""
        v = self.jobs.get(job, version)  # NotFound
        try:
            approval = protocol.decode_approval(statement)
        except protocol.DecodeError as e:
            raise InvalidRequest(f"statement: {e}", "statement") from None
        kid = keys.key_id(public)
        if approval.kid != kid:
            raise InvalidRequest(f"the statement names key {approval.kid}, the public key is {kid}", "public")
        env, cwd = v.content.defaults.get("env") or {}, v.content.defaults.get("cwd")
        if (approval.job, approval.version, approval.script_sha256, approval.env, approval.cwd) != (
            job, v.version, v.script_sha256, env, cwd
        ):
            raise InvalidRequest(f"the statement approves {approval.job}@{approval.version}, not this version's "
                                 "script, env and cwd", "statement")  # fmt: skip
        if not signature_ok(public, statement.encode("utf-8"), sig):
            raise InvalidRequest("the signature does not verify with that public key", "sig")
        with self.store.db() as c:
            c.execute("insert into job_approvals values (?,?,?,?,?,?) on conflict (job, version, kid) do update "
                      "set statement=excluded.statement, sig=excluded.sig, created_at=excluded.created_at",
                      (job, v.version, kid, statement, sig, self.clock()))  # fmt: skip
            self.audit.append("approval", job=job, version=v.version, kid=kid, script_sha256=v.script_sha256)
        log.info("job %s@%d approved by operator key %s", job, v.version, kid)
        return {"job": job, "version": v.version, "kid": kid, "script_sha256": v.script_sha256}

    def for_task(self, task_id: str) -> SignedApproval | None:
        """The latest approval of the job version ``task_id`` runs (None: not a job, or none)."""
        link = self.store._conn.execute("select job, job_version from tasks where id = ?", (task_id,)).fetchone()
        job, version = link if link is not None and link[0] is not None else (STARTING.get() or (None, None))
        if job is None:
            return None
        row = self.store._conn.execute(
            "select statement, kid, sig from job_approvals where job = ? and version = ? order by created_at desc limit 1",
            (job, version),
        ).fetchone()
        return SignedApproval(row[0], row[1], bytes(row[2])) if row else None
