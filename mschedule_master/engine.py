"""The rollout engine: carries out what the pure :mod:`rollout` machines decide.

It owns the active rollouts (one per unfinished task), persists every target and task
change through the :class:`~.store.Store`, and publishes tasks, kills and result_acks
through a :class:`~mschedule_agent.transport.Transport`. Nothing is published before it
is committed: every entry point runs inside :meth:`Engine.batch`, which queues
publications, message acknowledgements and watcher events in an outbox that is flushed
only after the transaction commits. The daemon wraps a whole batch of incoming
messages in one ``batch()``.

Time comes in through ``clock`` (epoch seconds), so tests drive it by hand.

The engine is a composition: :class:`~.txn.Txn` is the transaction machinery (batches,
savepoints, the after-commit outbox, snapshots), :class:`~.ingest.Ingest` takes the
agents' reports; the engine itself drives the rollouts (submit, kill, restore, ticks,
agents coming and going) and carries out their actions.
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from mschedule_agent import protocol
from mschedule_agent.protocol import Topics
from mschedule_agent.transport import Incoming, Transport

from . import models, plan, targeting
from .actives import Active, counts, limits, plan_of
from .flow import DEFAULT_WINDOW, Backlog, Flow
from .ingest import REJECT_STATES, REVIVED_KEPT, Ingest
from .metrics import Metrics
from .models import InvalidRequest, NotFound, RequestConflict, WrongState
from .registry import Change, Registry
from .rollout import (
    MANUAL_ABORT,
    Action,
    Dispatch,
    Progress,
    Rollout,
    SendKill,
    TargetChanged,
    TargetSnapshot,
    TaskChanged,
    Timing,
)
from .sealing import Unsealed
from .states import TARGET_VALUES, TargetState, TaskState
from .store import Store, StoredTask
from .txn import Out, Txn

__all__ = ["DEFAULT_TIMING", "REJECT_STATES", "REVIVED_KEPT", "SUMMARY_REPUBLISH_WINDOW", "Engine", "Resolver"]

log = logging.getLogger(__name__)

#: At start-up, summaries of tasks that ended this recently (seconds) are published again.
SUMMARY_REPUBLISH_WINDOW = 3600.0

Resolver = Callable[[list[str], list[targeting.Agent], dict[str, list[str]]], list[str]]


#: Timing is a frozen dataclass: one default instance is safe to share.
DEFAULT_TIMING = Timing()

#: A task over this many targets with neither a plan nor an explicit parallel is refused
#: (master config ``unplanned_target_limit``; 0 = no limit).
UNPLANNED_TARGET_LIMIT = 1000


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
        sealer: Unsealed | None = None,
        unplanned_target_limit: int = UNPLANNED_TARGET_LIMIT,
        dispatch_window: int = DEFAULT_WINDOW,
    ) -> None:
        self.store = store
        self.sealer = sealer or Unsealed()  #: signs each task/kill copy for its agent (sealing.py)
        self.unplanned_target_limit = unplanned_target_limit
        self.transport = transport
        self.topics = topics
        self.registry = registry
        self.timing = timing
        self.groups = dict(groups or {})
        self.clock = clock
        self._resolve = resolver
        self.metrics = metrics or Metrics(process=False)
        self._active: dict[str, Active] = {}
        self._deaf_at_start = 0.0  #: set by restore(): time since the last run stopped listening
        #: HA masters (leadership.py): the leader's epoch, stamped on tasks and kills (None: one master)
        self.epoch: int | None = None
        #: False on an HA standby: submissions and kills are stored and passed to the leader, nothing is run
        self.driving = True
        #: on a standby: called with (channel, id) inside the transaction that stored a task or a kill
        self.notify: Callable[[str, str], None] | None = None
        self.txn = Txn(store=store, transport=transport, clock=clock, rebuild=self._rebuild)
        #: task copies: the master's own queue and the window in flight (flow.py); fed after each commit
        self.flow = Flow(window=dispatch_window)
        #: task id -> targets that flow control changed outside a transaction (a clock started, an
        #: agent found offline): persisted by the next pump()
        self._unsaved: dict[str, set[str]] = {}
        self.txn.hand_copies = self._queue_copies
        self.ingest = Ingest(
            store=store, txn=self.txn, topics=topics, metrics=self.metrics, clock=clock, active=self._active,
            apply=self._apply, timing=self._timing,
        )  # fmt: skip

    # ------------------------------------------------------------------ transactions (see txn.py)
    def batch(self) -> AbstractContextManager[None]:
        """One transaction; on the outermost exit, commit, then publish, PUBACK and notify."""
        return self.txn.batch()

    def guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` inside a batch; if it raises, undo its writes, publications and
        events only, log, and carry on with the rest of the batch."""
        self.txn.guarded(what, fn, *args)

    def after_commit_ack(self, incoming: Incoming) -> None:
        """PUBACK ``incoming`` once the current batch is committed."""
        self.txn.after_commit_ack(incoming)

    def publish(self, topic: str, msg: protocol.Message, **kw: Any) -> None:
        """Queue a message for publication after the current batch commits."""
        self.txn.publish(topic, msg, **kw)

    def subscribe(self, callback: Callable[[models.Event], None]) -> Callable[[], None]:
        return self.txn.subscribe(callback)

    def subscribe_batch(self, callback: Callable[[list[models.Event]], None]) -> None:
        """``callback(events)`` once per committed batch (see :meth:`Txn.subscribe_batch`)."""
        self.txn.subscribe_batch(callback)

    def emit(self, kind: str, task_id: str | None, data: dict[str, Any]) -> None:
        self.txn.emit(kind, task_id, data)

    def _rebuild(self, active: Active, earlier: set[str]) -> None:
        """After a failed guarded call: rebuild ``active``'s rollout from the store (which the
        rollback returned to before the call), keeping in memory only the targets ``earlier``
        messages of the batch changed and the failed call did not touch (they are persisted
        at the commit). Memory then says what the database will say."""
        task_id = active.task.id
        self.ingest.forget_revived(task_id)  # its kept rollout may hold what was rolled back
        try:
            stored = self.store.load_stored(task_id)
            if stored is None or stored.task.state.final:
                self._active.pop(task_id, None)
                return
            memory = active.rollout.targets
            snapshots = [replace(memory[s.agent_id]) if s.agent_id in earlier else s for s in stored.snapshots]
            rollout = Rollout.restore(
                task_id, limits(active.task), targets=snapshots, task_state=stored.task.state, reason="",
                timing=self._timing(active.task), plan=plan_of(active.task), progress=stored.progress, handoff=True,
            )  # fmt: skip
            codes = {a: row["code"] for a, row in self.store.target_states(task_id).items()}
            rebuilt = self._active[task_id] = Active(
                active.task, rollout, codes=codes, progress=stored.progress or Progress()
            )
            self.txn.touched(rebuilt, earlier)
            log.warning("task %s: rollout rebuilt from the database", task_id, extra={"task_id": task_id})
            now = self.clock()
            self._apply(rebuilt, rollout.resume(now), now)
        except Exception:  # e.g. the same bug again: leave the task to the next start
            self._active.pop(task_id, None)
            log.exception("task %s: cannot rebuild its rollout; it resumes at the next start", task_id)

    # ------------------------------------------------------------------ tasks
    def submit(self, spec: protocol.Submit) -> tuple[models.Task, list[str]]:
        """Resolve, store and start a task. Raises InvalidRequest.

        Without the cyclic garbage collector: a fan-out allocates some ten objects per
        target (snapshots, actions, events, copies), none garbage before the batch ends,
        and the collector would rescan the growing heap each time it grew by a quarter
        (6-8 % of an in-process 50,000-target dispatch). It runs again on return.
        """
        was = gc.isenabled()
        gc.disable()
        try:
            return self._submit(spec)
        finally:
            if was:
                gc.enable()

    def _submit(self, spec: protocol.Submit) -> tuple[models.Task, list[str]]:
        """:meth:`submit`'s work.

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
            agent_ids = list(dict.fromkeys(self._resolve(list(spec.targets), self.registry.targetable(), self.groups)))
        except ValueError as e:  # targeting.UnknownSelector and its kin
            raise InvalidRequest(str(e), field="targets") from None
        if not agent_ids:
            raise InvalidRequest("the targets match no agent", field="targets")
        task_plan = self._checked_plan(spec, len(agent_ids))
        now = self.clock()
        task_id = uuid.uuid4().hex
        delivery_timeout = spec.delivery_timeout or self.timing.delivery_timeout
        task = models.Task(
            id=task_id, name=spec.name, script=spec.script_bytes, targets_spec=list(spec.targets),
            timeout=spec.timeout, parallel=spec.parallel if spec.parallel is not None else 1, fail_rate=spec.fail_rate,
            fail_count=spec.fail_count, on_abort=spec.on_abort, env=dict(spec.env), cwd=spec.cwd,
            output_cap=spec.output_cap, delivery_timeout=delivery_timeout, state=TaskState.WAITING, reason="",
            created_at=now, finished_at=None, counts={TargetState.WAITING.value: len(agent_ids)},
            target_count=len(agent_ids), plan=task_plan.to_json() if task_plan is not None else None,
            stream=spec.stream,
        )  # fmt: skip
        with self.batch():
            if not self.driving:  # an HA standby: stored; the leader starts it (ha.py)
                self.store.insert_task(task, agent_ids, spec.request_id, digest)
                self.store.add_event(now, "task_created", task_id, None, {"targets": agent_ids, "name": spec.name})
                self._hand_over("task", task_id)
                log.info("task %s stored for %d target(s); the leader runs it", task_id, len(agent_ids), extra={"task_id": task_id})
                return task, agent_ids
            rollout = Rollout(
                task_id, agent_ids, limits(task), timing=self._timing(task), now=now, plan=task_plan, handoff=True
            )
            created = rollout.counts(nonzero=True)
            # The rollout is pure: started first, its targets are inserted as it left them, in
            # the same transaction, before anything is carried out (a fan-out's 100,000 rows
            # written once, not inserted WAITING and updated at the commit).
            actions = rollout.start(now)
            targets = rollout.targets
            self.store.insert_task(
                task, agent_ids, spec.request_id, digest, snapshots=[targets[a] for a in agent_ids]
            )
            rollout.take_dirty()  # stored just now
            self.store.add_event(now, "task_created", task_id, None, {"targets": agent_ids, "name": spec.name})
            active = self._active[task_id] = Active(task, rollout)
            self.txn.guard(active)  # a failure below: rebuilt from the store (which then has no such task)
            self.emit("task", task_id, {"state": TaskState.WAITING.value, "counts": created, "created": True})
            log.info("task %s created for %d target(s)", task_id, len(agent_ids), extra={"task_id": task_id})
            self._apply(active, actions, now, stored=True)
            if rollout.final:
                return self.store.get_task(task_id, with_targets=False) or task, agent_ids
            # from memory: a read of the targets' counts would sit before the commit (and the reply)
            return replace(task, state=rollout.state, reason=rollout.reason, counts=counts(active)), agent_ids

    def _checked_plan(self, spec: protocol.Submit, n_targets: int) -> plan.Plan | None:
        """The submission's plan, parsed; and the safety limit: a task over
        ``unplanned_target_limit`` targets needs a plan or an explicit parallel."""
        if spec.plan is not None:
            try:
                return plan.parse(spec.plan)
            except plan.PlanError as e:
                raise InvalidRequest(str(e), field="plan") from None
        limit = self.unplanned_target_limit
        if spec.parallel is None and limit and n_targets > limit:
            raise InvalidRequest(
                f"refused: {n_targets} targets, more than unplanned_target_limit {limit}, with neither a plan nor "
                "parallel; give a plan (--plan 1,pause,10%,rest or --canary 1: a few first, then the rest once "
                "approved) or say how many at once (--parallel 1 runs them one at a time)",
                field="plan",
            )
        return None

    def approve(self, task_id: str, by: str) -> models.Task:
        """Let a paused plan go on (a timed pause ends early); recorded as an ``approved``
        event with who and when. Raises NotFound, or WrongState when it is not paused."""
        with self.batch():
            active = self._active.get(task_id)
            if active is None or not active.rollout.paused:
                self._not_paused(task_id, active)
            assert active is not None
            now = self.clock()
            step = active.rollout.stages[active.rollout.stage].number
            self.store.add_event(now, "approved", task_id, None, {"by": by, "step": step})
            log.info("task %s: approved by %s at step %d", task_id, by, step, extra={"task_id": task_id})
            self._apply(active, active.rollout.approve(now, by), now)
        return self._task_now(task_id)

    def abort(self, task_id: str, by: str) -> models.Task:
        """Stop the task's rollout as a tripped limit would (on_abort says what happens to the
        running targets); it ends FAILED, "aborted by <by>". Raises NotFound, or WrongState
        when the task has ended or was already killed or aborted."""
        with self.batch():
            active = self._active.get(task_id)
            if active is None or active.rollout.aborted or active.rollout.killed:
                if not self.store.task_exists(task_id):
                    raise NotFound("task", task_id)
                raise WrongState(f"task {task_id} cannot be aborted: it has ended, or was already killed or aborted")
            now = self.clock()
            self.store.add_event(now, "abort", task_id, None, {"by": by})
            self.store.require_sync()
            log.info("task %s: aborted by %s", task_id, by, extra={"task_id": task_id})
            self._apply(active, active.rollout.abort(now, f"{MANUAL_ABORT}{by}"), now)
        return self._task_now(task_id)

    def _not_paused(self, task_id: str, active: Active | None) -> None:
        if active is None and not self.store.task_exists(task_id):
            raise NotFound("task", task_id)
        state = active.rollout.state.value if active is not None else "ended"
        raise WrongState(f"task {task_id} is not paused (it is {state}): only a paused plan can be approved")

    def _task_now(self, task_id: str) -> models.Task:
        task = self.store.get_task(task_id, with_targets=False)
        assert task is not None
        return task

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
            data: dict[str, Any] = {
                "state": task.state.value, "old": task.state.value, "reason": task.reason, "counts": task.counts
            }
            data["targets"] = self.store.target_states(task_id)
            self.emit("task", task_id, data)

    def _restore_one(self, st: StoredTask, now: float, deaf: float | None = None) -> None:
        kills = self.store.events(st.task.id, kind="kill", limit=1)  # a revised abort must not pass for a kill
        # the stored reason of an unfinished task says how it paused or resumed; a kill's is in its event
        reason = kills[0]["data"].get("reason", "") if kills else ""
        rollout = Rollout.restore(
            st.task.id, limits(st.task), targets=st.snapshots, task_state=st.task.state,
            reason=reason, timing=self._timing(st.task), killed=bool(kills), plan=plan_of(st.task), progress=st.progress,
            handoff=True,
        )  # fmt: skip
        rollout.defer(self._deaf_at_start if deaf is None else deaf)
        codes = {a: row["code"] for a, row in self.store.target_states(st.task.id).items()}
        active = self._active[st.task.id] = Active(st.task, rollout, codes=codes, progress=st.progress or Progress())
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
        self.pump()
        now = self.clock()
        due = [a for a in self._active.values() if (d := a.rollout.next_deadline()) is not None and d <= now]
        if not due:
            return
        with self.batch():
            for active in due:
                self.guarded(f"tick of task {active.task.id}", self._tick_one, active, now)

    def _tick_one(self, active: Active, now: float) -> None:
        self.txn.guard(active)
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
                self.txn.guard(active)
                if change.online:
                    actions = r.on_agent_online(change.agent_id, now)
                    if _queued(r.targets[change.agent_id]):  # its copy waited for it: send it now
                        actions = [*actions, Dispatch(change.agent_id, None)]
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
                self.txn.guard(active)
                if t.kill_requested:
                    self._apply(active, [SendKill(agent_id)], now)
                elif _queued(t):
                    self._dispatch(active, Dispatch(agent_id, None))
                elif not t.acked and t.expires_at is not None and now < t.expires_at:
                    self._dispatch(active, Dispatch(agent_id, t.expires_at, redeliver=True))

    def on_agent_message(self, info: protocol.TopicInfo, incoming: Incoming) -> None:
        """An ``ack``, ``started``, ``result`` or ``reject`` on ``<prefix>[/dc/DC]/results/<agent>``."""
        self.ingest.on_agent_message(info, incoming)

    # ------------------------------------------------------------------ actions
    def _apply(
        self,
        active: Active,
        actions: list[Action],
        now: float,
        touched: set[str] | None = None,
        code: tuple[str, int | None] | None = None,
        stored: bool = False,
    ) -> None:
        """Carry out ``actions``; ``code`` is (agent id, exit code) of the result that caused them.
        ``stored``: the targets the actions name are stored as the rollout holds them already
        (a submission inserts them so); only what changes after is persisted at the commit."""
        task_id = active.task.id
        touched = set(touched or ())
        named: set[str] = set() if stored else touched  # the targets the actions name, to persist
        if code is not None:
            active.codes[code[0]] = code[1]  # before the actions: a TaskChanged to final reads it
        for action in actions:
            if isinstance(action, Dispatch):
                named.add(action.agent_id)
                if action.redeliver and not self.registry.is_online(action.agent_id):
                    continue  # its persistent session queues the first copy; re-sent when it registers
                self._dispatch(active, action)
            elif isinstance(action, SendKill):
                named.add(action.agent_id)
                topic = self._topics_for(action.agent_id).control(action.agent_id)
                reason = "rollout aborted" if active.rollout.aborted else "task killed"
                body = protocol.encode(protocol.Kill(id=task_id, reason=reason, epoch=self.epoch))
                self.txn.send(Out(topic, self.sealer.kill(body, task_id=task_id, agent_id=action.agent_id)))
            elif isinstance(action, TargetChanged):
                named.add(action.agent_id)
                self._target_changed(active, action, now, code[1] if code and code[0] == action.agent_id else None)
            elif isinstance(action, TaskChanged):
                self._task_changed(active, action, now)
        touched.update(active.rollout.take_dirty())
        progress = active.rollout.progress
        if progress != active.progress:
            self.txn.guard(active)
            stage = active.rollout.stages[progress.stage]
            self.store.set_plan_progress(task_id, progress, stage.number)
            active.progress = progress
        self.txn.touched(active, touched)
        if active.rollout.state.final and task_id in self._active:
            del self._active[task_id]

    def _dispatch(self, active: Active, action: Dispatch) -> None:
        """Ask for a task copy to ``action.agent_id``: queued in :attr:`flow` once the batch
        commits (nothing leaves before), published as the window allows (:meth:`pump`).

        No second copy while one is queued or not yet acknowledged by the broker (as in a
        big fan-out): it would only queue behind the first (:meth:`Flow.put`).
        """
        self.txn.send_copy(active, action.agent_id)

    # ------------------------------------------------------------------ flow control (flow.py)
    def _queue_copies(self, copies: list[tuple[Active, str]]) -> None:
        """(after a commit) The batch's task copies join the master's queue; send what fits."""
        self._settle(self.clock())  # first: a copy the broker took no longer stands in for a new one
        for active, agent_id in copies:
            self.flow.put(active.task.id, agent_id)
        self.pump()

    def pump(self) -> None:
        """Start the delivery clocks of the copies the broker acknowledged, then publish
        queued copies while fewer than the window are unacknowledged. The daemon calls it
        often while :attr:`flow` is busy, and after each commit. The started clocks are
        persisted in a transaction of their own."""
        now = self.clock()
        self._settle(now)
        self._send(now)
        self._settle(now)
        if self._unsaved:
            unsaved, self._unsaved = self._unsaved, {}
            with self.batch():
                for task_id, agents in unsaved.items():
                    active = self._active.get(task_id)
                    if active is not None:
                        self._apply(active, [], now, touched=agents)

    def _settle(self, now: float) -> None:
        # per copy of a fan-out: the lookups hoisted, no empty set built for each setdefault
        actives, unsaved, online = self._active, self._unsaved, self.registry.is_online
        for task_id, agent_id in self.flow.settled(now):
            active = actives.get(task_id)
            if active is not None and online(agent_id):
                active.rollout.on_handed(agent_id, now)  # [] always
                agents = unsaved.get(task_id)
                if agents is None:
                    agents = unsaved[task_id] = set()
                agents.add(agent_id)

    def _send(self, now: float) -> None:
        debug = log.isEnabledFor(logging.DEBUG)  # once per call, not per copy
        while (key := self.flow.take()) is not None:
            self._publish_copy(key, now, debug)

    def _publish_copy(self, key: tuple[str, str], now: float, debug: bool = False) -> None:
        task_id, agent_id = key
        active = self._active.get(task_id)
        t = active.rollout.targets.get(agent_id) if active is not None else None
        if active is None or t is None or t.state is not TargetState.DISPATCHED or t.acked or t.kill_requested:
            self.flow.drop(key)  # it ended, was acked or killed meanwhile: no copy wanted
            return
        if not self.registry.is_online(agent_id):  # held back: queued again when it comes online
            self.flow.drop(key)
            active.rollout.on_agent_offline(agent_id, now, unheard=self.registry.is_unheard(agent_id))
            self._unsaved.setdefault(task_id, set()).add(agent_id)
            return
        task = active.task
        if t.expires_at is None:  # the first copy: its accept-by cannot know when the broker takes it
            expires_at = now + 2 * task.delivery_timeout + self.flow.allowance(now)
        else:
            expires_at = t.expires_at
        if active.encoded is None or active.encoded[0] != expires_at:
            msg = protocol.Task(
                id=task.id, script=task.script, timeout=task.timeout, parallel=task.parallel,
                fail_rate=task.fail_rate, fail_count=task.fail_count, env=task.env, cwd=task.cwd,
                output_cap=task.output_cap, expires_at=expires_at, stream=task.stream, epoch=self.epoch,
            )  # fmt: skip
            active.encoded = (expires_at, protocol.encode(msg))
        topic = self._topics_for(agent_id).tasks(agent_id)
        payload = self.sealer.task(
            active.encoded[1], task_id=task.id, script=task.script, agent_id=agent_id, expires_at=expires_at
        )
        try:
            publication = self.transport.publish(topic, payload, qos=1)
        except Exception:
            self.flow.drop(key)
            log.exception("publish of task %s to %s failed; its redeliveries try again until it expires", task.id,
                          agent_id, extra={"task_id": task.id, "agent_id": agent_id})  # fmt: skip
            active.rollout.on_handed(agent_id, now)  # a clock, so that it ends (UNREACHABLE) if it never goes out
            self._unsaved.setdefault(task_id, set()).add(agent_id)
            return
        self.flow.sent(key, publication, now)
        redeliver = t.expires_at is not None
        self.metrics.dispatched(task.created_at, now, redeliver=redeliver)
        if debug and not redeliver:
            log.debug("task %s sent to %s", task.id, agent_id, extra={"task_id": task.id})

    def backlog(self, task_id: str | None = None) -> Backlog:
        """How throttled delivery is: copies in the master's queue and in flight."""
        return self.flow.backlog(task_id)

    def delivery(self, task_id: str) -> dict[str, Any] | None:
        """The task's delivery as the API shows it (``delivery``), None once it has ended:
        whether flow control holds its copies back, and why."""
        active = self._active.get(task_id)
        if active is None:
            return None
        b = self.flow.backlog(task_id)
        waiting = sum(1 for t in active.rollout.targets.values() if _queued(t) and t.offline_since is not None)
        if b.task_queued and b.throttled:
            reason = (
                f"throttled: {b.task_queued} cop{'y' if b.task_queued == 1 else 'ies'} of this task wait in the "
                f"master's queue ({b.queued} in all) while {b.in_flight} await the broker's acknowledgement "
                f"(dispatch_window {b.window}); their delivery clocks start once the broker takes them"
            )
        elif waiting:
            reason = f"{waiting} cop{'y waits' if waiting == 1 else 'ies wait'} for the agent to come online"
        else:
            reason = ""
        return {
            "throttled": bool(b.task_queued) and b.throttled, "queued": b.task_queued, "in_flight": b.task_in_flight,
            "waiting_for_agent": waiting, "master_queued": b.queued, "master_in_flight": b.in_flight,
            "window": b.window, "reason": reason,
        }  # fmt: skip

    def _target_changed(self, active: Active, action: TargetChanged, now: float, code: int | None) -> None:
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
        if action.new.final:
            self.metrics.target_finished(action.new.value)
        if action.new.final and log.isEnabledFor(logging.INFO):  # one line per target: built only when logged
            t = active.rollout.targets.get(action.agent_id)
            took = now - t.dispatched_at if t is not None and t.dispatched_at is not None else None
            log.info(
                "task %s: target %s %s%s", task_id, action.agent_id, action.new.value,
                f" ({reason})" if reason else "",
                extra={"task_id": task_id, "agent_id": action.agent_id, "state": action.new.value, "duration": took},
            )  # fmt: skip
        new = TARGET_VALUES[action.new]  # one event per target of a fan-out: no Enum.value descriptor
        self.emit(
            "target",
            task_id,
            {
                "agent_id": action.agent_id,
                "old": TARGET_VALUES[action.old],
                "new": new,
                "reason": reason,
                "state": new,
                "code": code,
                "task_state": active.rollout.state.value,
                "counts": counts(active),
                "revised": action.revised,
            },
        )

    def _task_changed(self, active: Active, action: TaskChanged, now: float) -> None:
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
            "state": action.new.value, "old": action.old.value, "reason": action.reason, "counts": counts(active),
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


def _queued(t: TargetSnapshot) -> bool:
    """Dispatched, its delivery clock not started (its copy never reached the broker while
    the agent was connected), and still wanted."""
    return t.state is TargetState.DISPATCHED and not t.acked and t.expires_at is None and not t.kill_requested

