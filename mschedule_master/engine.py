"""The rollout engine: carries out what the pure :mod:`rollout` machines decide.

It owns the active rollouts (one per unfinished task), persists every target and task
change through the :class:`~.store.Store`, and publishes tasks, kills and result_acks
through a :class:`~mschedule_agent.transport.Transport`. Nothing is published before it
is committed: every entry point runs inside :meth:`Engine.batch`, which queues
publications, message acknowledgements and watcher events in an outbox that is flushed
only after the transaction commits. The daemon wraps a whole batch of incoming
messages in one ``batch()``.

Time comes in through ``clock`` (epoch seconds), so tests drive it by hand.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from mschedule_agent import protocol
from mschedule_agent.protocol import Ack, Reject, Result, Started, Topics
from mschedule_agent.transport import Incoming, Publication, Transport

from . import models, targeting
from .metrics import Metrics
from .models import InvalidRequest, NotFound, RequestConflict
from .registry import Change, Registry
from .rollout import Action, Dispatch, Limits, Rollout, SendKill, TargetChanged, TaskChanged, Timing
from .states import TARGET_PROVISIONAL, TargetState, TaskState
from .store import Store, StoredTask

log = logging.getLogger(__name__)

#: Reject codes -> the target's final state (anything else: REJECTED).
REJECT_STATES = {"expired": TargetState.UNREACHABLE, "killed": TargetState.KILLED}

#: At start-up, summaries of tasks that ended this recently (seconds) are published again.
SUMMARY_REPUBLISH_WINDOW = 3600.0

#: Finished tasks whose rollouts stay loaded after a late report revised one of their
#: targets: the next late reports of a big fan-out (thousands of UNREACHABLE targets whose
#: acks were only late) find them in memory instead of reloading every target each time.
REVIVED_KEPT = 8

Resolver = Callable[[list[str], list[models.Agent], dict[str, list[str]]], list[str]]


#: Timing is a frozen dataclass: one default instance is safe to share.
DEFAULT_TIMING = Timing()


@dataclass(slots=True)
class _Active:
    """An unfinished task: its rollout, and what the agents need to run it."""

    task: models.Task
    rollout: Rollout
    encoded: tuple[float, bytes] | None = None  #: (expires_at, the task message): one encode per window fill
    codes: dict[str, int | None] = field(default_factory=dict)  #: exit codes of the stored results, for the summary
    copies: dict[str, Publication] = field(default_factory=dict)  #: the last task copy sent to each unacked target
    script_sha256: str | None = None  #: of task.script, computed at the first result that reports one


@dataclass(frozen=True, slots=True)
class _Out:
    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    copy_of: tuple[_Active, str] | None = None  #: a task copy for (task, agent): keep its Publication


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        transport: Transport,
        topics: Topics,
        registry: Registry,
        timing: Timing = DEFAULT_TIMING,
        groups: dict[str, list[str]] | None = None,
        clock: Callable[[], float] = time.time,
        resolver: Resolver = targeting.resolve,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.topics = topics
        self.registry = registry
        self.timing = timing
        self.groups = dict(groups or {})
        self.clock = clock
        self._resolve = resolver
        self.metrics = metrics or Metrics(process=False)
        self._active: dict[str, _Active] = {}
        self._depth = 0
        self._outbox: list[_Out] = []
        self._acks: list[Incoming] = []
        self._events: list[models.Event] = []
        self._snaps: dict[str, tuple[Rollout, set[str]]] = {}  #: task id -> targets to persist at commit
        self._subscribers: list[Callable[[models.Event], None]] = []
        self._deaf_at_start = 0.0  #: set by restore(): time since the last run stopped listening
        self._revived: OrderedDict[str, _Active] = OrderedDict()  #: see REVIVED_KEPT
        #: during a guarded() call: the rollouts it may change, and the targets it queued to persist
        self._guarding: dict[str, _Active] | None = None
        self._guard_targets: dict[str, set[str]] = {}
        #: HA masters (leadership.py): the leader's epoch, stamped on tasks and kills (None: one master)
        self.epoch: int | None = None
        #: False on an HA standby: submissions and kills are stored and passed to the leader, nothing is run
        self.driving = True
        #: on a standby: called with (channel, id) inside the transaction that stored a task or a kill
        self.notify: Callable[[str, str], None] | None = None

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
            with self.store.db():
                yield
                self._save_snapshots()
        except BaseException:
            self._outbox.clear()
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
        mark = (len(self._outbox), len(self._events), len(self._acks))
        self.store.savepoint_begin()
        self._guarding, self._guard_targets = {}, {}
        try:
            fn(*args)
        except Exception:
            self.store.savepoint_rollback()
            del self._outbox[mark[0] :]
            del self._events[mark[1] :]
            del self._acks[mark[2] :]
            log.exception("failed to handle %s; skipped", what)
            touched, self._guarding = self._guarding, None
            for active in touched.values():
                try:
                    self._rebuild(active)
                except Exception:  # e.g. the same bug again: leave the task to the next start
                    self._active.pop(active.task.id, None)
                    log.exception("task %s: cannot rebuild its rollout; it resumes at the next start", active.task.id)
        else:
            self.store.savepoint_release()
        finally:
            self._guarding = None

    def _guard(self, active: _Active) -> None:
        """``active``'s rollout is about to change: rebuilt from the store if the guarded call fails."""
        if self._guarding is not None:
            self._guarding[active.task.id] = active

    def _rebuild(self, active: _Active) -> None:
        """After a failed guarded call: rebuild ``active``'s rollout from the store (which the
        rollback returned to before the call), keeping in memory only the targets earlier
        messages of the batch changed and the failed call did not touch (they are persisted
        at the commit). Memory then says what the database will say."""
        task_id = active.task.id
        failed = set(active.rollout.pop_dirty()) | self._guard_targets.get(task_id, set())
        pending = self._snaps.pop(task_id, None)
        earlier = (pending[1] - failed) if pending else set()
        stored = self.store.load_stored(task_id)
        if stored is None or stored.task.state.final:
            self._active.pop(task_id, None)
            return
        memory = active.rollout.targets
        snapshots = [replace(memory[s.agent_id]) if s.agent_id in earlier else s for s in stored.snapshots]
        rollout = Rollout.restore(
            task_id, _limits(active.task), targets=snapshots, task_state=stored.task.state, reason=stored.task.reason,
            timing=self._timing(active.task),
        )  # fmt: skip
        codes = {a: row["code"] for a, row in self.store.target_states(task_id).items()}
        rebuilt = self._active[task_id] = _Active(active.task, rollout, codes=codes, copies=active.copies)
        if earlier:
            self._snaps[task_id] = (rollout, earlier)
        log.warning("task %s: rollout rebuilt from the database", task_id, extra={"task_id": task_id})
        now = self.clock()
        self._apply(rebuilt, rollout.resume(now), now)

    def after_commit_ack(self, incoming: Incoming) -> None:
        """PUBACK ``incoming`` once the current batch is committed."""
        self._acks.append(incoming)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        acks, self._acks = self._acks, []
        events, self._events = self._events, []
        for out in outbox:
            try:
                pub = self.transport.publish(
                    out.topic,
                    out.payload,
                    qos=1,
                    retain=out.retain,
                    response_topic=out.response_topic,
                    correlation_data=out.correlation_data,
                )
                if out.copy_of is not None:
                    out.copy_of[0].copies[out.copy_of[1]] = pub
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

    def publish(self, topic: str, msg: protocol.Message, **kw: Any) -> None:
        """Queue a message for publication after the current batch commits."""
        self._outbox.append(_Out(topic, protocol.encode(msg), **kw))

    def subscribe(self, callback: Callable[[models.Event], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, kind: str, task_id: str | None, data: dict[str, Any]) -> None:
        self._events.append(models.Event(kind=kind, task_id=task_id, ts=self.clock(), data=data))

    # ------------------------------------------------------------------ tasks
    def submit(self, spec: protocol.Submit) -> tuple[models.Task, list[str]]:
        """Resolve, store and start a task. Raises InvalidRequest.

        A request id seen before answers with that task instead of starting another, if
        the request is the same (else RequestConflict).
        """
        digest = spec.digest() if spec.request_id else None
        if spec.request_id:
            existing = self.store.task_for_request(spec.request_id)
            if existing is not None:
                if self.store.request_digest(spec.request_id) not in (None, digest):
                    raise RequestConflict(spec.request_id, existing)
                task = self.store.get_task(existing, with_targets=False)
                assert task is not None
                return task, list(self.store.target_states(existing))  # ids only: no output read
        try:
            agent_ids = list(dict.fromkeys(self._resolve(list(spec.targets), self.registry.agents(), self.groups)))
        except ValueError as e:  # targeting.UnknownSelector and its kin
            raise InvalidRequest(str(e), field="targets") from None
        if not agent_ids:
            raise InvalidRequest("the targets match no agent", field="targets")
        now = self.clock()
        task_id = uuid.uuid4().hex
        delivery_timeout = spec.delivery_timeout or self.timing.delivery_timeout
        task = models.Task(
            id=task_id, name=spec.name, script=spec.script_bytes, targets_spec=list(spec.targets),
            timeout=spec.timeout, parallel=spec.parallel, fail_rate=spec.fail_rate, fail_count=spec.fail_count,
            on_abort=spec.on_abort, env=dict(spec.env), cwd=spec.cwd, output_cap=spec.output_cap,
            delivery_timeout=delivery_timeout, state=TaskState.WAITING, reason="", created_at=now, finished_at=None,
            counts={TargetState.WAITING.value: len(agent_ids)}, target_count=len(agent_ids),
        )  # fmt: skip
        with self.batch():
            self.store.insert_task(task, agent_ids, spec.request_id, digest)
            self.store.add_event(now, "task_created", task_id, None, {"targets": agent_ids, "name": spec.name})
            if not self.driving:  # an HA standby: stored; the leader starts it (leadership.py)
                self._hand_over("task", task_id)
                log.info("task %s stored for %d target(s); the leader runs it", task_id, len(agent_ids), extra={"task_id": task_id})
                return task, agent_ids
            rollout = Rollout(task_id, agent_ids, _limits(task), timing=self._timing(task), now=now)
            active = self._active[task_id] = _Active(task, rollout)
            self.emit("task", task_id, {"state": TaskState.WAITING.value, "counts": _counts(active), "created": True})
            log.info("task %s created for %d target(s)", task_id, len(agent_ids), extra={"task_id": task_id})
            self._apply(active, rollout.start(now), now)
            if rollout.final:
                return self.store.get_task(task_id, with_targets=False) or task, agent_ids
            # from memory: a read of the targets' counts would sit before the commit (and the reply)
            return replace(task, state=rollout.state, reason=rollout.reason, counts=_counts(active)), agent_ids

    def kill(self, task_id: str, reason: str = "killed by user") -> models.Task:
        with self.batch():
            active = self._active.get(task_id)
            if active is None:
                if not self.store.task_exists(task_id):
                    raise NotFound("task", task_id)
                if not self.driving:  # an HA standby: recorded; the leader kills it
                    self.store.add_event(self.clock(), "kill_requested", task_id, None, {"reason": reason})
                    self.store.require_sync()
                    self._hand_over("kill", task_id)
            else:
                now = self.clock()
                self.store.add_event(now, "kill", task_id, None, {"reason": reason})
                self.store.require_sync()
                log.info("task %s: kill requested", task_id, extra={"task_id": task_id})
                self._apply(active, active.rollout.kill(now, reason=reason), now)
        task = self.store.get_task(task_id, with_targets=False)
        assert task is not None
        return task

    def restore(self) -> int:
        """Reload unfinished tasks from the store and carry their rollouts on.

        The time since the last run stopped listening (its last ``heard()``) does not count
        against any deadline: every restored clock is deferred by it before it may run.
        """
        stored = self.store.load_unfinished()
        with self.batch():
            now = self.clock()
            heard_until = self.store.heard_until()
            self._deaf_at_start = max(0.0, now - heard_until) if heard_until is not None else 0.0
            self.store.set_heard_until(now)
            if stored and self._deaf_at_start:
                log.info("deadlines deferred by %.1f s: the master was not listening since its last run", self._deaf_at_start)
            for st in stored:
                self.guarded(f"restore of task {st.task.id}", self._restore_one, st, now)
            self._announce_recent_ends(now)
        return len(stored)

    def _hand_over(self, what: str, task_id: str) -> None:
        if self.notify is not None:
            self.notify(what, task_id)

    def adopt(self, task_id: str) -> bool:
        """HA leader: drive a task another master stored (a standby's submission). False when
        it is driven already, finished, or unknown."""
        if task_id in self._active:
            return False
        stored = self.store.load_task(task_id)
        if stored is None or stored.task.state.final:
            return False
        with self.batch():
            self.guarded(f"adoption of task {task_id}", self._restore_one, stored, self.clock(), 0.0)
        return task_id in self._active

    def _announce_recent_ends(self, now: float) -> None:
        """Tell watchers again how recently finished tasks ended: a crash between the final
        commit and the summary's publication would otherwise leave no summary."""
        for task_id in self.store.finished_since(now - SUMMARY_REPUBLISH_WINDOW):
            task = self.store.get_task(task_id, with_targets=False)
            if task is None:
                continue
            data = {"state": task.state.value, "old": task.state.value, "reason": task.reason, "counts": task.counts}
            data["targets"] = self.store.target_states(task_id)
            self.emit("task", task_id, data)

    def _restore_one(self, st: StoredTask, now: float, deaf: float | None = None) -> None:
        killed = bool(self.store.events(st.task.id, kind="kill", limit=1))  # a revised abort must not pass for a kill
        rollout = Rollout.restore(
            st.task.id, _limits(st.task), targets=st.snapshots, task_state=st.task.state,
            reason=st.task.reason, timing=self._timing(st.task), killed=killed,
        )  # fmt: skip
        rollout.defer(self._deaf_at_start if deaf is None else deaf)
        codes = {a: row["code"] for a, row in self.store.target_states(st.task.id).items()}
        active = self._active[st.task.id] = _Active(st.task, rollout, codes=codes)
        log.info("task %s restored (%s)", st.task.id, st.task.state.value, extra={"task_id": st.task.id})
        self._apply(active, rollout.resume(now), now)

    def active_ids(self) -> list[str]:
        return list(self._active)

    # ------------------------------------------------------------------ time
    def heard(self, now: float) -> None:
        """The master listened (connected and caught up) until ``now``: persisted, so that
        the next start knows from when it was deaf."""
        with self.batch():
            self.store.set_heard_until(now)

    def defer(self, seconds: float) -> None:
        """The master could not hear for ``seconds``: every running clock waits as long."""
        if seconds <= 0:
            return
        now = self.clock()
        with self.batch():
            self.store.set_heard_until(now)
            for active in list(self._active.values()):
                active.rollout.defer(seconds)
                self._apply(active, [], now)
        if self._active:
            log.info("deadlines of %d task(s) deferred by %.1f s: the master could not hear", len(self._active), seconds)

    def next_deadline(self) -> float | None:
        deadlines = [d for a in self._active.values() if (d := a.rollout.next_deadline()) is not None]
        return min(deadlines, default=None)

    def tick(self) -> None:
        now = self.clock()
        due = [a for a in self._active.values() if (d := a.rollout.next_deadline()) is not None and d <= now]
        if not due:
            return
        with self.batch():
            for active in due:
                self.guarded(f"tick of task {active.task.id}", self._tick_one, active, now)

    def _tick_one(self, active: _Active, now: float) -> None:
        self._guard(active)
        self._apply(active, active.rollout.tick(now), now)

    # ------------------------------------------------------------------ agents
    def agent_changed(self, change: Change) -> None:
        now = self.clock()
        with self.batch():
            self.emit("agent", None, {"agent_id": change.agent_id, "online": change.online, "reason": change.reason})
            for active in list(self._active.values()):
                if change.agent_id not in active.rollout.targets:
                    continue
                r = active.rollout
                self._guard(active)
                if change.online:
                    actions = r.on_agent_online(change.agent_id, now)
                else:
                    actions = r.on_agent_offline(change.agent_id, now, unheard=self.registry.is_unheard(change.agent_id))
                self._apply(active, actions, now, touched={change.agent_id})

    def datacenter_heard(self, agent_ids: list[str], heard: bool) -> None:
        """A datacenter's bridge came back (``heard``) or went down: its agents' LOST clocks
        run again or stop (up to lost_max)."""
        now = self.clock()
        wanted = set(agent_ids)
        with self.batch():
            for active in list(self._active.values()):
                for agent_id in wanted & active.rollout.targets.keys():
                    self._apply(active, active.rollout.on_agent_heard(agent_id, now, heard=heard), now, touched={agent_id})

    def agent_registered(self, agent_id: str) -> None:
        """An agent (re)connected: hand it again what it has not acknowledged, now rather
        than at the next redelivery, in case its broker lost its queue (a broker restart)."""
        now = self.clock()
        with self.batch():
            for active in self._active.values():
                t = active.rollout.targets.get(agent_id)
                if t is None or not t.state.active:
                    continue
                self._guard(active)
                if t.kill_requested:
                    self._apply(active, [SendKill(agent_id)], now)
                elif not t.acked and t.expires_at is not None and now < t.expires_at:
                    self._dispatch(active, Dispatch(agent_id, t.expires_at, redeliver=True), always=True)

    def on_agent_message(self, info: protocol.TopicInfo, incoming: Incoming) -> None:
        """An ``ack``, ``started``, ``result`` or ``reject`` on ``<prefix>[/dc/DC]/results/<agent>``."""
        agent_id = info.agent_id
        assert agent_id is not None
        try:
            msg = protocol.decode_as(incoming.payload, Ack, Started, Result, Reject)
        except protocol.DecodeError as e:
            log.warning("bad message from agent %s: %s; dropped", agent_id, e, extra={"agent_id": agent_id})
            self.store.add_event(self.clock(), "bad_message", e.msg_id, agent_id, {"error": str(e), "field": e.field})
            if e.msg_type == "result" and e.msg_id:
                self._result_ack(e.msg_id, agent_id, info.dc)  # it would re-send an undecodable result forever
            return
        if msg.agent_id != agent_id:
            log.warning(
                "message for task %s names agent %s but came on %s's topic; using the topic",
                msg.id, msg.agent_id, agent_id, extra={"agent_id": agent_id, "task_id": msg.id},
            )  # fmt: skip
        now = self.clock()
        if isinstance(msg, Reject) and msg.code == "stale_epoch":  # about an old leader's message, not the target
            log.info("agent %s refused task %s from an older leader: %s", agent_id, msg.id, msg.reason)
            self.store.add_event(now, "stale_epoch", msg.id, agent_id, {"reason": msg.reason})
            return
        active = self._active.get(msg.id)
        if active is None and not (isinstance(msg, Reject) and msg.code == "expired"):  # that one only confirms
            active = self._revivable(msg.id, agent_id)
        if active is None or agent_id not in active.rollout.targets:
            self._stray(msg, agent_id, info.dc, now, active is not None)
            return
        r = active.rollout
        self._guard(active)
        active.copies.pop(agent_id, None)  # it has (or is past) the task: no more copies to watch
        if isinstance(msg, Ack):
            target = r.targets[agent_id]
            if target.state.final and not msg.duplicate:
                # e.g. UNREACHABLE: the verdict came before the ack (a slow broker or master)
                data = {"state": target.state.value, "at": msg.at, "expires_at": target.expires_at}
                self.store.add_event(now, "ack_after_verdict", msg.id, agent_id, data)
                log.warning("task %s: ack from %s after it was judged %s", msg.id, agent_id, target.state.value)
            self._apply(active, r.on_ack(agent_id, now), now, touched={agent_id})
        elif isinstance(msg, Started):
            self._apply(active, r.on_started(agent_id, now), now, touched={agent_id})
        elif isinstance(msg, Result):
            if self.store.record_result(msg.id, agent_id, msg, now):
                self.metrics.result_stored(r.targets[agent_id].dispatched_at, now)
                state, reason = self._checked_result(active, agent_id, msg)
                reason = reason or (f"agent: {msg.error}" if msg.error else "")  # e.g. why it could not start
                actions = r.on_final(agent_id, state, now, reason)
                self._apply(active, actions, now, touched={agent_id}, code=(agent_id, msg.code))
            else:
                self.metrics.duplicate_result()
            self._result_ack(msg.id, agent_id, info.dc)
        else:
            state = REJECT_STATES.get(msg.code, TargetState.REJECTED)
            log.warning(
                "agent %s rejected task %s: %s (%s)", agent_id, msg.id, msg.code, msg.reason,
                extra={"agent_id": agent_id, "task_id": msg.id},
            )  # fmt: skip
            reason = f"rejected ({msg.code}): {msg.reason}"
            self.metrics.rejected(msg.code)
            self.store.require_sync()  # the agent will not say it again
            self._apply(active, r.on_final(agent_id, state, now, reason), now, touched={agent_id})

    def _checked_result(self, active: _Active, agent_id: str, msg: Result) -> tuple[TargetState, str]:
        """The result's state, or FAILED when the agent reports it executed another script
        than the task's (its sha256 differs); an agent that reports none is not checked."""
        if msg.script_sha256 is None:
            return TargetState(msg.state), ""
        self.store.record_script_sha256(msg.id, agent_id, msg.script_sha256)
        if active.script_sha256 is None:
            active.script_sha256 = hashlib.sha256(active.task.script).hexdigest()
        if msg.script_sha256 == active.script_sha256:
            return TargetState(msg.state), ""
        log.warning(
            "task %s: agent %s executed a script with sha256 %s, not the task's %s", msg.id, agent_id,
            msg.script_sha256, active.script_sha256, extra={"task_id": msg.id, "agent_id": agent_id},
        )  # fmt: skip
        reason = (f"script mismatch: the agent executed sha256 {msg.script_sha256}, the task's script is "
                  f"{active.script_sha256} (it reported {msg.state})")  # fmt: skip
        return TargetState.FAILED, reason

    def _stray(self, msg: protocol.Message, agent_id: str, dc: str | None, now: float, task_active: bool) -> None:
        """A message for a finished or unknown task, or from an agent that is no target."""
        task_id = msg.id  # type: ignore[union-attr]
        known = task_active or self.store.task_exists(task_id)
        is_target = known and self.store.get_target(task_id, agent_id) is not None
        if isinstance(msg, Result):
            stored = is_target and self.store.record_result(task_id, agent_id, msg, now)
            if is_target and not stored:
                self.metrics.duplicate_result()
            kind = "late_result" if is_target else ("result_not_target" if known else "result_unknown_task")
            self.store.add_event(now, kind, task_id, agent_id, {"state": msg.state, "code": msg.code, "stored": stored})
            if kind != "late_result" or stored:
                log.warning("%s: task %s from agent %s", kind, task_id, agent_id, extra={"task_id": task_id})
            self._result_ack(task_id, agent_id, dc)
        else:
            kind = f"late_{msg.TYPE}" if is_target else f"{msg.TYPE}_not_target" if known else f"{msg.TYPE}_unknown_task"
            data = {"code": msg.code, "reason": msg.reason} if isinstance(msg, Reject) else {}
            self.store.add_event(now, kind, task_id, agent_id, data)
            if not is_target:
                log.warning("%s: task %s from agent %s", kind, task_id, agent_id, extra={"task_id": task_id})

    def _result_ack(self, task_id: str, agent_id: str, dc: str | None) -> None:
        self.publish(self.topics.dc(dc).control(agent_id), protocol.ResultAck(id=task_id, agent_id=agent_id))

    def _revivable(self, task_id: str, agent_id: str) -> _Active | None:
        """A finished task whose target ``agent_id`` holds a provisional verdict (UNREACHABLE,
        LOST): its rollout, loaded again so that the agent's late report can revise it."""
        target = self.store.get_target(task_id, agent_id)
        if target is None or target.state not in TARGET_PROVISIONAL:
            return None
        kept = self._revived.get(task_id)
        if kept is not None:  # only this engine changes a finished task's targets: still current
            self._revived.move_to_end(task_id)
            self._active[task_id] = kept
            return kept
        st = self.store.load_task(task_id)
        if st is None or not st.task.state.final:
            return None
        rollout = Rollout.restore(
            task_id, _limits(st.task), targets=st.snapshots, task_state=st.task.state, reason=st.task.reason,
            timing=self._timing(st.task),
        )  # fmt: skip
        codes = {a: row["code"] for a, row in self.store.target_states(task_id).items()}
        active = self._active[task_id] = _Active(st.task, rollout, codes=codes)  # _apply drops it if it stays final
        self._revived[task_id] = active
        while len(self._revived) > REVIVED_KEPT:
            self._revived.popitem(last=False)
        return active

    # ------------------------------------------------------------------ actions
    def _apply(
        self,
        active: _Active,
        actions: list[Action],
        now: float,
        touched: set[str] | None = None,
        code: tuple[str, int | None] | None = None,
    ) -> None:
        """Carry out ``actions``; ``code`` is (agent id, exit code) of the result that caused them."""
        task_id = active.task.id
        touched = set(touched or ())
        if code is not None:
            active.codes[code[0]] = code[1]  # before the actions: a TaskChanged to final reads it
        for action in actions:
            if isinstance(action, Dispatch):
                touched.add(action.agent_id)
                if action.redeliver and not self.registry.is_online(action.agent_id):
                    continue  # its persistent session queues the first copy; re-sent when it registers
                self._dispatch(active, action)
            elif isinstance(action, SendKill):
                touched.add(action.agent_id)
                topic = self._topics_for(action.agent_id).control(action.agent_id)
                reason = "rollout aborted" if active.rollout.aborted else "task killed"
                self.publish(topic, protocol.Kill(id=task_id, reason=reason, epoch=self.epoch))
            elif isinstance(action, TargetChanged):
                touched.add(action.agent_id)
                self._target_changed(active, action, now, code[1] if code and code[0] == action.agent_id else None)
            elif isinstance(action, TaskChanged):
                self._task_changed(active, action, now)
        touched.update(active.rollout.pop_dirty())
        if touched and self._guarding is not None:
            self._guarding[task_id] = active
            self._guard_targets.setdefault(task_id, set()).update(touched)
        if touched:
            pending = self._snaps.get(task_id)
            if pending is None:
                self._snaps[task_id] = (active.rollout, touched)
            else:
                pending[1].update(touched)
        if active.rollout.state.final and task_id in self._active:
            del self._active[task_id]

    def _dispatch(self, active: _Active, action: Dispatch, *, always: bool = False) -> None:
        """Queue the task message for ``action.agent_id``.

        A timed re-delivery is skipped while the previous copy has not even reached the
        broker (no PUBACK yet: it still sits in our own client's queue, as in a big
        fan-out), unless ``always`` (an agent that registers again gets its copy now).
        """
        t = active.task
        if action.redeliver and not always:
            previous = active.copies.get(action.agent_id)
            if previous is not None and not previous.wait(0):
                return
        if active.encoded is None or active.encoded[0] != action.expires_at:
            msg = protocol.Task(
                id=t.id, script=t.script, timeout=t.timeout, parallel=t.parallel, fail_rate=t.fail_rate,
                fail_count=t.fail_count, env=t.env, cwd=t.cwd, output_cap=t.output_cap, expires_at=action.expires_at,
                epoch=self.epoch,
            )  # fmt: skip
            active.encoded = (action.expires_at, protocol.encode(msg))
        topic = self._topics_for(action.agent_id).tasks(action.agent_id)
        self._outbox.append(_Out(topic, active.encoded[1], copy_of=(active, action.agent_id)))
        self.metrics.dispatched(t.created_at, self.clock(), redeliver=action.redeliver)
        if not action.redeliver:
            log.debug("task %s dispatched to %s", t.id, action.agent_id, extra={"task_id": t.id})

    def _target_changed(self, active: _Active, action: TargetChanged, now: float, code: int | None) -> None:
        task_id = active.task.id
        reason = action.reason
        if action.revised:
            reason = reason or f"revised: judged {action.old.value} before the agent's report came in"
            self.store.set_target_revised(task_id, action.agent_id, action.old, now)
            self.store.add_event(now, "revised", task_id, action.agent_id, {"old": action.old.value, "new": action.new.value})
            self.store.require_sync()
            log.warning(
                "task %s: target %s revised from %s to %s by the agent's late report", task_id, action.agent_id,
                action.old.value, action.new.value, extra={"task_id": task_id, "agent_id": action.agent_id},
            )  # fmt: skip
        if reason:
            self.store.set_target_reason(task_id, action.agent_id, reason)
        data = {"agent_id": action.agent_id, "old": action.old.value, "new": action.new.value, "reason": reason}
        if action.new.final:
            self.metrics.target_finished(action.new.value)
            t = active.rollout.targets.get(action.agent_id)
            took = now - t.dispatched_at if t is not None and t.dispatched_at is not None else None
            log.info(
                "task %s: target %s %s%s", task_id, action.agent_id, action.new.value,
                f" ({reason})" if reason else "",
                extra={"task_id": task_id, "agent_id": action.agent_id, "state": action.new.value, "duration": took},
            )  # fmt: skip
        self.emit(
            "target",
            task_id,
            {
                **data,
                "state": action.new.value,
                "code": code,
                "task_state": active.rollout.state.value,
                "counts": _counts(active),
                "revised": action.revised,
            },
        )

    def _task_changed(self, active: _Active, action: TaskChanged, now: float) -> None:
        task_id = active.task.id
        finished_at = now if action.new.final else None
        self.store.set_task_state(task_id, action.new, action.reason, finished_at)
        event = {"old": action.old.value, "new": action.new.value, "reason": action.reason}
        self.store.add_event(now, "task", task_id, None, event)
        if action.revised:
            self.store.set_task_revised(task_id, now)
            self.store.add_event(now, "revised", task_id, None, event)
        log.info(
            "task %s: %s -> %s%s", task_id, action.old.value, action.new.value,
            f" ({action.reason})" if action.reason else "",
            extra={
                "task_id": task_id, "state": action.new.value,
                "duration": now - active.task.created_at if action.new.final else None,
            },
        )  # fmt: skip
        data: dict[str, Any] = {
            "state": action.new.value, "old": action.old.value, "reason": action.reason, "counts": _counts(active),
            "revised": action.revised,
        }  # fmt: skip
        if action.new.final:
            codes = active.codes
            targets = active.rollout.targets
            data["targets"] = {a: {"state": s.state.value, "code": codes.get(a)} for a, s in targets.items()}
        self.emit("task", task_id, data)

    def _topics_for(self, agent_id: str) -> Topics:
        return self.topics.dc(self.registry.dc_of(agent_id))

    def _timing(self, task: models.Task) -> Timing:
        return replace(self.timing, delivery_timeout=task.delivery_timeout)


def _limits(task: models.Task) -> Limits:
    return Limits(parallel=task.parallel, fail_rate=task.fail_rate, fail_count=task.fail_count, on_abort=task.on_abort)


def _counts(active: _Active) -> dict[str, int]:
    return active.rollout.counts(nonzero=True)
