"""The agent's core: receive tasks, record them, run them once, report until acknowledged.

:class:`Agent` owns no thread and no clock. The daemon (or a fleet simulator) gives it
its collaborators, calls :meth:`Agent.handle` for each incoming message (on the MQTT
network thread), :meth:`Agent.on_connect` after each (re)connect, and
:meth:`Agent.tick` every few hundred milliseconds for the periodic work: heartbeats,
outbox re-sends, starting queued tasks, host-info refresh and ledger pruning. Each
script run has its own thread (see :mod:`.executor`).

It is a composition, as dramatiq's ``Worker`` is of its consumer and worker threads:
:class:`~.intake.Intake` (task and control messages), :class:`~.runqueue.RunQueue`
(queued and running tasks), :class:`~.outbox.Outbox` (results re-sent until acknowledged)
and :class:`~.presence.Presence` (registration, heartbeats, host info). They share one
lock, so that a task's ``ack`` always precedes its ``started``.

The end-to-end rules (docs/protocol.md): a task is committed to the ledger before its
PUBACK and its ``ack``; it is marked RUNNING before it starts, so it never runs twice;
its result stays in the outbox and is re-sent until the master's ``result_ack``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from .config import Settings
from .executor import Executor, new_sha256
from .fencing import EpochFence
from .gate import Gate
from .hostinfo import HostInfo
from .intake import Intake, reject_code
from .ledger import Ledger
from .livestream import LiveOutput
from .outbox import OUTBOX_SCAN, PRUNE_EVERY, RESEND_BATCH, STUCK_RESENDS, Outbox
from .presence import Presence
from .protocol import Task, Topics
from .runqueue import ORPHAN_GRACE_MAX, RunQueue
from .transport import Incoming, Transport, Will

__all__ = [
    "ORPHAN_GRACE_MAX",
    "OUTBOX_SCAN",
    "PRUNE_EVERY",
    "RESEND_BATCH",
    "STUCK_RESENDS",
    "Agent",
    "reject_code",
]

log = logging.getLogger(__name__)


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
        gate: Gate | None = None,
        fence: EpochFence | None = None,
    ) -> None:
        if (transport is None) == (transport_factory is None):
            raise TypeError("give exactly one of transport, transport_factory")
        self.id = agent_id
        self.settings = settings
        self.ledger = ledger
        self.executor = executor
        self.topics = Topics(settings.topic_prefix)
        self._now = now
        lock = threading.RLock()
        results = self.topics.results(agent_id)
        started_at = now()
        self.outbox = Outbox(
            settings=settings,
            ledger=ledger,
            lock=lock,
            publish=self._publish,
            results_topic=results,
            is_connected=self._is_connected,
            started_at=started_at,
        )
        self.runs = RunQueue(
            agent_id=agent_id,
            settings=settings,
            ledger=ledger,
            executor=executor,
            outbox=self.outbox,
            lock=lock,
            publish=self._publish,
            results_topic=results,
            now=now,
            live_output=self._live_output,
        )
        self.presence = Presence(
            agent_id=agent_id,
            settings=settings,
            topics=self.topics,
            hostinfo=hostinfo,
            publish=self._publish,
            is_connected=self._is_connected,
            load=self.runs.load,
            started_at=started_at,
        )
        self.intake = Intake(
            agent_id=agent_id,
            topics=self.topics,
            ledger=ledger,
            runs=self.runs,
            outbox=self.outbox,
            lock=lock,
            publish=self._publish,
            now=now,
            # what the tasks and control topics let through (signatures: gate.py); default: off
            gate=gate if gate is not None else Gate(agent_id=agent_id, now=now),
            fence=fence or EpochFence(),
        )
        if transport is None:
            assert transport_factory is not None  # exactly one of them was given (checked above)
            transport = transport_factory(self)
        self.transport: Transport = transport

    # ------------------------------------------------------------------ wiring helpers
    @property
    def host(self) -> HostInfo:
        return self.presence.host

    @property
    def started_at(self) -> float:
        return self.presence.started_at

    @property
    def finished(self) -> Counter[str]:
        """Tasks run to an end, by final state (for metrics)."""
        return self.runs.finished

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(t, 1) for t in self.topics.agent_subscriptions(self.id)]

    def will(self) -> Will:
        """The retained ``offline`` the broker publishes if we vanish (after the will delay)."""
        return self.presence.will()

    def farewell(self) -> list[tuple[str, bytes, bool]]:
        """The messages a clean shutdown publishes (for ``MqttTransport.stop(final=...)``)."""
        return self.presence.farewell(self._now())

    def running_ids(self) -> list[str]:
        return self.runs.running_ids()

    def queued_count(self) -> int:
        return self.runs.queued_count()

    def outbox_ids(self) -> list[str]:
        """Ids whose result waits for the master's result_ack, oldest first."""
        return self.outbox.ids()

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> None:
        """At start-up, before connecting: a task left RUNNING by a crash is reported
        INTERRUPTED (never re-run); accepted tasks are queued again, in order."""
        self.runs.recover()

    def on_connect(self, session_present: bool = False) -> None:
        """After every (re)connect: the retained registration, then the whole outbox."""
        self.presence.on_connect(session_present)
        self.outbox.resend_all()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking tasks; kill running scripts (reported KILLED, "agent shutdown") and
        wait for their results to be recorded. Queued tasks stay accepted for the restart."""
        self.runs.shutdown(timeout)

    # ------------------------------------------------------------------ work
    def tick(self, now: float) -> None:
        """Periodic work; call every 0.2-0.5 s. Never raises."""
        steps = (self.presence.tick_hostinfo, self.presence.tick_heartbeat, self.outbox.tick, self.outbox.tick_prune)
        for step in steps:
            try:
                step(now)
            except Exception:
                log.exception("agent periodic step %s failed; will retry", step.__name__)
        self.runs.start_queued()

    def handle(self, msg: Incoming) -> None:
        """One message from the broker (tasks or control topic). Never raises; always
        acknowledges, after recording what must be recorded."""
        self.intake.handle(msg)

    # ------------------------------------------------------------------ publishing
    def _is_connected(self) -> bool:
        return self.transport.is_connected()

    def _live_output(self, task: Task) -> LiveOutput | None:
        """A run's live output (docs/protocol.md ``output``), unless streaming is off."""
        if not (self.settings.stream and task.stream):
            return None
        topic = self.topics.output(self.id, task.id)
        return LiveOutput(
            task_id=task.id, agent_id=self.id, connected=self._is_connected, new_digest=new_sha256,
            publish=lambda payload, qos: self._publish(topic, payload, qos=qos),
        )  # fmt: skip

    def _publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Any:
        try:
            return self.transport.publish(topic, payload, qos=qos, retain=retain)
        except Exception:
            log.exception("publish to %s failed; the outbox/redelivery will cover it", topic)
            return None
