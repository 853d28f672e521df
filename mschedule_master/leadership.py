"""Which of several masters on one PostgreSQL leads (docs/deploy.md "High availability").

* The lead is a session-level advisory lock (:data:`LOCK_KEY`) held on a dedicated
  connection: PostgreSQL releases it when that session ends, whether the master exited,
  was killed -9, or its connection died.
* A frozen (SIGSTOP) or cut-off leader's session would keep the lock for ever, so the lock
  connection runs with ``idle_session_timeout`` = the lease: the leader touches it every
  ``lease / 5`` seconds (a heartbeat thread); a leader silent for a lease loses its session
  and so the lock. The leader's own check (:meth:`Leadership.lost`) says the lead is gone
  once its last good heartbeat is a lease old, so a leader cut from the database stops by
  itself at about the moment the database lets another one take over.
* Each takeover raises ``leadership.epoch`` in the database (:meth:`try_acquire`): to the old
  epoch + 1, or to the database clock's Unix time in milliseconds when that is larger, so that a database
  restored from an old backup (or a new one) still outranks every epoch the agents saw. The
  leader stamps it on every task and kill (agents refuse older epochs: mschedule_agent/
  fencing.py) and its store checks it in every transaction (pgstore.py), so a leader that
  wakes up after being replaced can neither dispatch nor commit.
* :class:`Notifications`: a LISTEN connection on which standbys' submissions and kills
  reach the leader at once (``pg_notify`` at their commit); the leader also sweeps the
  database for unfinished tasks it does not drive every few seconds, in case one was missed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from .errors import StoreError
from .pgstore import connect

log = logging.getLogger(__name__)

#: The advisory lock's key: "mschlead" as 8 bytes.
LOCK_KEY = 0x6D73_6368_6C65_6164


class Leadership:
    """The lock connection of one master. Blocking calls: run them off the event loop."""

    def __init__(self, url: str, *, instance: str, host: str, lease: float) -> None:
        self.url = url
        self.instance = instance
        self.host = host
        self.lease = lease
        self.epoch: int | None = None  #: set while this master leads
        self._conn: psycopg.Connection[Any] | None = None
        self._last_ok = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.url, application_name=f"mschedule-master-lead {self.instance[:12]}",
                idle_session_timeout=f"{int(self.lease * 1000)}",
            )  # fmt: skip
        return self._conn

    def try_acquire(self, now: float) -> int | None:
        """Take the lead if nobody holds it: the new epoch, else None."""
        try:
            conn = self._connection()
            (got,) = conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone() or (False,)
            if not got:
                return None
            with conn.transaction():
                row = conn.execute(
                    "update leadership set epoch = greatest(epoch + 1, floor(extract(epoch from clock_timestamp()) * 1000)), "
                    "leader = %s, host = %s, since = %s where id = 1 returning epoch",
                    (self.instance, self.host, now),
                ).fetchone()
        except (psycopg.Error, StoreError) as e:
            log.warning("leadership: cannot reach the database (%s); will retry", str(e).strip())
            self._drop()
            return None
        assert row is not None
        self.epoch = int(row[0])
        self._last_ok = time.monotonic()
        self._beat = threading.Thread(target=self._heartbeat, name="mschedule-lead", daemon=True)
        self._beat.start()
        return self.epoch

    def _heartbeat(self) -> None:
        """Touch the lock session every lease/5 s while leading (bounded by stop())."""
        interval = self.lease / 5
        while not self._stop.wait(interval):
            conn = self._conn
            if conn is None:
                return
            try:
                conn.execute("select 1")
            except psycopg.Error as e:
                self._lost = f"the lock connection failed: {str(e).strip()}"
                return
            self._last_ok = time.monotonic()

    def lost(self) -> str | None:
        """While leading: None, or why the lead is (or must be taken as) gone."""
        if self.epoch is None:
            return "not leading"
        if self._lost is not None:
            return self._lost
        silent = time.monotonic() - self._last_ok
        if silent > self.lease:
            return f"no heartbeat from the database for {silent:.1f} s (lease {self.lease:g} s)"
        return None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        """Release the lead (closing the session releases the lock)."""
        self._stop.set()
        self._drop()
        if self._beat is not None:
            self._beat.join(timeout=5)


class Notifications:
    """A LISTEN connection in a thread: each ``(channel, payload)`` goes to ``deliver``."""

    def __init__(self, url: str, channels: tuple[str, ...], deliver: Callable[[str, str], None]) -> None:
        self.url = url
        self.channels = channels
        self.deliver = deliver
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mschedule-listen", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Returns once LISTEN is in effect (or after ``timeout``; the leader's sweep covers the gap)."""
        self._thread.start()
        self._ready.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self.url, application_name="mschedule-master-listen") as conn:
                    for channel in self.channels:
                        conn.execute(f"listen {channel}")
                    self._ready.set()
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            self.deliver(n.channel, n.payload)
            except Exception as e:
                self._ready.set()
                log.warning("notifications: %s; will reconnect in 1 s", str(e).strip())
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
