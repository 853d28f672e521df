"""Helpers for the master's unit tests: an in-process master on MemoryTransport with a
hand-driven clock, and builders for the messages agents send."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mschedule_agent import protocol
from mschedule_agent.protocol import Topics
from mschedule_agent.transport import Incoming, MemoryTransport
from mschedule_master.engine import Engine
from mschedule_master.registry import Registry
from mschedule_master.rollout import Timing
from mschedule_master.service import MasterService
from mschedule_master.store import Store, open_store
from mschedule_master.submissions import ProgressPublisher


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    """A master core with no network: feed it Incoming messages, read what it published."""

    store: Store
    registry: Registry
    engine: Engine
    service: MasterService
    transport: MemoryTransport
    clock: Clock
    topics: Topics
    acked: list[str] = field(default_factory=list)

    def incoming(self, topic: str, msg: protocol.Message | bytes, *, retain: bool = False, **kw) -> Incoming:
        payload = msg if isinstance(msg, bytes) else protocol.encode(msg)
        return Incoming(topic, payload, 1, retain, _ack=lambda: self.acked.append(topic), **kw)

    def feed(self, *msgs: Incoming) -> None:
        self.service.handle_batch(list(msgs))

    def register(self, agent_id: str, hostname: str | None = None, dc: str | None = None, **labels: str) -> None:
        msg = protocol.Register(id=agent_id, hostname=hostname or agent_id, ip=["10.0.0.1"], labels=labels, heartbeat=1.0)
        self.feed(self.incoming(self.topics.dc(dc).status(agent_id), msg))

    def from_agent(self, agent_id: str, msg: protocol.Message, dc: str | None = None) -> None:
        self.feed(self.incoming(self.topics.dc(dc).results(agent_id), msg))

    def submit(self, targets: list[str], **kw) -> protocol.SubmitReply:
        spec = protocol.Submit(targets=targets, script_text=kw.pop("script_text", "echo hi"), **kw)
        task, ids = self.engine.submit(spec)
        return protocol.SubmitReply(ok=True, task_id=task.id, targets=ids)

    def sent(self, kind: str | None = None) -> list[tuple[str, protocol.Message]]:
        """Messages published since the last call: (topic, decoded message)."""
        out = []
        for p in self.transport.take():
            msg = protocol.decode(p.payload) if not p.topic.endswith("/master/status") else None
            if kind is None or (msg is not None and msg.TYPE == kind):
                out.append((p.topic, msg))
        return out

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.service.housekeeping()


def make_rig(path, *, timing: Timing | None = None, groups=None) -> Rig:
    clock = Clock()
    topics = Topics("test")
    transport = MemoryTransport()
    store = open_store(str(path))
    registry = Registry()
    timing = timing or Timing(delivery_timeout=10, redeliver_interval=2, ack_grace=1, lost_grace=5, kill_resend=2)
    engine = Engine(store=store, transport=transport, topics=topics, registry=registry, timing=timing, groups=groups, clock=clock)
    engine.subscribe_batch(ProgressPublisher(transport, topics).publish)
    service = MasterService(engine=engine, registry=registry, store=store, topics=topics, clock=clock)
    return Rig(store, registry, engine, service, transport, clock, topics)


@pytest.fixture
def rig(db) -> Rig:
    """On SQLite; on PostgreSQL too in a module that lists ``BACKENDS`` (tests/conftest.py)."""
    r = make_rig(db)
    yield r
    r.store.close()


@pytest.fixture
def rig_factory():
    """``rig_factory(db)``: a fresh Rig on that database (an SQLite path or a PostgreSQL URL),
    e.g. to simulate a restart."""
    return make_rig
