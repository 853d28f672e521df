"""An :class:`MqttTransport`'s network I/O driven by an asyncio loop instead of a thread.

paho's own loop runs in a thread of its own. A process whose work all happens on an
asyncio loop anyway (the master) then pays for two threads handing every message across:
the GIL passed back and forth, the inbox lock, a wake-up of the loop per burst, paho's
locks taken from both sides. Measured on the master's result ingestion (bench/hotpath.py,
20,000 results): 165-180 us of master CPU per result with paho's thread, 120-145 us
with this class.

:class:`AsyncioNetwork` gives :class:`~.transport.MqttTransport` what
:class:`~.transport.NetworkLoop` gives it (socket callbacks, ``call_later``) on an
asyncio loop: the socket's reader and writer are the loop's, paho's
``loop_misc`` (keepalive pings) runs every second, and messages are handed to
``on_message`` on the loop's thread. What that asks of its user:

* Nothing on the loop may block for long: while it does, no packet is read or written
  and no keepalive ping goes out (the broker drops the connection after 1.5 keepalives).
* Connects are made off the loop: the first by whoever calls ``start()`` (a thread), and
  reconnects here in the loop's default executor, so that a broker that does not answer
  holds no one but that thread (a TCP connect may wait its full timeout).

Callbacks may come from any thread (a publish from a worker thread); they are applied
on the loop's thread, at once when already there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paho.mqtt.client as paho
    from paho.mqtt.client import SocketLike

log = logging.getLogger(__name__)


class AsyncioNetwork:
    """Drives MqttTransport connections from ``loop`` (create it on that loop's thread)."""

    #: seconds between two calls of paho's loop_misc (keepalive pings, timeouts)
    MISC_INTERVAL = 1.0
    #: packets read per turn of the loop before the inbox is drained; what is already
    #: buffered beyond it is read at the next turn (the broker meanwhile receives the
    #: PUBACKs of the batch before, and keeps sending: reading and applying overlap)
    READ_MAX = 500

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()
        self._clients: dict[int, paho.Client] = {}  #: fd -> client
        self._closed = False
        self._misc: asyncio.TimerHandle | None = loop.call_later(self.MISC_INTERVAL, self._tick)

    def close(self) -> None:
        """Stop reading and writing (on the loop's thread, once the transports stopped)."""
        self._closed = True
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        for fd in list(self._clients):
            self._drop(fd)

    # ------------------------------------------------------------ MqttTransport's calls
    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """``fn`` (a reconnect: it may block) in the loop's executor after ``delay`` s."""

        def later() -> None:
            if not self._closed:
                self._loop.run_in_executor(None, self._guarded, fn)

        self._loop.call_soon_threadsafe(self._loop.call_later, delay, later)

    def _register(self, client: paho.Client, sock: SocketLike) -> None:
        fd = sock.fileno()  # now: by the time a queued call runs, paho may have closed it
        self._here(lambda: self._add(fd, client))

    def _want_write(self, client: paho.Client, sock: SocketLike, on: bool) -> None:
        fd = sock.fileno()
        self._here(lambda: self._writer(fd, client, on))

    def _unregister(self, sock: SocketLike) -> None:
        fd = sock.fileno()
        self._here(lambda: self._drop(fd))

    # ------------------------------------------------------------ on the loop's thread
    def _here(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _add(self, fd: int, client: paho.Client) -> None:
        if fd < 0 or self._closed:
            return
        if fd in self._clients:
            self._drop(fd)
        self._clients[fd] = client
        self._loop.add_reader(fd, self._read, client)

    def _writer(self, fd: int, client: paho.Client, on: bool) -> None:
        if self._clients.get(fd) is not client:  # closed (or its fd reused) meanwhile
            return
        if on:
            self._loop.add_writer(fd, self._write, client)
        else:
            self._loop.remove_writer(fd)

    def _drop(self, fd: int) -> None:
        if self._clients.pop(fd, None) is not None:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _read(self, client: paho.Client) -> None:
        try:
            client.loop_read()
            for _ in range(self.READ_MAX):  # packets already read into the socket's buffer
                if not _pending(client):
                    return
                client.loop_read()
            if _pending(client):  # the reader is not called again for bytes already read
                self._loop.call_soon(self._read, client)
        except Exception:
            log.exception("MQTT read failed; carrying on")

    def _write(self, client: paho.Client) -> None:
        try:
            client.loop_write()
        except Exception:
            log.exception("MQTT write failed; carrying on")

    def _tick(self) -> None:
        for client in list(self._clients.values()):
            try:
                client.loop_misc()
            except Exception:
                log.exception("MQTT keepalive check failed; carrying on")
        self._misc = None if self._closed else self._loop.call_later(self.MISC_INTERVAL, self._tick)

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("MQTT network call failed; carrying on")


def _pending(client: paho.Client) -> bool:
    """Bytes of the connection already read into memory (paho_shim's BufferedSocket, TLS)."""
    sock = client.socket()
    pending = getattr(sock, "pending", None) if sock is not None else None
    return bool(pending is not None and pending())
