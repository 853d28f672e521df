"""The engine's intake of agent reports: ``ack``, ``started``, ``result`` and ``reject``.

:class:`Ingest` decodes each report, records results (once: a duplicate is counted and
acknowledged again), checks the script the agent says it ran, and feeds the report to
the task's rollout; the actions that follow are carried out by the engine's ``apply``.
A report for a finished task whose target holds a provisional verdict (UNREACHABLE,
LOST) revives that task's rollout so that the late report can revise the verdict.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from mschedule_agent import protocol
from mschedule_agent.protocol import Ack, Reject, Result, Started, Topics
from mschedule_agent.transport import Incoming

from . import models
from .actives import Active, limits, plan_of
from .metrics import Metrics
from .rollout import Action, Progress, Rollout, Timing
from .states import TARGET_PROVISIONAL, TargetState
from .store import Store
from .txn import Out, Txn

log = logging.getLogger(__name__)

#: Reject codes -> the target's final state (anything else: REJECTED).
REJECT_STATES = {"expired": TargetState.UNREACHABLE, "killed": TargetState.KILLED}

#: Finished tasks whose rollouts stay loaded after a late report revised one of their
#: targets: the next late reports of a big fan-out (thousands of UNREACHABLE targets whose
#: acks were only late) find them in memory instead of reloading every target each time.
REVIVED_KEPT = 8


class Apply(Protocol):
    """Carry out a rollout's actions (the engine's ``_apply``)."""

    def __call__(
        self,
        active: Active,
        actions: list[Action],
        now: float,
        touched: set[str] | None = None,
        code: tuple[str, int | None] | None = None,
    ) -> None: ...


class Ingest:
    def __init__(
        self,
        *,
        store: Store,
        txn: Txn,
        topics: Topics,
        metrics: Metrics,
        clock: Callable[[], float],
        active: dict[str, Active],
        apply: Apply,
        timing: Callable[[models.Task], Timing],
    ) -> None:
        """``active`` is the engine's own dict of unfinished tasks (shared, not copied)."""
        self.store = store
        self._txn = txn
        self.topics = topics
        self.metrics = metrics
        self._clock = clock
        self._active = active
        self._apply = apply
        self._timing = timing
        self._revived: OrderedDict[str, Active] = OrderedDict()  #: see REVIVED_KEPT

    def on_agent_message(self, info: protocol.TopicInfo, incoming: Incoming) -> None:
        """An ``ack``, ``started``, ``result`` or ``reject`` on ``<prefix>[/dc/DC]/results/<agent>``."""
        agent_id = info.agent_id
        assert agent_id is not None
        try:
            msg = protocol.decode_as(incoming.payload, Ack, Started, Result, Reject)
        except protocol.DecodeError as e:
            log.warning("bad message from agent %s: %s; dropped", agent_id, e, extra={"agent_id": agent_id})
            self.store.add_event(self._clock(), "bad_message", e.msg_id, agent_id, {"error": str(e), "field": e.field})
            if e.msg_type == "result" and e.msg_id:
                self._result_ack(e.msg_id, agent_id, info.dc)  # it would re-send an undecodable result forever
            return
        if msg.agent_id != agent_id:
            log.warning(
                "message for task %s names agent %s but came on %s's topic; using the topic",
                msg.id, msg.agent_id, agent_id, extra={"agent_id": agent_id, "task_id": msg.id},
            )  # fmt: skip
        now = self._clock()
        if isinstance(msg, Reject) and msg.code == "stale_epoch":  # about an old leader's message, not the target
            log.info("agent %s refused task %s from an older leader: %s", agent_id, msg.id, msg.reason)
            self.store.add_event(now, "stale_epoch", msg.id, agent_id, {"reason": msg.reason})
            return
        task_id = msg.id  # None only in a reject of something unreadable: no task of ours
        active = self._active.get(task_id) if task_id is not None else None
        if active is None and task_id is not None and not (isinstance(msg, Reject) and msg.code == "expired"):
            active = self._revivable(task_id, agent_id)  # (an expired reject only confirms)
        if active is None or agent_id not in active.rollout.targets:
            self._stray(msg, agent_id, info.dc, now, active is not None)
            return
        r = active.rollout
        self._txn.guard(active)
        if isinstance(msg, Ack):
            if msg.audit:  # an agent in signing mode audit: enforce would have refused this copy
                log.warning("task %s: agent %s would refuse it when enforcing: %s", msg.id, agent_id, msg.audit,
                            extra={"task_id": msg.id, "agent_id": agent_id})  # fmt: skip
                self.store.add_event(now, "signing_audit", msg.id, agent_id, {"audit": msg.audit})
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
    def _checked_result(self, active: Active, agent_id: str, msg: Result) -> tuple[TargetState, str]:
        """The result's state, or FAILED when the agent reports it executed another script
        than the task's (its sha256 differs); an agent that reports none is not checked."""
        if msg.script_sha256 is None:
            return TargetState(msg.state), ""
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

    def _stray(
        self, msg: Ack | Started | Result | Reject, agent_id: str, dc: str | None, now: float, task_active: bool
    ) -> None:
        """A message for a finished or unknown task, or from an agent that is no target."""
        task_id = msg.id  # None only in a reject of something unreadable: no task of ours
        known = task_active or (task_id is not None and self.store.task_exists(task_id))
        is_target = known and task_id is not None and self.store.get_target(task_id, agent_id) is not None
        if isinstance(msg, Result):
            task_id = msg.id  # a result always names its task
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
        # QoS 0: an agent re-sends a result until it hears this (at connect and every
        # --resend seconds), and a re-sent result is stored once and acknowledged again.
        # At QoS 1 its PUBACK was a packet in and paho's bookkeeping per result.
        self._txn.send(Out(self.topics.dc(dc).control(agent_id), protocol.encode_result_ack(task_id, agent_id), qos=0))

    def forget_revived(self, task_id: str) -> None:
        """A failed message touched ``task_id``: a late report loads it afresh from the store."""
        self._revived.pop(task_id, None)

    def _revivable(self, task_id: str, agent_id: str) -> Active | None:
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
            task_id, limits(st.task), targets=st.snapshots, task_state=st.task.state, reason=st.task.reason,
            timing=self._timing(st.task), plan=plan_of(st.task), progress=st.progress,
        )  # fmt: skip
        codes = {a: row["code"] for a, row in self.store.target_states(task_id).items()}
        active = self._active[task_id] = Active(  # _apply drops it if it stays final
            st.task, rollout, codes=codes, progress=st.progress or Progress()
        )
        self._revived[task_id] = active
        while len(self._revived) > REVIVED_KEPT:
            self._revived.popitem(last=False)
        return active

