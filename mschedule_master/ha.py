"""Highly available masters on one PostgreSQL: what a master does while it waits to lead,
and what it does when it takes over (docs/deploy.md "High availability").

* :class:`Standby`: the master's API on the database alone, without MQTT. Reads come from
  the database (agents as the leader last saved them); a submission is resolved against
  those agents and stored with its targets WAITING, a kill is recorded as
  ``kill_requested``; both are announced to the leader with ``pg_notify`` in the
  transaction that stores them, and the leader runs them (:func:`take_over_requests`,
  :meth:`~.engine.Engine.adopt`). A submission acknowledged by a standby is in the
  database: if no leader hears the notification, the next one restores it as any
  unfinished task.
* :class:`ServiceSwitch`: the one object the HTTP API holds; it passes every call to the
  standby's service, then to the leader's once this master leads (live event streams move).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mschedule_agent.protocol import Topics
from mschedule_agent.transport import Publication

from . import models
from .engine import Engine
from .registry import Registry
from .service import MasterService
from .store import Store

log = logging.getLogger(__name__)

#: pg_notify channels: a standby stored a task (payload: its id) / asked for a kill.
TASKS_CHANNEL = "mschedule_tasks"
KILLS_CHANNEL = "mschedule_kills"
#: A standby re-reads the agents the leader saved this often (seconds).
AGENTS_REFRESH = 2.0
#: The leader looks for unfinished tasks it does not drive this often (seconds): a missed notification.
SWEEP_INTERVAL = 5.0


class _Done:
    def wait(self, timeout: float) -> bool:
        return True


class Unconnected:
    """A standby's transport: it publishes nothing (it has no MQTT session; the leader does)."""

    def publish(self, topic: str, payload: bytes, **kw: Any) -> Publication:
        log.debug("standby: not publishing on %s", topic)
        return _Done()

    def is_connected(self) -> bool:
        return False


class Standby:
    """The service a master offers while another one leads."""

    def __init__(self, *, store: Store, topics: Topics, groups: dict[str, list[str]], reads: Any) -> None:
        self.store = store
        self.registry = Registry()
        self.engine = Engine(store=store, transport=Unconnected(), topics=topics, registry=self.registry, groups=groups)
        self.engine.driving = False
        channels = {"task": TASKS_CHANNEL, "kill": KILLS_CHANNEL}
        self.engine.notify = lambda what, task_id: store.notify(channels[what], task_id)
        self.service = MasterService(engine=self.engine, registry=self.registry, store=store, topics=topics, reads=reads)
        self._refreshed = 0.0
        self.refresh(time.time())

    def refresh(self, now: float) -> None:
        """The agents as the leader last saved them (for targeting and the agents API)."""
        if now - self._refreshed >= AGENTS_REFRESH:
            self._refreshed = now
            self.registry.load(self.store.load_agents(), now)


class ServiceSwitch:
    """The HTTP API's service: the standby's, then the leader's (:meth:`switch`)."""

    def __init__(self, service: MasterService) -> None:
        self._service = service
        self._subscriptions: dict[int, tuple[Callable[[models.Event], None], Callable[[], None]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    def subscribe(self, callback: Callable[[models.Event], None]) -> Callable[[], None]:
        key = id(callback)
        self._subscriptions[key] = (callback, self._service.subscribe(callback))

        def unsubscribe() -> None:
            entry = self._subscriptions.pop(key, None)
            if entry is not None:
                entry[1]()

        return unsubscribe

    def switch(self, service: MasterService) -> None:
        for key, (callback, unsubscribe) in list(self._subscriptions.items()):
            unsubscribe()
            self._subscriptions[key] = (callback, service.subscribe(callback))
        self._service = service


def take_over_requests(engine: Engine, store: Store) -> int:
    """After a takeover's restore: carry out the kills standbys recorded while nobody led."""
    n = 0
    for task_id in engine.active_ids():
        if store.events(task_id, kind="kill_requested", limit=1) and not store.events(task_id, kind="kill", limit=1):
            engine.kill(task_id)
            n += 1
    return n


def on_notification(engine: Engine, channel: str, task_id: str) -> None:
    """(leader, on its loop) A standby stored a task or asked for a kill."""
    if channel == TASKS_CHANNEL:
        if engine.adopt(task_id):
            log.info("task %s from a standby: started", task_id, extra={"task_id": task_id})
    elif channel == KILLS_CHANNEL:
        try:
            engine.kill(task_id)
        except models.NotFound:
            log.warning("a standby asked to kill task %s, which is gone", task_id)


def sweep(engine: Engine, store: Store) -> int:
    """Adopt unfinished tasks this leader does not drive (a notification that never came)."""
    active = set(engine.active_ids())
    adopted = 0
    for task_id in store.unfinished_task_ids():
        if task_id not in active and engine.adopt(task_id):
            log.warning("task %s was not announced to this leader; started now", task_id, extra={"task_id": task_id})
            adopted += 1
    return adopted
