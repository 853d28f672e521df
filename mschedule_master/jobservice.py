"""Jobs as the API, the CLI and MQTT submissions use them: save versions, run them,
re-run tasks, and every task's record of what it ran.

Every task goes through :meth:`JobService.submit` (or :meth:`run`/:meth:`rerun`), which
starts it with the engine and, in the same transaction, records its script's sha256 (and
job version, re-run origin, submitter). Runs on the master's event-loop thread.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from mschedule_agent.protocol import Submit

from . import jobs, models, targeting
from .approvals import STARTING
from .audit import ACTOR, AuditLog
from .engine import Engine
from .jobs import JobContent, JobError, JobSummary, Version
from .jobstore import JobStore, TaskLink
from .models import InvalidRequest, NotFound

log = logging.getLogger(__name__)


class JobService:
    def __init__(self, *, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.store = JobStore(engine.store)
        self.clock = clock
        self.audit = AuditLog(engine.store, clock=clock)

    # ------------------------------------------------------------------ versions
    def save(
        self, name: str, script: bytes, *, description: str = "", defaults: dict[str, Any] | None = None,
        author: str = "", message: str = "",
    ) -> tuple[Version, bool]:  # fmt: skip
        """A new version when the content changed: ``(version, created)``. Raises InvalidRequest."""
        try:
            jobs.check_name(name)
            content = jobs.make_content(script, description, defaults)
        except JobError as e:
            raise InvalidRequest(str(e), e.field) from None
        with self.engine.store.db():  # the version and its audit record, or neither
            version, created = self.store.save(name, content, author=author or "unknown", message=message, now=self.clock())
            if created:
                self.audit.append("job_version", job=name, version=version.version, author=version.author,
                                  script_sha256=version.script_sha256)  # fmt: skip
        if created:
            log.info("job %s: version %d saved by %s", name, version.version, version.author)
        return version, created

    def save_content(self, name: str, content: JobContent, *, author: str, message: str) -> tuple[Version, bool]:
        return self.save(name, content.script, description=content.description, defaults=content.defaults,
                         author=author, message=message)  # fmt: skip

    def list(self) -> builtins.list[JobSummary]:
        return self.store.list()

    def summary(self, name: str) -> JobSummary:
        return self.store.summary(name)

    def get(self, name: str, version: int | None = None) -> Version:
        return self.store.get(name, version)

    def versions(self, name: str) -> builtins.list[Version]:
        return self.store.versions(name)

    def diff(self, name: str, a: int, b: int) -> str:
        return jobs.diff(self.store.get(name, a), self.store.get(name, b))

    def set_default(self, name: str, version: int | None) -> JobSummary:
        with self.engine.store.db():
            summary = self.store.set_default(name, version)
            self.audit.append("job_default", job=name, version=version)
        return summary

    def runs(self, name: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return self.store.runs(name, limit)

    def footprint(self, name: str, version: int) -> dict[str, dict[str, Any]]:
        return self.store.footprint(name, version)

    def agent_history(self, agent_id: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        if self.engine.registry.get(agent_id) is None and not self.store.agent_history(agent_id, 1):
            raise NotFound("agent", agent_id)
        return self.store.agent_history(agent_id, limit)

    def task_link(self, task_id: str) -> TaskLink | None:
        return self.store.task_link(task_id)

    # ------------------------------------------------------------------ runs
    def submit(self, spec: Submit, *, submitted_by: str | None = None) -> tuple[models.Task, builtins.list[str]]:
        """Start a task: a script, or (``spec.job``) a saved job version."""
        if spec.job is not None:
            return self.run(spec.job, spec.version, jobs.overrides_of(spec), request_id=spec.request_id,
                            submitted_by=submitted_by)  # fmt: skip
        return self._start(spec, job=None, version=None, submitted_by=submitted_by)

    def run(
        self, name: str, version: int | None, overrides: dict[str, Any], *, request_id: str | None = None,
        submitted_by: str | None = None,
    ) -> tuple[models.Task, builtins.list[str]]:  # fmt: skip
        """Run ``name@version`` (its default version when None); ``overrides`` are
        ``submit`` fields that replace the version's defaults."""
        v = self.store.get(name, version)
        try:
            spec = jobs.build_submit(v, overrides, request_id)
        except JobError as e:
            raise InvalidRequest(str(e), e.field) from None
        return self._start(spec, job=name, version=v.version, submitted_by=submitted_by)

    def rerun(
        self, task_id: str, *, failed_only: bool = False, submitted_by: str | None = None
    ) -> tuple[models.Task, builtins.list[str]]:
        """A new task running ``task_id``'s script and limits again, on all its targets or
        (``failed_only``) on those that failed or did not run; linked by ``rerun_of``."""
        task = self.engine.store.get_task(task_id)
        if task is None:
            raise NotFound("task", task_id)
        if failed_only and not task.state.final:
            raise InvalidRequest(f"task {task_id} has not ended: re-run its failed targets once it has", "failed")
        agent_ids = [t.agent_id for t in task.targets or [] if not failed_only or t.state.value in jobs.RERUN_STATES]
        if not agent_ids:
            raise InvalidRequest(f"task {task_id} has no failed or not-run targets to re-run", "failed")
        self._check_exact(agent_ids)
        spec = Submit(
            targets=agent_ids, script=task.script, name=task.name, timeout=task.timeout, parallel=task.parallel,
            fail_rate=task.fail_rate, fail_count=task.fail_count, on_abort=task.on_abort, env=dict(task.env),
            cwd=task.cwd, output_cap=task.output_cap, delivery_timeout=task.delivery_timeout, stream=task.stream,
            plan=task.plan,
        )  # fmt: skip
        link = self.store.task_link(task_id)
        job, version = (link.job, link.job_version) if link else (None, None)
        return self._start(spec, job=job, version=version, rerun_of=task_id, submitted_by=submitted_by)

    def _check_exact(self, agent_ids: builtins.list[str]) -> None:
        """Agent ids as selectors also match hostnames: refuse a re-run that would reach more."""
        try:
            resolved = targeting.resolve(agent_ids, self.engine.registry.agents(), {})
        except ValueError as e:
            raise InvalidRequest(str(e), "targets") from None
        extra = sorted(set(resolved) - set(agent_ids))
        if extra:
            raise InvalidRequest(f"re-run refused: its agent ids would also select {', '.join(extra)}", "targets")

    def _start(
        self, spec: Submit, *, job: str | None, version: int | None, rerun_of: str | None = None,
        submitted_by: str | None = None,
    ) -> tuple[models.Task, builtins.list[str]]:  # fmt: skip
        sha = hashlib.sha256(spec.script_bytes).hexdigest()
        starting = STARTING.set((job, version) if job is not None and version is not None else None)
        try:
            return self._start_in_batch(spec, sha, job=job, version=version, rerun_of=rerun_of,
                                        submitted_by=submitted_by)  # fmt: skip
        finally:
            STARTING.reset(starting)

    def _start_in_batch(
        self, spec: Submit, sha: str, *, job: str | None, version: int | None, rerun_of: str | None,
        submitted_by: str | None,
    ) -> tuple[models.Task, builtins.list[str]]:  # fmt: skip
        with self.engine.batch():  # the task and what it runs, in one commit
            task, targets = self.engine.submit(spec)
            self.store.link_task(task.id, job=job, version=version, script_sha256=sha, rerun_of=rerun_of,
                                 submitted_by=submitted_by)  # fmt: skip
            # no record, no task: AuditUnavailable rolls the submission back (issue 16)
            actor = ACTOR.get() if ACTOR.get() != "mqtt" or not submitted_by else submitted_by
            self.audit.append("submit", task_id=task.id, actor=actor, selector=list(spec.targets), resolved=len(targets),
                              job=job, version=version, script_sha256=sha, name=spec.name, author=submitted_by,
                              rerun_of=rerun_of, request_id=spec.request_id)  # fmt: skip
        if job is not None:
            log.info("task %s runs job %s@%s", task.id, job, version, extra={"task_id": task.id})
        return task, targets
