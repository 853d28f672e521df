"""API reads off the master's event loop: worker threads with read-only SQLite connections.

The loop thread ingests MQTT and writes the database; a read of a big task there (2,000
targets' rows) would hold up every message behind it. :class:`Reads` runs a read in one
of a few worker threads instead, each with its own read-only connection: WAL lets readers
run while the writer commits, and sqlite3 releases the GIL while SQLite works. A reader
sees what was committed when its read began (readers see no half-applied batch).

The functions handed to :meth:`Reads.run` take the thread's store as first argument and
must only read (the connection is opened ``mode=ro``: a write fails loudly).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

from .errors import StoreError
from .store import Store

T = TypeVar("T")

#: Reader threads: the master's machine has a few cores, and SQLite reads are short.
READ_THREADS = 2


class ReadOnlyStore(Store):
    """A :class:`Store` on a read-only connection: its read methods, no migration, no writes."""

    def __init__(self, path: str) -> None:  # not super().__init__: that would migrate (write)
        self.path = path
        self._depth = 0
        self._savepoint = ""
        self._sync_needed = False
        self._wal_fd = None
        self.syncs = 0
        self.on_commit = None
        try:
            self._conn = sqlite3.connect(
                f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._conn.execute("pragma busy_timeout=10000")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {path} for reading: {e}") from e


class Reads:
    """``await reads.run(fn, *args)`` runs ``fn(store, *args)`` in a reader thread."""

    def __init__(
        self, path: str, *, threads: int = READ_THREADS, opener: Callable[[], Store] | None = None
    ) -> None:
        self.path = path
        #: a reader thread's store: SQLite read-only by default; pgstore's PgStore(migrate=False) for PostgreSQL
        self._open: Callable[[], Store] = opener or (lambda: ReadOnlyStore(path))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mschedule-read")
        self._local = threading.local()
        self._opened: list[Store] = []
        self._lock = threading.Lock()

    def _store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._open()
            with self._lock:
                self._opened.append(store)
        return store

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(store, ...)`` in the calling thread on its own read-only connection."""
        return fn(self._store(), *args, **kw)

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self.call(fn, *args, **kw))

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a reader thread, without a store: e.g. rendering a big reply."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            opened, self._opened = self._opened, []
        for store in opened:
            store.close()
