"""The agent's run queue: accepted tasks wait for a free slot, start, and finish once.

:class:`RunQueue` holds the accepted tasks in order and the running scripts (at most
``max_tasks``). A task is marked RUNNING in the ledger before its process exists, so it
never runs twice; its result is recorded and handed to the :class:`~.outbox.Outbox`
when it ends. At start-up, :meth:`RunQueue.recover` reports a run left by a crash as
INTERRUPTED and queues the accepted tasks again.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable

from .config import Settings
from .executor import Executor, Outcome, OutputSink, Run, RunSpec
from .ledger import Entry, Ledger, LedgerState
from .outbox import Outbox, Publish
from .protocol import DecodeError, Result, Started, TargetState, Task, decode_as, encode

log = logging.getLogger(__name__)

#: At most this many seconds between SIGTERM and SIGKILL for a crashed run's leftovers.
ORPHAN_GRACE_MAX = 10.0


class RunQueue:
    """Queued and running tasks. Every method that changes them takes ``lock`` (the
    agent's, shared with the intake so that a task's ack precedes its "started")."""

    def __init__(
        self,
        *,
        agent_id: str,
        settings: Settings,
        ledger: Ledger,
        executor: Executor,
        outbox: Outbox,
        lock: threading.RLock,
        publish: Publish,
        results_topic: str,
        now: Callable[[], float],
        live_output: Callable[[Task], OutputSink | None] | None = None,
    ) -> None:
        self.id = agent_id
        self._live_output = live_output  #: a task's live output (livestream.py), or None
        self.settings = settings
        self.ledger = ledger
        self.executor = executor
        self._outbox = outbox
        self._lock = lock
        self._publish = publish
        self._results_topic = results_topic
        self._now = now
        self._queue: deque[str] = deque()
        self._tasks: dict[str, Task] = {}  # decoded queued tasks (saves a ledger read per start)
        self._running: dict[str, Run] = {}
        self.finished: Counter[str] = Counter()  #: tasks run to an end, by final state (for metrics)
        self.stopping = False

    # ------------------------------------------------------------------ reading
    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def queued_count(self) -> int:
        with self._lock:
            return len(self._queue)

    def load(self) -> tuple[list[str], int]:
        """The running ids and the number of queued tasks, read together."""
        with self._lock:
            return list(self._running), len(self._queue)

    def can_start_now(self) -> bool:
        """A free slot and nobody waiting (call under the lock)."""
        return not self.stopping and not self._queue and len(self._running) < self.settings.max_tasks

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> None:
        """At start-up, before connecting: a task left RUNNING by a crash is reported
        INTERRUPTED (never re-run); accepted tasks are queued again, in order."""
        now = self._now()
        for entry in self.ledger.in_state(LedgerState.RUNNING):
            error = "the agent stopped while the task ran; it was not run again"
            if entry.pid is not None and self.executor.kill_orphan(entry.pid, entry.pid_start, self._grace(entry)):
                error += "; its leftover processes were killed"
                log.warning("task_id=%s: killed the leftover process group %d", entry.id, entry.pid)
            result = Result(
                id=entry.id,
                agent_id=self.id,
                state=TargetState.INTERRUPTED,
                code=None,
                started_at=entry.started_at,
                finished_at=now,
                error=error,
            )
            self.ledger.finish(entry.id, encode(result), now=now)
            self._outbox.add(entry.id)
            log.warning("task_id=%s was running when the agent stopped: reported INTERRUPTED", entry.id)
        with self._lock:
            for entry in self.ledger.in_state(LedgerState.ACCEPTED):
                self._queue.append(entry.id)
        if self._queue:
            log.info("%d accepted task(s) will run after the restart", len(self._queue))

    @staticmethod
    def _grace(entry: Entry) -> float:
        try:
            return min(ORPHAN_GRACE_MAX, decode_as(entry.task, Task).kill_grace) if entry.task else ORPHAN_GRACE_MAX
        except DecodeError:
            return ORPHAN_GRACE_MAX

    def shutdown(self, timeout: float) -> None:
        """Stop starting tasks; kill running scripts (reported KILLED, "agent shutdown") and
        wait for their results to be recorded. Queued tasks stay accepted for the restart."""
        with self._lock:
            self.stopping = True
            runs = list(self._running.values())
        for run in runs:
            run.kill(TargetState.KILLED, "agent shutdown")
        for run in runs:
            if not run.join(timeout):
                log.error("task_id=%s did not stop within %s s", run.spec.task_id, timeout)

    # ------------------------------------------------------------------ queue changes
    def enqueue(self, task: Task) -> None:
        """Queue an accepted task (call under the lock)."""
        self._queue.append(task.id)
        self._tasks[task.id] = task

    def drop(self, task_id: str) -> None:
        """Forget a queued task (killed before it started; call under the lock)."""
        if task_id in self._queue:
            self._queue.remove(task_id)
        self._tasks.pop(task_id, None)

    def kill(self, task_id: str, reason: str) -> bool:
        """Kill ``task_id`` if it runs (call under the lock); False if it does not."""
        run = self._running.get(task_id)
        if run is None:
            return False
        log.info("task_id=%s kill requested: stopping its process group", task_id)
        run.kill(TargetState.KILLED, reason)
        return True

    # ------------------------------------------------------------------ running
    def start_queued(self) -> None:
        """Start queued tasks while there are free slots (oldest first)."""
        for _ in range(self.settings.max_tasks + 1):
            with self._lock:
                if self.stopping or not self._queue or len(self._running) >= self.settings.max_tasks:
                    return
                task_id = self._queue.popleft()
                try:
                    self.start(task_id)
                except Exception:
                    log.exception("cannot start task_id=%s", task_id)

    def start(self, task_id: str, task: Task | None = None, *, marked: bool = False) -> None:
        """Start ``task_id`` (under the lock). ``marked``: the ledger already says RUNNING."""
        if task is None:
            task = self._tasks.pop(task_id, None)
        if task is None:  # queued before a restart: read it back
            entry = self.ledger.get(task_id)
            if entry is None or entry.state is not LedgerState.ACCEPTED or entry.task is None:
                return
            task = decode_as(entry.task, Task)
        spec = RunSpec(
            task_id=task.id,
            script=task.script,
            timeout=task.timeout,
            env=dict(task.env),
            cwd=task.cwd,
            output_cap=task.output_cap if task.output_cap is not None else self.settings.output_cap,
            kill_grace=task.kill_grace,
            # Durable before the process exists, on the run's thread: not on the MQTT thread.
            before_exec=None if marked else functools.partial(self._mark_running, task_id),
            output=self._live_output(task) if self._live_output is not None else None,
        )
        log.info("task_id=%s starting", task_id)
        self._running[task_id] = self.executor.start(
            spec,
            on_started=functools.partial(self._on_started, task_id),
            on_done=functools.partial(self._on_done, task_id),
        )

    def _mark_running(self, task_id: str) -> None:
        self.ledger.mark_running(task_id, now=self._now())

    def _on_started(self, task_id: str, pid: int) -> None:
        try:  # so that a restart after a crash can find and stop this run's processes
            self.ledger.set_pid(task_id, pid, self.executor.identify(pid))
        except Exception:
            log.exception("cannot record the pid of task_id=%s", task_id)
        msg = Started(id=task_id, agent_id=self.id, started_at=self._now(), pid=pid)
        self._publish(self._results_topic, encode(msg))

    def _on_done(self, task_id: str, outcome: Outcome) -> None:
        result = Result(
            id=task_id,
            agent_id=self.id,
            state=outcome.state,
            code=outcome.code,
            output=outcome.stdout.data,
            stderr=outcome.stderr.data,
            signal=outcome.signal,
            output_bytes=outcome.stdout.total,
            stderr_bytes=outcome.stderr.total,
            output_truncated=outcome.stdout.truncated,
            stderr_truncated=outcome.stderr.truncated,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            error=outcome.error,
            script_sha256=outcome.script_sha256,
        )
        data = encode(result)
        try:
            with self._lock:
                # Not fsynced: a power cut before the next durable commit leaves it RUNNING,
                # i.e. reported INTERRUPTED after the reboot; never run twice either way.
                self.ledger.finish(task_id, data, now=self._now(), durable=False)
                self._outbox.add(task_id)
        finally:
            with self._lock:
                self._running.pop(task_id, None)
        log.info("task_id=%s finished: %s code=%s", task_id, outcome.state, outcome.code)
        self.finished[getattr(outcome.state, "value", str(outcome.state))] += 1
        self._outbox.send(task_id, data, self._now())
        self.start_queued()
