"""The fleet as the master knows it, kept in memory and persisted lazily.

Agents are learned from their retained status (``register`` / ``offline``, the latter
also as their MQTT last will), their heartbeats, and the edge bridges' connection state
(``$SYS/broker/connection/mschedule-bridge-<DC>/state``). An agent is *online* when its
status says so, its datacenter's bridge is not down, and it was heard from within
:data:`STALE_FACTOR` x its heartbeat interval -- and, once its datacenter's bridge has been
down, heard from since the cut began: a bridge coming back is no evidence that an agent
behind it is still there (its next heartbeat is). Every change of that verdict is returned
as a :class:`Change` for the engine to feed into the rollouts.

No I/O and no clock: every method takes ``now``. ``dirty()`` lists agents to persist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mschedule_agent import protocol

from . import models, targeting

#: An agent silent for longer than this many heartbeat intervals is offline.
STALE_FACTOR = 3.0

#: Persist an agent whose only news is a heartbeat at most this often (seconds).
LAST_SEEN_PERSIST_EVERY = 60.0

BRIDGE_CLIENT_PREFIX = "mschedule-bridge-"


@dataclass(frozen=True, slots=True)
class Change:
    agent_id: str
    online: bool
    reason: str


@dataclass(slots=True)
class _Agent:
    id: str
    hostname: str = ""
    ip: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    version: str = ""
    capacity: int = 1
    dc: str | None = None
    started_at: float | None = None
    last_seen: float | None = None
    last_heartbeat: float | None = None
    heartbeat_interval: float = 5.0
    running: list[str] = field(default_factory=list)
    status_online: bool = False
    online: bool = False
    persisted_seen: float | None = None

    def view(self) -> models.Agent:
        return models.Agent(
            id=self.id, hostname=self.hostname, ip=list(self.ip), labels=dict(self.labels), version=self.version,
            capacity=self.capacity, online=self.online, dc=self.dc, started_at=self.started_at,
            last_seen=self.last_seen, last_heartbeat=self.last_heartbeat,
            heartbeat_interval=self.heartbeat_interval, running=list(self.running),
        )  # fmt: skip


class Registry:
    def __init__(self) -> None:
        self._agents: dict[str, _Agent] = {}
        self._down_dcs: set[str] = set()
        self._cut_at: dict[str, float] = {}  #: dc -> when its bridge last went down
        self._dirty: set[str] = set()

    # ------------------------------------------------------------------ reads
    def get(self, agent_id: str) -> models.Agent | None:
        a = self._agents.get(agent_id)
        return a.view() if a else None

    def agents(self) -> list[models.Agent]:
        return [a.view() for a in self._agents.values()]

    def targetable(self) -> list[targeting.Agent]:
        """The agents as targeting reads them (id, hostname, online, dc, labels): the live
        records, not copies, for a resolution made at once (a fan-out to 100,000 agents
        copied each one's lists and labels)."""
        return list(self._agents.values())

    def dc_of(self, agent_id: str) -> str | None:
        a = self._agents.get(agent_id)
        return a.dc if a else None

    def is_online(self, agent_id: str) -> bool:
        a = self._agents.get(agent_id)
        return bool(a and a.online)

    def is_unheard(self, agent_id: str) -> bool:
        """True while the bridge of the agent's datacenter is down: the master cannot hear it."""
        a = self._agents.get(agent_id)
        return bool(a and a.dc is not None and a.dc in self._down_dcs)

    def in_datacenter(self, dc: str) -> list[str]:
        return [a.id for a in self._agents.values() if a.dc == dc]

    def __len__(self) -> int:
        return len(self._agents)

    # ------------------------------------------------------------------ persistence
    def load(self, agents: list[models.Agent], now: float) -> None:
        """Agents from the store. Those persisted online stay online for a grace of
        STALE_FACTOR intervals, time for their retained status and heartbeats to arrive."""
        for m in agents:
            a = _Agent(
                id=m.id, hostname=m.hostname, ip=list(m.ip), labels=dict(m.labels), version=m.version,
                capacity=m.capacity, dc=m.dc, started_at=m.started_at, last_seen=m.last_seen,
                last_heartbeat=m.last_heartbeat, heartbeat_interval=m.heartbeat_interval, running=list(m.running),
                status_online=m.online, online=m.online, persisted_seen=m.last_seen,
            )  # fmt: skip
            if a.online:
                a.last_seen = now
            self._agents[a.id] = a

    def take_dirty(self) -> list[models.Agent]:
        out = [self._agents[i].view() for i in self._dirty if i in self._agents]
        for i in self._dirty:
            if i in self._agents:
                self._agents[i].persisted_seen = self._agents[i].last_seen
        self._dirty.clear()
        return out

    # ------------------------------------------------------------------ events
    def on_status(self, msg: protocol.Register | protocol.Offline, dc: str | None, now: float) -> Change | None:
        a = self._agent(msg.id, dc)
        if isinstance(msg, protocol.Register):
            a.hostname, a.ip, a.labels, a.version = msg.hostname, list(msg.ip), dict(msg.labels), msg.version
            a.capacity, a.started_at, a.heartbeat_interval = msg.capacity, msg.started_at, msg.heartbeat
            a.status_online = True
            a.last_seen = now
            reason = "registered"
        else:
            a.status_online = False
            a.running = []
            reason = f"offline ({msg.reason})"
        self._dirty.add(a.id)
        return self._reassess(a, now, reason)

    def on_heartbeat(self, msg: protocol.Heartbeat, dc: str | None, now: float, *, retained: bool) -> Change | None:
        """A retained heartbeat (delivered at subscribe time) only counts as fresh as its ts."""
        a = self._agent(msg.id, dc)
        if (a.hostname, a.ip) != (msg.hostname, msg.ip):
            a.hostname, a.ip = msg.hostname, list(msg.ip)
            self._dirty.add(a.id)
        a.heartbeat_interval = msg.interval
        a.last_heartbeat = msg.ts
        a.running = list(msg.running)
        seen = min(now, msg.ts) if retained else now
        a.last_seen = seen if a.last_seen is None else max(a.last_seen, seen)
        if not retained:
            a.status_online = True  # a live heartbeat proves the agent is up
        if a.persisted_seen is None or a.last_seen - a.persisted_seen >= LAST_SEEN_PERSIST_EVERY:
            self._dirty.add(a.id)
        return self._reassess(a, now, "heartbeat")

    def on_bridge(self, client_id: str, up: bool, now: float) -> list[Change]:
        """``$SYS/broker/connection/<client_id>/state``: an edge bridge went down or up."""
        if not client_id.startswith(BRIDGE_CLIENT_PREFIX):
            return []
        dc = client_id[len(BRIDGE_CLIENT_PREFIX) :]
        if up:
            self._down_dcs.discard(dc)
        elif dc not in self._down_dcs:
            self._down_dcs.add(dc)
            self._cut_at[dc] = now
        reason = f"bridge {dc} {'up' if up else 'down'}"
        changes = [self._reassess(a, now, reason) for a in self._agents.values() if a.dc == dc]
        return [c for c in changes if c is not None]

    def sweep(self, now: float) -> list[Change]:
        """Agents whose heartbeats went stale since the last sweep."""
        changes = []
        for a in self._agents.values():
            if a.online and not self._fresh(a, now):
                changes.append(self._reassess(a, now, "heartbeat stale"))
        return [c for c in changes if c is not None]

    # ------------------------------------------------------------------ internals
    def _agent(self, agent_id: str, dc: str | None) -> _Agent:
        a = self._agents.get(agent_id)
        if a is None:
            a = self._agents[agent_id] = _Agent(id=agent_id, dc=dc)
            self._dirty.add(agent_id)
        elif a.dc != dc:
            a.dc = dc  # the agent moved to another datacenter (or was seen locally)
            self._dirty.add(agent_id)
        return a

    def _fresh(self, a: _Agent, now: float) -> bool:
        if a.last_seen is None or now - a.last_seen > STALE_FACTOR * a.heartbeat_interval:
            return False
        cut_at = self._cut_at.get(a.dc) if a.dc is not None else None
        return cut_at is None or a.last_seen > cut_at  # heard from since its bridge's last cut

    def _reassess(self, a: _Agent, now: float, reason: str) -> Change | None:
        online = a.status_online and a.dc not in self._down_dcs and self._fresh(a, now)
        if online == a.online:
            return None
        a.online = online
        self._dirty.add(a.id)
        return Change(a.id, online, reason)
