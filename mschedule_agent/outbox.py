"""The agent's outbox: results kept and re-sent until the master's ``result_ack``.

The ledger holds each result durably; :class:`Outbox` mirrors the ids awaiting their
``result_ack`` in memory (oldest first) and re-sends them on :meth:`Outbox.tick`: at
every reconnect, then every ``resend`` seconds, in bounded batches. Ids too old to keep
(``keep_ids``) are given up and pruned from the ledger on a slow timer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .config import Settings
from .ledger import Ledger

log = logging.getLogger(__name__)

#: At most this many results are re-sent per tick (a long outage must not flood paho).
RESEND_BATCH = 200
#: Seconds between two scans of the outbox (when nothing forces one sooner).
OUTBOX_SCAN = 1.0
#: A result copy not PUBACKed after this many resend intervals is sent again anyway.
STUCK_RESENDS = 12
#: Seconds between two prunes of old ids from the ledger.
PRUNE_EVERY = 3600.0


class Publish(Protocol):
    """Publish one message; returns the transport's publication handle, or None on failure."""

    def __call__(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Any: ...


class Outbox:
    """Results awaiting ``result_ack``. Shares the agent's ``lock`` (the run queue and the
    intake add to it while they hold that lock)."""

    def __init__(
        self,
        *,
        settings: Settings,
        ledger: Ledger,
        lock: threading.RLock,
        publish: Publish,
        results_topic: str,
        is_connected: Callable[[], bool],
        started_at: float,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._lock = lock
        self._publish = publish
        self._results_topic = results_topic
        self._is_connected = is_connected
        self._sent_at: dict[str, float] = {}
        self._inflight: dict[str, Any] = {}  # task id -> Publication of the last result sent
        # The outbox's ids (results awaiting result_ack), oldest first, mirrored in memory:
        # they change only here (finish, tombstone, result_ack, prune), so a tick never
        # queries the ledger to find them (the query was 9-17 % of a 2,500-agent worker).
        self._ids: dict[str, None] = dict.fromkeys(ledger.outbox_ids(limit=-1))
        self._resend_all = False
        self._next_scan = 0.0
        self._next_prune = started_at + 60.0

    def ids(self) -> list[str]:
        """Ids whose result waits for the master's result_ack, oldest first."""
        with self._lock:
            return list(self._ids)

    def add(self, task_id: str) -> None:
        with self._lock:
            self._ids[task_id] = None

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._ids.pop(task_id, None)
            self._sent_at.pop(task_id, None)
            self._inflight.pop(task_id, None)

    def resend_all(self) -> None:
        """Re-send every pending result on the next tick (after a reconnect)."""
        self._resend_all = True

    def send(self, task_id: str, data: bytes, now: float) -> None:
        self._sent_at[task_id] = now
        pub = self._publish(self._results_topic, data)
        if pub is not None:
            self._inflight[task_id] = pub

    def tick(self, now: float) -> None:
        if not self._is_connected():
            return
        if not self._resend_all and now < self._next_scan:
            return
        everything, self._resend_all = self._resend_all, False
        self._next_scan = now + min(OUTBOX_SCAN, self.settings.resend)
        with self._lock:
            if not self._ids:
                return
            pending = list(self._ids)
        sent = 0
        for task_id in pending:
            if sent >= RESEND_BATCH:
                self._resend_all = everything  # finish on the next tick
                break
            if not self._resend_due(task_id, now, everything):
                continue
            data = self.ledger.result(task_id)  # read one blob at a time: results can be MBs
            if data is not None:
                self.send(task_id, data, now)
                sent += 1
            else:  # acknowledged (or pruned) meanwhile
                self.remove(task_id)
        if sent:
            log.debug("re-sent %d result(s) awaiting result_ack", sent)

    def _resend_due(self, task_id: str, now: float, everything: bool) -> bool:
        """Due after ``resend`` seconds (or at a reconnect), unless the last copy still
        waits for its PUBACK: paho re-sends that one itself after a reconnect, and a
        slow link must not pile up copies of a large result. A copy stuck for
        STUCK_RESENDS intervals is sent again regardless."""
        age = now - self._sent_at.get(task_id, float("-inf"))
        if not everything and age < self.settings.resend:
            return False
        pub = self._inflight.get(task_id)
        return pub is None or pub.wait(0) or age >= STUCK_RESENDS * self.settings.resend

    def tick_prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        before = now - self.settings.keep_ids
        for task_id in self.ledger.unacked_before(before):
            log.warning("task_id=%s: no result_ack in %s s; giving up re-sending its result", task_id, self.settings.keep_ids)
            self.remove(task_id)
        n = self.ledger.prune(before=before)
        if n:
            log.info("forgot %d finished task id(s) older than %s s", n, self.settings.keep_ids)
