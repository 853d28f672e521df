"""The agent's core: receive tasks, record them, run them once, report until acknowledged.

:class:`Agent` owns no thread and no clock. The daemon (or a fleet simulator) gives it
its collaborators, calls :meth:`Agent.handle` for each incoming message (on the MQTT
network thread), :meth:`Agent.on_connect` after each (re)connect, and
:meth:`Agent.tick` every few hundred milliseconds for the periodic work: heartbeats,
outbox re-sends, starting queued tasks, host-info refresh and ledger pruning. Each
script run has its own thread (see :mod:`.executor`).

The end-to-end rules (docs/protocol.md): a task is committed to the ledger before its
PUBACK and its ``ack``; it is marked RUNNING before it starts, so it never runs twice;
its result stays in the outbox and is re-sent until the master's ``result_ack``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from .config import Settings
from .executor import Executor, Outcome, Run, RunSpec
from .fencing import EpochFence
from .hostinfo import HostInfo
from .ledger import Entry, Ledger, LedgerState
from .protocol import (
    Ack,
    DecodeError,
    Heartbeat,
    Kill,
    Offline,
    Register,
    Reject,
    Result,
    ResultAck,
    Started,
    TargetState,
    Task,
    Topics,
    decode_as,
    encode,
)
from .transport import Incoming, Transport, Will

log = logging.getLogger(__name__)

#: At most this many results are re-sent per tick (a long outage must not flood paho).
RESEND_BATCH = 200
#: Seconds between two scans of the outbox (when nothing forces one sooner).
OUTBOX_SCAN = 1.0
#: A result copy not PUBACKed after this many resend intervals is sent again anyway.
STUCK_RESENDS = 12
#: At most this many seconds between SIGTERM and SIGKILL for a crashed run's leftovers.
ORPHAN_GRACE_MAX = 10.0
#: Seconds between two prunes of old ids from the ledger.
PRUNE_EVERY = 3600.0


def reject_code(e: DecodeError) -> str:
    """The ``reject`` code for a message that did not decode."""
    if "exceeds" in e.message:
        return "too_large"
    if e.field == "script":
        return "bad_script"
    return "bad_message"


class Agent:
    """One agent. Give it a ``transport``, or a ``transport_factory`` that receives the
    agent (to wire :meth:`handle` and :meth:`on_connect`) and returns the transport."""

    def __init__(
        self,
        *,
        agent_id: str,
        settings: Settings,
        ledger: Ledger,
        executor: Executor,
        now: Callable[[], float],
        hostinfo: Callable[[], HostInfo],
        transport: Transport | None = None,
        transport_factory: Callable[[Agent], Transport] | None = None,
        fence: EpochFence | None = None,
    ) -> None:
        if (transport is None) == (transport_factory is None):
            raise TypeError("give exactly one of transport, transport_factory")
        self.id = agent_id
        self.settings = settings
        self.ledger = ledger
        self.fence = fence or EpochFence()  #: highest leadership epoch seen (HA masters: fencing.py)
        self.executor = executor
        self.topics = Topics(settings.topic_prefix)
        self._now = now
        self._hostinfo = hostinfo
        self.host = hostinfo()
        self.started_at = now()
        self._lock = threading.RLock()
        self._queue: deque[str] = deque()
        self._tasks: dict[str, Task] = {}  # decoded queued tasks (saves a ledger read per start)
        self._running: dict[str, Run] = {}
        self._sent_at: dict[str, float] = {}
        self._inflight: dict[str, Any] = {}  # task id -> Publication of the last result sent
        # The outbox's ids (results awaiting result_ack), oldest first, mirrored in memory:
        # they change only here (finish, tombstone, result_ack, prune), so a tick never
        # queries the ledger to find them (the query was 9-17 % of a 2,500-agent worker).
        self._outbox: dict[str, None] = dict.fromkeys(ledger.outbox_ids(limit=-1))
        self.finished: Counter[str] = Counter()  #: tasks run to an end, by final state (for metrics)
        self._stopping = False
        self._resend_all = False
        self._online_logged = False
        self._next_heartbeat = 0.0
        self._next_outbox = 0.0
        self._next_hostinfo = self.started_at + settings.hostinfo_refresh
        self._next_prune = self.started_at + 60.0
        self._tasks_topic = self.topics.tasks(agent_id)
        self._control_topic = self.topics.control(agent_id)
        self._results_topic = self.topics.results(agent_id)
        self.transport: Transport = transport if transport is not None else transport_factory(self)

    # ------------------------------------------------------------------ wiring helpers
    def subscriptions(self) -> list[tuple[str, int]]:
        return [(t, 1) for t in self.topics.agent_subscriptions(self.id)]

    def will(self) -> Will:
        """The retained ``offline`` the broker publishes if we vanish (after the will delay)."""
        payload = encode(Offline(id=self.id, reason="will"))
        return Will(self.topics.status(self.id), payload, qos=1, retain=True, delay=self.settings.will_delay)

    def farewell(self) -> list[tuple[str, bytes, bool]]:
        """The messages a clean shutdown publishes (for ``MqttTransport.stop(final=...)``)."""
        payload = encode(Offline(id=self.id, reason="shutdown", at=self._now()))
        return [(self.topics.status(self.id), payload, True)]

    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def queued_count(self) -> int:
        with self._lock:
            return len(self._queue)

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
            self._to_outbox(entry.id)
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

    def on_connect(self, session_present: bool = False) -> None:
        """After every (re)connect: the retained registration, then the whole outbox."""
        self._publish(self.topics.status(self.id), self._register(), retain=True)
        self._resend_all = True
        self._next_heartbeat = 0.0
        if not self._online_logged:
            self._online_logged = True
            log.info("agent %s online (broker session present: %s)", self.id, session_present)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking tasks; kill running scripts (reported KILLED, "agent shutdown") and
        wait for their results to be recorded. Queued tasks stay accepted for the restart."""
        with self._lock:
            self._stopping = True
            runs = list(self._running.values())
        for run in runs:
            run.kill(TargetState.KILLED, "agent shutdown")
        for run in runs:
            if not run.join(timeout):
                log.error("task_id=%s did not stop within %s s", run.spec.task_id, timeout)

    # ------------------------------------------------------------------ periodic work
    def tick(self, now: float) -> None:
        """Periodic work; call every 0.2-0.5 s. Never raises."""
        for step in (self._tick_hostinfo, self._tick_heartbeat, self._tick_outbox, self._tick_prune):
            try:
                step(now)
            except Exception:
                log.exception("agent periodic step %s failed; will retry", step.__name__)
        self._start_queued()

    def _tick_heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat or not self.transport.is_connected():
            return
        self._next_heartbeat = now + self.settings.heartbeat
        with self._lock:
            running, queued = list(self._running), len(self._queue)
        hb = Heartbeat(
            id=self.id,
            hostname=self.host.hostname,
            ip=list(self.host.ip),
            ts=now,
            running=running,
            queued=queued,
            interval=self.settings.heartbeat,
        )
        self._publish(self.topics.heartbeat(self.id), encode(hb), qos=0, retain=True)

    def _tick_hostinfo(self, now: float) -> None:
        if now < self._next_hostinfo:
            return
        self._next_hostinfo = now + self.settings.hostinfo_refresh
        fresh = self._hostinfo()
        if fresh != self.host:
            log.info("host info changed: %s %s", fresh.hostname, list(fresh.ip))
            self.host = fresh
            if self.transport.is_connected():
                self._publish(self.topics.status(self.id), self._register(), retain=True)

    def _tick_outbox(self, now: float) -> None:
        if not self.transport.is_connected():
            return
        if not self._resend_all and now < self._next_outbox:
            return
        everything, self._resend_all = self._resend_all, False
        self._next_outbox = now + min(OUTBOX_SCAN, self.settings.resend)
        with self._lock:
            if not self._outbox:
                return
            pending = list(self._outbox)
        sent = 0
        for task_id in pending:
            if sent >= RESEND_BATCH:
                self._resend_all = everything  # finish on the next tick
                break
            if not self._resend_due(task_id, now, everything):
                continue
            data = self.ledger.result(task_id)  # read one blob at a time: results can be MBs
            if data is not None:
                self._send_result(task_id, data, now)
                sent += 1
            else:  # acknowledged (or pruned) meanwhile
                self._from_outbox(task_id)
        if sent:
            log.debug("re-sent %d result(s) awaiting result_ack", sent)

    def _resend_due(self, task_id: str, now: float, everything: bool) -> bool:
        """Due after ``resend`` seconds (or at a reconnect), unless the last copy still
        waits for its PUBACK: paho re-sends that one itself after a reconnect, and a
        slow link must not pile up copies of a large result. A copy stuck for
        STUCK_RESENDS intervals is sent again regardless."""
        age = now - self._sent_at.get(task_id, float("-inf"))
        if not everything and age < self.settings.resend:
            return False
        pub = self._inflight.get(task_id)
        return pub is None or pub.wait(0) or age >= STUCK_RESENDS * self.settings.resend

    def _to_outbox(self, task_id: str) -> None:
        with self._lock:
            self._outbox[task_id] = None

    def _from_outbox(self, task_id: str) -> None:
        with self._lock:
            self._outbox.pop(task_id, None)
            self._sent_at.pop(task_id, None)
            self._inflight.pop(task_id, None)

    def outbox_ids(self) -> list[str]:
        """Ids whose result waits for the master's result_ack, oldest first."""
        with self._lock:
            return list(self._outbox)

    def _send_result(self, task_id: str, data: bytes, now: float) -> None:
        self._sent_at[task_id] = now
        pub = self._publish(self._results_topic, data)
        if pub is not None:
            self._inflight[task_id] = pub

    def _tick_prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        before = now - self.settings.keep_ids
        for task_id in self.ledger.unacked_before(before):
            log.warning("task_id=%s: no result_ack in %s s; giving up re-sending its result", task_id, self.settings.keep_ids)
            self._from_outbox(task_id)
        n = self.ledger.prune(before=before)
        if n:
            log.info("forgot %d finished task id(s) older than %s s", n, self.settings.keep_ids)

    # ------------------------------------------------------------------ incoming
    def handle(self, msg: Incoming) -> None:
        """One message from the broker (tasks or control topic). Never raises; always
        acknowledges, after recording what must be recorded."""
        try:
            if msg.topic == self._tasks_topic:
                self._handle_task(msg)
            elif msg.topic == self._control_topic:
                self._handle_control(msg)
            else:
                log.warning("message on unexpected topic %s ignored", msg.topic)
                msg.ack()
        except Exception:
            log.exception("failed to handle a message on %s; acknowledging it", msg.topic)
            msg.ack()

    def _handle_task(self, msg: Incoming) -> None:
        try:
            task = decode_as(msg.payload, Task)
        except DecodeError as e:
            self._bad_task(msg, e)
            return
        assert isinstance(task, Task)  # decode_as(..., Task) returns one; said for the type checker
        if self._stale(task.id, task.epoch, msg):
            return
        self._accept(task, msg)

    def _stale(self, task_id: str, epoch: int | None, msg: Incoming) -> bool:
        """True (refused, rejected and acknowledged) when ``epoch`` is older than one seen."""
        refusal = self.fence.admit(epoch)
        if refusal is None:
            return False
        log.warning("task_id=%s: %s; refused", task_id, refusal)
        self._reject(task_id, "stale_epoch", refusal)
        msg.ack()
        return True

    def _bad_task(self, msg: Incoming, e: DecodeError) -> None:
        task_id = e.msg_id
        code = reject_code(e)
        log.warning("bad task message (task_id=%s, code=%s): %s", task_id, code, e)
        if task_id is None:  # unreadable: still tell the publisher it was refused
            self._reject(None, code, str(e)[:500])
        else:
            known = self._known(task_id)
            if known is not None:
                log.warning("task_id=%s is already known (%s); not rejecting it", task_id, known.state.value)
            else:
                self._reject(task_id, code, str(e)[:500])
        msg.ack()

    def _known(self, task_id: str) -> Entry | None:
        try:
            return self.ledger.get(task_id)
        except Exception:
            log.exception("ledger lookup failed for task_id=%s", task_id)
            return None

    def _accept(self, task: Task, msg: Incoming) -> None:
        now = self._now()
        with self._lock:
            if self._stopping:
                log.info("shutting down: task_id=%s left unacknowledged for after the restart", task.id)
                return  # no PUBACK: the broker delivers it again to the next session
            entry = self.ledger.get(task.id)
            if entry is None and task.expires_at is not None and now > task.expires_at:
                self.ledger.insert(task.id, LedgerState.EXPIRED, now=now)
                msg.ack()
                log.warning("task_id=%s arrived %.1f s after it expired: rejected", task.id, now - task.expires_at)
                self._reject(task.id, "expired", f"arrived {now - task.expires_at:.1f} s after its expires_at")
                return
            if entry is None:
                # A free slot and nobody waiting: the task starts at once, so the commit that
                # records it also marks it RUNNING (one fsync on the way to the exec, not two).
                # A crash between this commit and the exec reports it INTERRUPTED, never run;
                # a task that has to wait is recorded ACCEPTED and runs after a restart.
                start_now = not self._stopping and not self._queue and len(self._running) < self.settings.max_tasks
                state = LedgerState.RUNNING if start_now else LedgerState.ACCEPTED
                self.ledger.insert(task.id, state, now=now, task=msg.payload, started_at=now if start_now else None)
                msg.ack()  # PUBACK only once the commit is on disk
                # Still under the lock: no run can start (and say "started") before the ack.
                self._publish(self._results_topic, encode(Ack(id=task.id, agent_id=self.id, at=now)))
                if start_now:
                    try:
                        self._start(task.id, task, marked=True)
                    except Exception:  # left RUNNING: reported INTERRUPTED after a restart
                        log.exception("cannot start task_id=%s", task.id)
                else:
                    self._queue.append(task.id)
                    self._tasks[task.id] = task
        if entry is not None:
            msg.ack()
            self._answer_duplicate(entry)
            return
        log.info("task_id=%s accepted", task.id)
        self._start_queued()

    def _answer_duplicate(self, entry: Entry) -> None:
        log.info("task_id=%s delivered again (%s): not run again", entry.id, entry.state.value)
        if entry.state is LedgerState.EXPIRED:
            self._reject(entry.id, "expired", "arrived after its expires_at")
            return
        if entry.state is LedgerState.TOMBSTONE:
            self._reject(entry.id, "killed", "killed before it arrived")
            return
        ack = Ack(id=entry.id, agent_id=self.id, at=self._now(), state=entry.state.value, duplicate=True)
        self._publish(self._results_topic, encode(ack))
        if entry.result is not None and not entry.result_acked:
            self._send_result(entry.id, entry.result, self._now())

    def _handle_control(self, msg: Incoming) -> None:
        try:
            ctl = decode_as(msg.payload, Kill, ResultAck)
        except DecodeError as e:
            log.warning("bad control message ignored (id=%s): %s", e.msg_id, e)
            msg.ack()
            return
        if isinstance(ctl, Kill) and self._stale(ctl.id, ctl.epoch, msg):
            return
        if isinstance(ctl, ResultAck):
            if self.ledger.ack_result(ctl.id):
                log.info("task_id=%s result acknowledged by the master", ctl.id)
            self._from_outbox(ctl.id)
        else:
            self._kill(ctl)
        msg.ack()

    def _kill(self, kill: Kill) -> None:
        reason = f"killed on request{': ' + kill.reason if kill.reason else ''}"
        with self._lock:
            run = self._running.get(kill.id)
            if run is not None:
                log.info("task_id=%s kill requested: stopping its process group", kill.id)
                run.kill(TargetState.KILLED, reason)
                return
            entry = self.ledger.get(kill.id)
            if entry is None or entry.state is LedgerState.ACCEPTED:
                result = self._never_ran(kill.id, reason + (" before it arrived" if entry is None else " before it started"))
                if entry is None:
                    self.ledger.insert(kill.id, LedgerState.TOMBSTONE, now=self._now(), result=result)
                else:
                    self.ledger.finish(kill.id, result, now=self._now())
                    if kill.id in self._queue:
                        self._queue.remove(kill.id)
                    self._tasks.pop(kill.id, None)
                self._outbox[kill.id] = None  # under self._lock
                log.info("task_id=%s killed before it ran (%s)", kill.id, "unknown" if entry is None else "queued")
                self._send_result(kill.id, result, self._now())
                return
        # Already finished: report again what we know.
        if entry.state is LedgerState.EXPIRED:
            self._reject(entry.id, "expired", "arrived after its expires_at")
        elif entry.result is not None and not entry.result_acked:
            self._send_result(entry.id, entry.result, self._now())
        else:
            log.info("kill for task_id=%s ignored: it finished and its result was acknowledged", kill.id)

    def _never_ran(self, task_id: str, error: str) -> bytes:
        now = self._now()
        return encode(
            Result(id=task_id, agent_id=self.id, state=TargetState.KILLED, code=None, finished_at=now, error=error)
        )

    # ------------------------------------------------------------------ running
    def _start_queued(self) -> None:
        """Start queued tasks while there are free slots (oldest first)."""
        for _ in range(self.settings.max_tasks + 1):
            with self._lock:
                if self._stopping or not self._queue or len(self._running) >= self.settings.max_tasks:
                    return
                task_id = self._queue.popleft()
                try:
                    self._start(task_id)
                except Exception:
                    log.exception("cannot start task_id=%s", task_id)

    def _start(self, task_id: str, task: Task | None = None, *, marked: bool = False) -> None:
        """Start ``task_id`` (under self._lock). ``marked``: the ledger already says RUNNING."""
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
                self._outbox[task_id] = None
        finally:
            with self._lock:
                self._running.pop(task_id, None)
        log.info("task_id=%s finished: %s code=%s", task_id, outcome.state, outcome.code)
        self.finished[getattr(outcome.state, "value", str(outcome.state))] += 1
        self._send_result(task_id, data, self._now())
        self._start_queued()

    # ------------------------------------------------------------------ publishing
    def _register(self) -> bytes:
        return encode(
            Register(
                id=self.id,
                hostname=self.host.hostname,
                ip=list(self.host.ip),
                labels=dict(self.settings.labels),
                version=self.settings.version,
                capacity=self.settings.max_tasks,
                started_at=self.started_at,
                heartbeat=self.settings.heartbeat,
            )
        )

    def _reject(self, task_id: str | None, code: str, reason: str) -> None:
        self._publish(self._results_topic, encode(Reject(id=task_id, agent_id=self.id, code=code, reason=reason)))

    def _publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Any:
        try:
            return self.transport.publish(topic, payload, qos=qos, retain=retain)
        except Exception:
            log.exception("publish to %s failed; the outbox/redelivery will cover it", topic)
            return None
