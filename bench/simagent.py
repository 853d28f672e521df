"""One simulated agent = the agent's real core, built as ``mschedule_agent.daemon.build`` builds
it (identity file, SQLite ledger, executor, persistent MQTT session with its last will), except
that its MQTT connection is driven by the worker's shared NetworkLoop and its host info is
read once per worker. The fleet simulator only talks to agents through these functions."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path

from mschedule_agent.agent import Agent
from mschedule_agent.config import Settings
from mschedule_agent.daemon import make_transport
from mschedule_agent.executor import Executor
from mschedule_agent.hostinfo import HostInfo, collect
from mschedule_agent.identity import load_or_create_id
from mschedule_agent.ledger import Ledger
from mschedule_agent.transport import MqttTransport, NetworkLoop

_host: HostInfo | None = None
_host_lock = threading.Lock()


def _machine() -> HostInfo:
    global _host
    with _host_lock:
        if _host is None:
            _host = collect()
        return _host


class CountingExecutor(Executor):
    """The real executor, counting the scripts it starts: the benchmark's proof that every
    task ran exactly once."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._count = itertools.count()
        self.started = 0

    def start(self, spec, *, on_started, on_done):
        self.started = next(self._count) + 1
        return super().start(spec, on_started=on_started, on_done=on_done)


def build(
    *,
    state_dir: Path,
    broker: str,
    prefix: str,
    heartbeat: float,
    max_tasks: int,
    resend: float,
    labels: dict[str, str],
    network: NetworkLoop,
    will_delay: int = 10,
) -> Agent:
    settings = Settings(
        broker=broker,
        state_dir=state_dir,
        labels=labels,
        heartbeat=heartbeat,
        max_tasks=max_tasks,
        topic_prefix=prefix,
        resend=resend,
        will_delay=will_delay,
        log_level="WARNING",
    )
    agent_id = load_or_create_id(settings.id_path)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    machine = _machine()
    host = HostInfo(hostname=f"{socket.gethostname()}-{state_dir.name}", ip=machine.ip)
    agent = Agent(
        agent_id=agent_id,
        settings=settings,
        ledger=Ledger(state_dir / "ledger.sqlite3"),
        executor=CountingExecutor(tmp_dir=state_dir / "run"),
        now=time.time,
        hostinfo=lambda: host,
        transport_factory=lambda a: make_transport(a, network=network),
    )
    agent.recover()
    return agent


def agent_id(agent: Agent) -> str:
    return agent.id


def start(agent: Agent) -> None:
    agent.transport.start(connect_timeout=60)


def wait_connected(agent: Agent, timeout: float) -> bool:
    return _transport(agent).wait_connected(timeout)


def is_connected(agent: Agent) -> bool:
    return agent.transport.is_connected()


def tick(agent: Agent, now: float) -> None:
    agent.tick(now)


def runs(agent: Agent) -> int:
    return agent.executor.started  # type: ignore[attr-defined]


def stop(agent: Agent, timeout: float = 10.0) -> None:
    """As the daemon's clean shutdown: kill running scripts, publish the offline, disconnect."""
    agent.shutdown(timeout)
    _transport(agent).stop(final=agent.farewell(), timeout=timeout)
    agent.ledger.close()


def _transport(agent: Agent) -> MqttTransport:
    t = agent.transport
    assert isinstance(t, MqttTransport)
    return t
