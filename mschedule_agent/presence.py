"""The agent's presence on the broker: its retained registration, heartbeats, host info.

:class:`Presence` publishes the retained ``register`` after every (re)connect and when
the host's name or addresses change (checked every ``hostinfo_refresh`` seconds), a
retained QoS 0 heartbeat every ``heartbeat`` seconds, and builds the last will and the
farewell that mark the agent offline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .config import Settings
from .hostinfo import HostInfo
from .outbox import Publish
from .protocol import Heartbeat, Offline, Register, Topics, encode
from .transport import Will

log = logging.getLogger(__name__)


class Presence:
    def __init__(
        self,
        *,
        agent_id: str,
        settings: Settings,
        topics: Topics,
        hostinfo: Callable[[], HostInfo],
        publish: Publish,
        is_connected: Callable[[], bool],
        load: Callable[[], tuple[list[str], int]],
        started_at: float,
    ) -> None:
        """``load`` returns the running task ids and the number queued (for heartbeats)."""
        self.id = agent_id
        self.settings = settings
        self._status_topic = topics.status(agent_id)
        self._heartbeat_topic = topics.heartbeat(agent_id)
        self.hostinfo = hostinfo
        self.host = hostinfo()
        self._publish = publish
        self._is_connected = is_connected
        self._load = load
        self.started_at = started_at
        self._online_logged = False
        self._next_heartbeat = 0.0
        self._next_hostinfo = started_at + settings.hostinfo_refresh

    def will(self) -> Will:
        """The retained ``offline`` the broker publishes if we vanish (after the will delay)."""
        payload = encode(Offline(id=self.id, reason="will"))
        return Will(self._status_topic, payload, qos=1, retain=True, delay=self.settings.will_delay)

    def farewell(self, now: float) -> list[tuple[str, bytes, bool]]:
        """The messages a clean shutdown publishes (for ``MqttTransport.stop(final=...)``)."""
        payload = encode(Offline(id=self.id, reason="shutdown", at=now))
        return [(self._status_topic, payload, True)]

    def on_connect(self, session_present: bool) -> None:
        """Publish the retained registration; the next tick sends a heartbeat."""
        self._publish(self._status_topic, self._register(), retain=True)
        self._next_heartbeat = 0.0
        if not self._online_logged:
            self._online_logged = True
            log.info("agent %s online (broker session present: %s)", self.id, session_present)

    def tick_heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat or not self._is_connected():
            return
        self._next_heartbeat = now + self.settings.heartbeat
        running, queued = self._load()
        hb = Heartbeat(
            id=self.id,
            hostname=self.host.hostname,
            ip=list(self.host.ip),
            ts=now,
            running=running,
            queued=queued,
            interval=self.settings.heartbeat,
        )
        self._publish(self._heartbeat_topic, encode(hb), qos=0, retain=True)

    def tick_hostinfo(self, now: float) -> None:
        if now < self._next_hostinfo:
            return
        self._next_hostinfo = now + self.settings.hostinfo_refresh
        fresh = self.hostinfo()
        if fresh != self.host:
            log.info("host info changed: %s %s", fresh.hostname, list(fresh.ip))
            self.host = fresh
            if self._is_connected():
                self._publish(self._status_topic, self._register(), retain=True)

    def _register(self) -> bytes:
        return encode(
            Register(
                id=self.id,
                hostname=self.host.hostname,
                ip=list(self.host.ip),
                labels=dict(self.settings.labels),
                version=self.settings.version,
                capacity=self.settings.max_tasks,
                started_at=self.started_at,
                heartbeat=self.settings.heartbeat,
            )
        )
