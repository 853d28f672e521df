"""The engine's transactions: nothing leaves the master before it is committed.

:class:`Txn` runs each unit of work in one store transaction (:meth:`Txn.batch`; nested
batches join the outermost) and holds back what must follow the commit: publications,
PUBACKs of the messages handled and watcher events. It also collects the targets the
batch changed, to persist each once at the commit. :meth:`Txn.guarded` runs one message's
handling under a savepoint: if it raises, its writes, publications and events are undone
and the rollouts it touched are rebuilt, and the rest of the batch carries on;
:meth:`Txn.guarded_each` does the same for a run of agent reports under one savepoint,
replaying them one at a time only when one fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mschedule_agent import protocol
from mschedule_agent.transport import Incoming, Transport

from . import models
from .actives import Active
from .rollout import Rollout
from .store import Store

log = logging.getLogger(__name__)

#: Called after a guarded call failed, for each task it touched: (the task, the targets
#: earlier messages of the batch changed and the failed call did not). Must not raise.
Rebuild = Callable[[Active, set[str]], None]


@dataclass(frozen=True, slots=True)
class Out:
    """A message to publish once the batch commits."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    #: 1 for all but what the receiver asks for again when it is lost (a ``result_ack``)
    qos: int = 1


class Txn:
    def __init__(self, *, store: Store, transport: Transport, clock: Callable[[], float], rebuild: Rebuild) -> None:
        self.store = store
        self.transport = transport
        self._clock = clock
        self._rebuild = rebuild
        self._depth = 0
        self._outbox: list[Out] = []
        self._copies: list[tuple[Active, str]] = []  #: task copies (task, agent): handed to hand_copies
        self._acks: list[Incoming] = []
        self._events: list[models.Event] = []
        self._snaps: dict[str, tuple[Rollout, set[str]]] = {}  #: task id -> targets to persist at commit
        self._subscribers: list[Callable[[models.Event], None]] = []
        self._batch_subscribers: list[Callable[[list[models.Event]], None]] = []
        #: takes the committed batch's task copies (send_copy) instead of publishing them (flow control)
        self.hand_copies: Callable[[list[tuple[Active, str]]], None] | None = None
        #: during a guarded() call: the rollouts it may change, and the targets it queued to persist
        self._guarding: dict[str, Active] | None = None
        self._guard_targets: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction; on the outermost exit, commit, then publish, PUBACK and notify."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with self.store.db(lazy=True):  # a batch that writes nothing commits nothing
                yield
                self._save_snapshots()
        except BaseException:
            self._outbox.clear()
            self._copies.clear()
            self._events.clear()
            self._acks.clear()
            self._snaps.clear()
            raise
        finally:
            self._depth = 0
        self._flush()

    def _save_snapshots(self) -> None:
        """Persist every target the batch changed, once each, in the batch's transaction.

        A target an ``ack``, a ``started`` and a ``result`` touch in one batch is written
        once; a rolled-back message's targets are written as memory holds them (the
        rollout's state is not rolled back), which is what a restart should resume from.
        """
        snaps, self._snaps = self._snaps, {}
        for task_id, (rollout, touched) in snaps.items():
            targets = rollout.targets
            self.store.save_snapshots(task_id, [targets[a] for a in touched if a in targets])

    def guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` inside a batch; if it raises, undo its writes, publications and
        events only, log, and carry on with the rest of the batch."""
        failed = self._undoable(lambda: fn(*args))
        if failed is not None:
            log.error("failed to handle %s; skipped", what, exc_info=failed)

    def guarded_each(self, what: Callable[[Any], str], fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> None:
        """``fn(*args)`` for each ``args`` of ``calls``, with :meth:`guarded`'s isolation but
        under ONE savepoint: a run of agent reports none of which raises costs two statements
        in all, not up to three each. If one raises, the whole run is undone (writes,
        publications, events; the rollouts it touched are rebuilt) and replayed, each call
        guarded on its own: what commits is then exactly what :meth:`guarded` alone commits.

        Only for calls whose memory effects outside the rollouts are idempotent (agent
        reports: a replayed report finds memory as the rebuilt rollout says; only metrics
        may count a replayed report twice). ``what(args)`` names a call for the log."""

        def run_all() -> None:
            for args in calls:
                fn(*args)

        if len(calls) >= 2:
            if self._undoable(run_all) is None:
                return
            log.info("a run of %d messages failed: replaying them one at a time", len(calls))
        for args in calls:
            self.guarded(what(args), fn, *args)

    def _undoable(self, run: Callable[[], object]) -> Exception | None:
        """``run()`` under a savepoint. If it raises, its writes, publications, events and
        PUBACKs are undone and the rollouts it touched rebuilt from the store; the exception
        is returned (None when it ran through)."""
        mark = (len(self._outbox), len(self._events), len(self._acks), len(self._copies))
        self.store.savepoint_begin()
        self._guarding, self._guard_targets = {}, {}
        try:
            run()
        except Exception as e:
            self.store.savepoint_rollback()
            del self._outbox[mark[0] :]
            del self._events[mark[1] :]
            del self._acks[mark[2] :]
            del self._copies[mark[3] :]
            touched, self._guarding = self._guarding, None
            for active in touched.values():
                self._rebuild(active, self._earlier(active))
            return e
        else:
            self.store.savepoint_release()
            return None
        finally:
            self._guarding = None

    def _earlier(self, active: Active) -> set[str]:
        """After a failed guarded call: the targets of ``active`` that earlier messages of
        the batch changed and the failed call did not touch (no longer queued to persist)."""
        task_id = active.task.id
        failed = active.rollout.take_dirty() | self._guard_targets.get(task_id, set())
        pending = self._snaps.pop(task_id, None)
        return (pending[1] - failed) if pending else set()

    def guard(self, active: Active) -> None:
        """``active``'s rollout is about to change: rebuilt from the store if the guarded call fails."""
        if self._guarding is not None:
            self._guarding[active.task.id] = active

    def touched(self, active: Active, targets: set[str]) -> None:
        """``targets`` of ``active`` changed: persist them at the commit."""
        if not targets:
            return
        task_id = active.task.id
        if self._guarding is not None:
            self._guarding[task_id] = active
            self._guard_targets.setdefault(task_id, set()).update(targets)
        pending = self._snaps.get(task_id)
        if pending is None:
            self._snaps[task_id] = (active.rollout, targets)
        else:
            pending[1].update(targets)

    # ------------------------------------------------------------------ after the commit
    def after_commit_ack(self, incoming: Incoming) -> None:
        """PUBACK ``incoming`` once the current batch is committed."""
        self._acks.append(incoming)

    def publish(self, topic: str, msg: protocol.Message, **kw: Any) -> None:
        """Queue a message for publication after the current batch commits."""
        self._outbox.append(Out(topic, protocol.encode(msg), **kw))

    def send(self, out: Out) -> None:
        """Queue an encoded message for publication after the current batch commits."""
        self._outbox.append(out)

    def send_copy(self, active: Active, agent_id: str) -> None:
        """Queue a task copy for ``agent_id``: handed to :attr:`hand_copies` (flow control)
        after the current batch commits, before the batch's other publications."""
        self._copies.append((active, agent_id))

    def subscribe(self, callback: Callable[[models.Event], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def subscribe_batch(self, callback: Callable[[list[models.Event]], None]) -> None:
        """``callback(events)`` once per committed batch that emitted events (after the
        per-event subscribers): to act once per batch, e.g. one progress per task."""
        self._batch_subscribers.append(callback)

    def emit(self, kind: str, task_id: str | None, data: dict[str, Any]) -> None:
        self._events.append(models.Event(kind=kind, task_id=task_id, ts=self._clock(), data=data))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        copies, self._copies = self._copies, []
        acks, self._acks = self._acks, []
        events, self._events = self._events, []
        # Task copies first (flow control publishes them, engine.py/flow.py): what the batch
        # also says, such as a submit's reply, then follows them to the broker, as before.
        if copies and self.hand_copies is not None:
            try:
                self.hand_copies(copies)
            except Exception:
                log.exception("could not queue %d task copies; the redeliveries send them again", len(copies))
        for out in outbox:
            try:
                self.transport.publish(
                    out.topic,
                    out.payload,
                    qos=out.qos,
                    retain=out.retain,
                    response_topic=out.response_topic,
                    correlation_data=out.correlation_data,
                )
            except Exception:
                log.exception("publish to %s failed", out.topic)
        for inc in acks:
            try:
                inc.ack()
            except Exception:
                log.exception("PUBACK of a message on %s failed", inc.topic)
        for event in events:
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:
                    log.exception("event subscriber failed on a %s event", event.kind)
        if events:
            for batch_callback in self._batch_subscribers:
                try:
                    batch_callback(events)
                except Exception:
                    log.exception("batch subscriber failed on %d event(s)", len(events))
