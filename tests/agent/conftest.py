"""Fixtures for the agent's tests: a fake clock, a controllable fake executor, and an
Agent core wired to MemoryTransport (no network, no sleeps)."""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from mschedule_agent.agent import Agent
from mschedule_agent.capture import Captured
from mschedule_agent.config import Settings
from mschedule_agent.executor import Outcome, RunSpec
from mschedule_agent.hostinfo import HostInfo
from mschedule_agent.ledger import Ledger
from mschedule_agent.protocol import TargetState, Topics, decode
from mschedule_agent.transport import Incoming, MemoryTransport

AGENT_ID = "a" * 32


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        self.t += s
        return self.t


@dataclass
class FakeRun:
    spec: RunSpec
    on_started: object
    on_done: object
    killed: tuple[str, str] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def kill(self, state=TargetState.KILLED, reason="killed on request") -> None:
        self.killed = (state, reason)

    def join(self, timeout=None) -> bool:
        if self.killed and not self.done.is_set():
            self.finish(self.killed[0], code=143, error=self.killed[1])
        return True

    def finish(self, state=TargetState.SUCCEED, code=0, out=b"", err=b"", error="") -> None:
        self.done.set()
        self.on_done(
            Outcome(state, code, None, Captured(out, len(out), False), Captured(err, len(err), False), 1.0, 2.0, 42, error)
        )


class FakeExecutor:
    """Records starts; the test finishes runs by hand (``runs[i].finish(...)``)."""

    def __init__(self) -> None:
        self.runs: list[FakeRun] = []
        self.orphans_killed: list[tuple[int, str | None, float]] = []

    def identify(self, pid: int) -> str | None:
        return f"boot:{pid}"

    def kill_orphan(self, pgid: int, identity: str | None, grace: float) -> bool:
        self.orphans_killed.append((pgid, identity, grace))
        return True

    def start(self, spec, *, on_started, on_done) -> FakeRun:
        run = FakeRun(spec, on_started, on_done)
        self.runs.append(run)
        if spec.before_exec is not None:  # the real executor calls it on the run thread
            spec.before_exec()
        on_started(42)
        return run


class Harness:
    """An Agent core plus everything around it, for unit tests."""

    def __init__(self, tmp: Path, **settings) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.transport = MemoryTransport()
        self.executor = FakeExecutor()
        self.settings = Settings(state_dir=tmp, topic_prefix="p", **settings)
        self.topics = Topics("p")
        self.acks: list[str] = []
        self.ledger = Ledger(tmp / "ledger.sqlite3")
        self.agent = self.new_agent()

    def new_agent(self) -> Agent:
        return Agent(
            agent_id=AGENT_ID,
            settings=self.settings,
            ledger=self.ledger,
            executor=self.executor,
            now=self.clock,
            hostinfo=lambda: HostInfo("host1", ("10.0.0.1",)),
            transport=self.transport,
        )

    def restart(self) -> Agent:
        """A new Agent on the same ledger (what a crash and restart look like)."""
        self.ledger.close()
        self.ledger = Ledger(self.tmp / "ledger.sqlite3")
        self.executor = FakeExecutor()
        self.agent = self.new_agent()
        self.agent.recover()
        return self.agent

    def deliver(self, topic: str, payload: bytes) -> None:
        self.agent.handle(Incoming(topic, payload, 1, False, _ack=lambda: self.acks.append(topic)))

    def send_task(self, task_id: str = "t1", script: bytes = b"true", **fields) -> None:
        self.deliver(self.topics.tasks(AGENT_ID), task_bytes(task_id, script, **fields))

    def send_control(self, type_: str, task_id: str, **fields) -> None:
        payload = {"id": task_id, **fields}
        if type_ == "result_ack":
            payload["agent_id"] = AGENT_ID
        self.deliver(self.topics.control(AGENT_ID), orjson.dumps({"type": type_, "payload": payload}))

    def sent(self) -> list:
        """Decoded messages published on the results topic since the last call."""
        return [decode(p.payload) for p in self.transport.take() if p.topic == self.topics.results(AGENT_ID)]

    def published(self):
        return self.transport.take()


def task_bytes(task_id: str = "t1", script: bytes = b"true", **fields) -> bytes:
    payload = {"id": task_id, "script": base64.b64encode(script).decode(), **fields}
    return orjson.dumps({"type": "task", "payload": payload})


@pytest.fixture
def core(tmp_path) -> Harness:
    h = Harness(tmp_path)
    yield h
    h.ledger.close()


@pytest.fixture
def core_factory(tmp_path):
    made = []

    def make(**settings) -> Harness:
        d = tmp_path / f"h{len(made)}"
        d.mkdir()
        h = Harness(d, **settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.ledger.close()
