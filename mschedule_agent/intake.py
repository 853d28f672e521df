"""The agent's intake: task and control messages from the broker.

:class:`Intake` decodes each message and acknowledges it only after recording what must
be recorded: a task is committed to the ledger (and queued or started) before its PUBACK
and its ``ack``; a duplicate is answered from the ledger, never run again; bad input
gets a ``reject``. Control messages carry ``kill`` and ``result_ack``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .fencing import EpochFence
from .gate import Gate, Refused
from .ledger import Entry, Ledger, LedgerState
from .outbox import Outbox, Publish
from .protocol import (
    Ack,
    DecodeError,
    Kill,
    Reject,
    Result,
    ResultAck,
    TargetState,
    Task,
    Topics,
    encode,
)
from .runqueue import RunQueue
from .transport import Incoming

log = logging.getLogger(__name__)


def reject_code(e: DecodeError) -> str:
    """The ``reject`` code for a message that did not decode."""
    if "exceeds" in e.message:
        return "too_large"
    if e.field == "script":
        return "bad_script"
    return "bad_message"


class Intake:
    def __init__(
        self,
        *,
        agent_id: str,
        topics: Topics,
        ledger: Ledger,
        runs: RunQueue,
        outbox: Outbox,
        lock: threading.RLock,
        publish: Publish,
        now: Callable[[], float],
        gate: Gate,
        fence: EpochFence | None = None,
    ) -> None:
        self.id = agent_id
        self.gate = gate
        self.fence = fence or EpochFence()  #: highest leadership epoch seen (HA masters: fencing.py)
        self.ledger = ledger
        self._runs = runs
        self._outbox = outbox
        self._lock = lock
        self._publish = publish
        self._now = now
        self._tasks_topic = topics.tasks(agent_id)
        self._control_topic = topics.control(agent_id)
        self._results_topic = topics.results(agent_id)

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

    # ------------------------------------------------------------------ tasks
    def _handle_task(self, msg: Incoming) -> None:
        try:
            opened = self.gate.open(msg.payload, Task)
        except DecodeError as e:
            self._bad_task(msg, e)
            return
        except Refused as e:
            self._refused(msg, e)
            return
        assert isinstance(opened.message, Task)
        if self._stale(opened.message.id, opened.message.epoch, msg):
            return
        self._accept(opened.message, msg, raw=opened.raw, audit=opened.audit)

    def _refused(self, msg: Incoming, e: Refused) -> None:
        """Signing enforced and this task fails a check: nothing runs, nothing is recorded
        (a genuine copy with the same id may still come), and the publisher learns why."""
        log.warning("task refused (task_id=%s, code=%s): %s", e.msg_id, e.code, e.reason)
        if e.msg_id is None or self._known(e.msg_id) is None:
            self._reject(e.msg_id, e.code, e.reason[:500])
        msg.ack()

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

    def _accept(self, task: Task, msg: Incoming, *, raw: bytes, audit: str = "") -> None:
        now = self._now()
        with self._lock:
            if self._runs.stopping:
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
                start_now = self._runs.can_start_now()
                state = LedgerState.RUNNING if start_now else LedgerState.ACCEPTED
                self.ledger.insert(task.id, state, now=now, task=raw, started_at=now if start_now else None)
                msg.ack()  # PUBACK only once the commit is on disk
                # Still under the lock: no run can start (and say "started") before the ack.
                self._publish(self._results_topic, encode(Ack(id=task.id, agent_id=self.id, at=now, audit=audit)))
                if start_now:
                    try:
                        self._runs.start(task.id, task, marked=True)
                    except Exception:  # left RUNNING: reported INTERRUPTED after a restart
                        log.exception("cannot start task_id=%s", task.id)
                else:
                    self._runs.enqueue(task)
        if entry is not None:
            msg.ack()
            self._answer_duplicate(entry)
            return
        log.info("task_id=%s accepted", task.id)
        self._runs.start_queued()

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
            self._outbox.send(entry.id, entry.result, self._now())

    # ------------------------------------------------------------------ control
    def _handle_control(self, msg: Incoming) -> None:
        try:
            ctl = self.gate.open(msg.payload, Kill, unsigned_ok=(ResultAck,)).message
        except DecodeError as e:
            log.warning("bad control message ignored (id=%s): %s", e.msg_id, e)
            msg.ack()
            return
        except Refused as e:  # a kill that enforce refuses: its task runs on
            log.warning("kill refused (task_id=%s, code=%s): %s", e.msg_id, e.code, e.reason)
            msg.ack()
            return
        if isinstance(ctl, Kill) and self._stale(ctl.id, ctl.epoch, msg):
            return
        if isinstance(ctl, ResultAck):
            if self.ledger.ack_result(ctl.id):
                log.info("task_id=%s result acknowledged by the master", ctl.id)
            self._outbox.remove(ctl.id)
        elif isinstance(ctl, Kill):
            self._kill(ctl)
        msg.ack()

    def _kill(self, kill: Kill) -> None:
        reason = f"killed on request{': ' + kill.reason if kill.reason else ''}"
        with self._lock:
            if self._runs.kill(kill.id, reason):
                return
            entry = self.ledger.get(kill.id)
            if entry is None or entry.state is LedgerState.ACCEPTED:
                result = self._never_ran(kill.id, reason + (" before it arrived" if entry is None else " before it started"))
                if entry is None:
                    self.ledger.insert(kill.id, LedgerState.TOMBSTONE, now=self._now(), result=result)
                else:
                    self.ledger.finish(kill.id, result, now=self._now())
                    self._runs.drop(kill.id)
                self._outbox.add(kill.id)
                log.info("task_id=%s killed before it ran (%s)", kill.id, "unknown" if entry is None else "queued")
                self._outbox.send(kill.id, result, self._now())
                return
        # Already finished: report again what we know.
        if entry.state is LedgerState.EXPIRED:
            self._reject(entry.id, "expired", "arrived after its expires_at")
        elif entry.result is not None and not entry.result_acked:
            self._outbox.send(entry.id, entry.result, self._now())
        else:
            log.info("kill for task_id=%s ignored: it finished and its result was acknowledged", kill.id)

    def _never_ran(self, task_id: str, error: str) -> bytes:
        now = self._now()
        return encode(
            Result(id=task_id, agent_id=self.id, state=TargetState.KILLED, code=None, finished_at=now, error=error)
        )

    def _reject(self, task_id: str | None, code: str, reason: str) -> None:
        self._publish(self._results_topic, encode(Reject(id=task_id, agent_id=self.id, code=code, reason=reason)))
