"""The master's application layer: :class:`MasterService` implements ``models.Service``
for the HTTP API and CLI, and routes every incoming MQTT message (agent statuses,
heartbeats, results, submissions, bridge states) to the registry and the engine.

Everything here runs on the master's event-loop thread.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, overload

from mschedule_agent import protocol
from mschedule_agent.protocol import Heartbeat, Offline, Register, Topics
from mschedule_agent.transport import Incoming

from . import models, targeting
from .approvals import Approvals
from .audit import AuditLog
from .engine import Engine
from .jobservice import JobService
from .liveoutput import LiveIngest, chunks_after
from .models import NotFound
from .reads import Reads
from .registry import BRIDGE_CLIENT_PREFIX, Change, Registry
from .scheduler import Scheduler
from .states import TaskState
from .store import Store
from .submissions import SubmitHandler
from .targeting import has_label

log = logging.getLogger(__name__)

_FromAgent = Register | Offline | Heartbeat  # what an agent's status and heartbeat topics carry

#: ``$SYS/broker/connection/<bridge client id>/state`` ("1" up, "0" down).
BRIDGE_STATE_PREFIX = "$SYS/broker/connection/"
BRIDGE_STATE_TOPIC = "$SYS/broker/connection/+/state"

#: Look for stale heartbeats this often (seconds): O(agents) each time.
SWEEP_INTERVAL = 1.0


class MasterService:
    def __init__(
        self,
        *,
        engine: Engine,
        registry: Registry,
        store: Store,
        topics: Topics,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 5.0,
        reads: Reads | None = None,
        portable_topics: bool = False,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.store = store
        self.topics = topics
        self.clock = clock
        self.flush_interval = flush_interval
        self.reads = reads
        self.jobs = JobService(engine=engine, clock=clock)
        self.submissions = SubmitHandler(engine, topics, submit=self.jobs.submit, portable_topics=portable_topics)
        self.schedules = Scheduler(engine=engine, jobs=self.jobs, clock=clock)
        self.live = LiveIngest(engine=engine, store=store)
        self.audit = AuditLog(store, clock=clock)
        self.approvals = Approvals(store, clock=clock)
        engine.subscribe(self._audit_outcome)
        self._last_flush = 0.0
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ models.Service
    def submit(self, spec: Any) -> models.Task:
        task, _targets = self.jobs.submit(spec)
        return task

    def kill(self, task_id: str) -> models.Task:
        before = self.store.get_task(task_id, with_targets=False)
        if before is not None and before.state.final:
            raise models.TaskEnded(task_id, before.state.value)
        with self.engine.batch():  # the kill and its audit record, or neither
            self.audit.append("kill", task_id=task_id)
            return self.engine.kill(task_id)

    def _audit_outcome(self, event: models.Event) -> None:
        """A task's end, appended to the audit trail after the commit that decided it."""
        if event.kind != "task" or not TaskState(event.data.get("state", "WAITING")).final or event.task_id is None:
            return
        self.audit.append("outcome", task_id=event.task_id, actor="master", state=event.data["state"],
                          reason=event.data.get("reason", ""), counts=event.data.get("counts", {}))  # fmt: skip

    def resolve_targets(self, selectors: list[str]) -> list[models.Agent]:
        agents = self.registry.agents()
        try:
            ids = targeting.resolve(list(selectors), agents, self.engine.groups)
        except ValueError as e:  # targeting.UnknownSelector and its kin
            raise models.InvalidRequest(str(e), field="targets") from None
        by_id = {a.id: a for a in agents}
        return [by_id[i] for i in ids]

    def approve(self, task_id: str, by: str) -> models.Task:
        with self.engine.batch():  # the approval and its audit record, or neither
            self.audit.append("plan_approve", task_id=task_id, by=by)
            self.engine.approve(task_id, by)
        return self._task_after(task_id)

    def abort(self, task_id: str, by: str) -> models.Task:
        with self.engine.batch():
            self.audit.append("plan_abort", task_id=task_id, by=by)
            self.engine.abort(task_id, by)
        return self._task_after(task_id)

    def _task_after(self, task_id: str) -> models.Task:
        """The task as the batch left it: read after the commit, when its targets' snapshots
        are saved (a read inside the batch would see them as they were)."""
        task = self.store.get_task(task_id, with_targets=False)
        if task is None:
            raise models.NotFound("task", task_id)
        return task

    def agents(
        self, *, online: bool | None = None, label: str | None = None, hostname: str | None = None
    ) -> list[models.Agent]:
        out = self.registry.agents()
        if online is not None:
            out = [a for a in out if a.online == online]
        if label is not None:
            key, _, value = label.partition("=")
            out = [a for a in out if has_label(a, key, value)]
        if hostname is not None:
            out = [a for a in out if fnmatch.fnmatchcase(a.hostname, hostname)]
        return sorted(out, key=lambda a: a.id)

    def agent(self, agent_id: str) -> models.Agent:
        a = self.registry.get(agent_id)
        if a is None:
            raise NotFound("agent", agent_id)
        return a

    def tasks(
        self, *, state: TaskState | None = None, limit: int = 50, offset: int = 0, id_prefix: str | None = None
    ) -> list[models.Task]:
        return _tasks(self.store, state=state, limit=limit, offset=offset, id_prefix=id_prefix)

    def task(self, task_id: str, *, outputs: bool = True, targets: bool = True, tail: int | None = None) -> models.Task:
        return _task(self.store, task_id, outputs=outputs, targets=targets, tail=tail)

    def output(self, task_id: str, agent_id: str) -> models.Target:
        return _output(self.store, task_id, agent_id)

    def live_chunks(self, task_id: str, agent_id: str, stream: str, offset: int) -> list[Any]:
        """The live output of one running target's stream past ``offset`` (see :mod:`.liveoutput`)."""
        return chunks_after(self.store, task_id, agent_id, stream, offset)

    async def read_off_loop(self, name: str, *args: Any, **kw: Any) -> Any:
        """``tasks``, ``task`` or ``output`` read in a reader thread (see :mod:`reads`), so a
        big read never holds up the loop that ingests MQTT; on the loop without readers."""
        fn = _READS[name]
        if self.reads is None:
            return fn(self.store, *args, **kw)
        return await self.reads.run(fn, *args, **kw)

    async def render_off_loop(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (e.g. a big reply's JSON) in a reader thread; on the loop without readers."""
        return fn() if self.reads is None else await self.reads.offload(fn)

    def subscribe(self, callback: Callable[[models.Event], None]) -> Callable[[], None]:
        return self.engine.subscribe(callback)

    # ------------------------------------------------------------------ MQTT
    def subscriptions(self) -> list[str]:
        return [*self.topics.master_subscriptions(), BRIDGE_STATE_TOPIC]

    def handle_batch(self, batch: Iterable[Incoming]) -> None:
        """Apply a batch of messages in one transaction; PUBACK them after the commit."""
        batch = list(batch)
        self.engine.metrics.received(len(batch))
        with self.engine.batch():
            reports: list[tuple[protocol.TopicInfo, Incoming]] = []  # a run of agent reports: one savepoint
            for incoming in batch:
                info = None if incoming.topic.startswith(BRIDGE_STATE_PREFIX) else self.topics.parse(incoming.topic)
                if info is not None and info.kind == "results":
                    reports.append((info, incoming))
                    continue
                self._reports(reports)
                reports = []
                self.engine.guarded(f"message on {incoming.topic}", self._routed, incoming, info)
            self._reports(reports)
            for incoming in batch:
                self.engine.after_commit_ack(incoming)

    def _reports(self, reports: list[tuple[protocol.TopicInfo, Incoming]]) -> None:
        """Agent reports (ack, started, result, reject), each isolated as if guarded alone."""
        if reports:
            self.engine.txn.guarded_each(_message_on, self.engine.on_agent_message, reports)

    def housekeeping(self, *, verdicts: bool = True) -> None:
        """Timers: rollout deadlines, stale heartbeats, lazy persistence of agents.

        ``verdicts=False`` (the daemon's inbox is behind) skips the time-based verdicts
        (UNREACHABLE, LOST, stale heartbeats): the acks and heartbeats that would prevent
        them may be waiting in the backlog.
        """
        now = self.clock()
        if not verdicts:
            if now - self._last_flush >= self.flush_interval:
                self.flush_agents()
            return
        self.engine.tick()
        if now - self._last_sweep >= SWEEP_INTERVAL:
            self._last_sweep = now
            changes = self.registry.sweep(now)
            if changes:
                with self.engine.batch():  # one transaction however many went stale
                    for change in changes:
                        self._agent_changed(change)
        if now - self._last_flush >= self.flush_interval:
            self.flush_agents()

    def flush_agents(self) -> None:
        self._last_flush = self.clock()
        dirty = self.registry.take_dirty()
        if dirty:
            with self.engine.batch():
                self.store.save_agents(dirty)

    def _routed(self, incoming: Incoming, info: protocol.TopicInfo | None) -> None:
        """``incoming`` with its parsed topic (None: a bridge state or an unexpected topic)."""
        topic = incoming.topic
        if topic.startswith(BRIDGE_STATE_PREFIX):
            self._bridge_state(incoming)
            return
        if info is None:
            log.warning("message on unexpected topic %s; ignored", topic)
        elif info.kind == "results":
            self.engine.on_agent_message(info, incoming)
        elif info.kind == "status":
            self._status(info, incoming)
        elif info.kind == "heartbeat":
            self._heartbeat(info, incoming)
        elif info.kind == "output":
            self.live.handle(info, incoming)
        elif info.kind == "submit":
            self.submissions.handle(incoming)
        else:
            log.warning("message on %s (%s) is not for the master; ignored", topic, info.kind)

    def _status(self, info: protocol.TopicInfo, incoming: Incoming) -> None:
        if not incoming.payload:
            return  # a retained status being cleared
        msg = self._decode(incoming, info, Register, Offline)
        if msg is not None:
            change = self.registry.on_status(msg, info.dc, self.clock())
            self._agent_changed(change)
            if isinstance(msg, Register):
                self.store.add_event(self.clock(), "agent_registered", None, msg.id, {"dc": info.dc})
                self.engine.agent_registered(msg.id)

    def _heartbeat(self, info: protocol.TopicInfo, incoming: Incoming) -> None:
        if not incoming.payload:
            return
        msg = self._decode(incoming, info, Heartbeat)
        if msg is not None:
            self._agent_changed(self.registry.on_heartbeat(msg, info.dc, self.clock(), retained=incoming.retain))

    @overload
    def _decode(self, incoming: Incoming, info: protocol.TopicInfo, cls: type[Heartbeat], /) -> Heartbeat | None: ...
    @overload
    def _decode(
        self, incoming: Incoming, info: protocol.TopicInfo, c1: type[Register], c2: type[Offline], /
    ) -> Register | Offline | None: ...
    def _decode(
        self, incoming: Incoming, info: protocol.TopicInfo, *classes: type[Register] | type[Offline] | type[Heartbeat]
    ) -> _FromAgent | None:
        try:
            msg = protocol.decode_as(incoming.payload, *classes)
        except protocol.DecodeError as e:
            log.warning("bad %s from agent %s: %s; ignored", info.kind, info.agent_id, e, extra={"agent_id": info.agent_id})
            return None
        if msg.id != info.agent_id:
            log.warning("%s on %s names agent %r; ignored", msg.TYPE, incoming.topic, msg.id)
            return None
        return msg

    def _bridge_state(self, incoming: Incoming) -> None:
        client_id = incoming.topic[len(BRIDGE_STATE_PREFIX) :].rsplit("/", 1)[0]
        value = incoming.payload.strip()
        if value not in (b"0", b"1"):
            log.warning("bridge state %r on %s; ignored", value[:20], incoming.topic)
            return
        up = value == b"1"
        log.info("bridge %s is %s", client_id, "up" if up else "down")
        for change in self.registry.on_bridge(client_id, up, self.clock()):
            self._agent_changed(change)
        if client_id.startswith(BRIDGE_CLIENT_PREFIX):
            dc = client_id[len(BRIDGE_CLIENT_PREFIX) :]
            self.engine.datacenter_heard(self.registry.in_datacenter(dc), up)

    def _agent_changed(self, change: Change | None) -> None:
        if change is None:
            return
        log.info(
            "agent %s is %s (%s)", change.agent_id, "online" if change.online else "offline", change.reason,
            extra={"agent_id": change.agent_id},
        )  # fmt: skip
        self.store.add_event(self.clock(), "agent_online" if change.online else "agent_offline", None, change.agent_id, {"reason": change.reason})
        self.engine.agent_changed(change)


# ------------------------------------------------------------------ reads (any thread, any store)
def _tasks(store: Store, **kw: Any) -> list[models.Task]:
    return store.list_tasks(**kw)


def _task(
    store: Store, task_id: str, *, outputs: bool = True, targets: bool = True, tail: int | None = None
) -> models.Task:
    t = store.get_task(task_id, with_targets=targets, outputs=outputs, tail=tail)
    if t is None:
        raise NotFound("task", task_id)
    return t


def _output(store: Store, task_id: str, agent_id: str) -> models.Target:
    t = store.get_target(task_id, agent_id)
    if t is None:
        raise NotFound("target", f"{task_id}/{agent_id}")
    return t


_READS: dict[str, Callable[..., Any]] = {"tasks": _tasks, "task": _task, "output": _output, "live_chunks": chunks_after}


def _message_on(args: tuple[Any, ...]) -> str:
    return f"message on {args[1].topic}"
