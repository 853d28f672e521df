"""paho-mqtt's private hooks, all in one place, checked at import.

transport.py uses paho's public API; three things it needs paho does not offer publicly,
and they live here, each with the measurement that justified it:

* :class:`InflightClient` -- paho walks every in-flight message after each PUBACK once more
  than ``max_inflight`` publishes are queued (``Client._update_inflight``): 30-40 % of the
  master's CPU while fanning out or ingesting (py-spy, bench/). The queued ids are kept in
  a deque instead (O(1)). Offered upstream as: keep ``_out_messages``' queued ids in a
  deque next to the dict, filled in ``publish()`` and rebuilt in
  ``_messages_reconnect_reset_out()``; ``_update_inflight()`` pops from it
  (docs/paho-upstream.md has the patch in that form).
* :class:`BufferedSocket` -- one 64 KiB ``recv()`` serving paho's byte-sized reads
  (``Client._sock_recv`` was 10-18 % of the master's busy time).
* :class:`PahoPublication` -- waits on ``MQTTMessageInfo._condition``: paho's
  ``wait_for_publish()`` raises while disconnected although the message stays queued.
* :func:`import_paho` with ``defer_unused`` -- keeps ``ssl``/``hashlib``/``urllib.request``
  out of an idle plain-``mqtt://`` agent (8 MB of its RSS); the agent's entry point asks for it.

:func:`internals_problems` lists every private name and signature used here; importing
this module on a paho whose internals moved raises ImportError naming each one (the test
suite checks the list is empty), instead of misbehaving at run time.
"""

from __future__ import annotations

import inspect
import socket
import sys
import types
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as _ms
    from paho.mqtt.client import MQTTMessageInfo, PayloadType, SocketLike
    from paho.mqtt.enums import MQTTErrorCode
    from paho.mqtt.properties import Properties

from .paho_import import import_paho


def _paho() -> types.ModuleType:
    return import_paho()


#: Private names this module relies on: instance attributes ``paho.Client.__init__`` sets ...
_CLIENT_ATTRS = ("_out_message_mutex", "_out_messages", "_inflight_messages", "_max_inflight_messages", "_sock")
#: ... methods we override or call, with the parameters we pass ...
_CLIENT_METHODS = {
    "_update_inflight": ["self"],
    "_messages_reconnect_reset_out": ["self"],
    "_sock_recv": ["self", "bufsize"],
    "_sock_send": ["self", "buf"],
    "_create_socket": ["self"],
    "_call_socket_register_write": ["self"],
    "_send_publish": ["self", "mid", "topic", "payload", "qos", "retain", "dup", "info", "properties"],
}
#: ... module constants, and MQTTMessageInfo's attributes.
_MODULE_NAMES = ("mqtt_ms_queued", "mqtt_ms_wait_for_puback", "mqtt_ms_wait_for_pubrec", "MQTT_ERR_SUCCESS")
_INFO_ATTRS = ("_condition", "_published")


def _assigned(cls: type) -> set[str]:
    """Attribute names a class's ``__init__`` assigns (or reads), without building one:
    a paho Client opens a socket pair when constructed."""
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    return set(code.co_names) if code is not None else set()


def internals_problems(module: Any = None) -> list[str]:
    """What this shim needs from paho and does not find (empty when all is where it was)."""
    module = module if module is not None else _paho()
    client_cls = getattr(module, "Client", None)
    info_cls = getattr(module, "MQTTMessageInfo", None)
    if client_cls is None or info_cls is None:
        return [f"paho.mqtt.client.{n}" for n in ("Client", "MQTTMessageInfo") if not hasattr(module, n)]
    problems = [f"paho.mqtt.client.{n}" for n in _MODULE_NAMES if not hasattr(module, n)]
    problems += [f"Client().{n}" for n in _CLIENT_ATTRS if n not in _assigned(client_cls)]
    for name, params in _CLIENT_METHODS.items():
        fn = getattr(client_cls, name, None)
        if fn is None:
            problems.append(f"Client.{name}()")
        elif list(inspect.signature(fn).parameters)[: len(params)] != params:
            problems.append(f"Client.{name}{inspect.signature(fn)} (expected parameters {', '.join(params)})")
    problems += [f"MQTTMessageInfo().{n}" for n in _INFO_ATTRS if n not in _assigned(info_cls)]
    return problems


def _check() -> None:
    if problems := internals_problems():
        version = getattr(sys.modules.get("paho"), "__version__", "?")
        raise ImportError(
            f"paho-mqtt {version} moved internals that mschedule_agent/paho_shim.py relies on: "
            f"{'; '.join(problems)}. Install paho-mqtt 2.2.x (pyproject pins it) or update the shim."
        )


class PahoPublication:
    __slots__ = ("_info",)

    def __init__(self, info: Any) -> None:
        self._info = info

    def wait(self, timeout: float) -> bool:
        # paho's wait_for_publish raises while disconnected although the message stays
        # queued for the reconnect; wait on its condition directly instead.
        info = self._info
        if info.rc == _paho().MQTT_ERR_QUEUE_SIZE:  # dropped, never sent: nothing to wait for
            return False
        with info._condition:
            published: bool = info._condition.wait_for(lambda: info._published, timeout)
        return published


class BufferedSocket:
    """A plain TCP socket that reads up to 64 KiB per ``recv()`` system call and serves
    paho's small reads from memory. paho reads each packet in at least three ``recv()``
    calls (the command byte, the length bytes one by one, the body): 10-18 % of the master's
    busy time went to ``Client._sock_recv`` (py-spy, bench/). ``pending()`` tells paho's
    own loop (as for TLS sockets) and :class:`NetworkLoop` that bytes are buffered, so
    neither waits in select() while a packet sits here."""

    READ_SIZE = 65536

    __slots__ = ("_sock", "_data", "_pos")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        pos, data = self._pos, self._data
        if pos < len(data):
            end = min(pos + bufsize, len(data))
            self._pos = end
            return data[pos:end]
        data = self._sock.recv(max(bufsize, self.READ_SIZE))  # BlockingIOError / b"" as before
        if len(data) <= bufsize:
            self._data, self._pos = b"", 0
            return data
        self._data, self._pos = data, bufsize
        return data[:bufsize]

    def pending(self) -> int:
        return len(self._data) - self._pos

    def send(self, buf: bytes | bytearray) -> int:
        return self._sock.send(buf)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


_check()
if not TYPE_CHECKING:  # the same module as the import above, through import_paho (the agent's deferral)
    _ms = _paho()


class InflightClient(_ms.Client):
    """paho's client minus one quadratic cost.

    Beyond ``max_inflight`` unacknowledged QoS>0 messages, paho marks new publishes
    "queued" and, after every PUBACK, ``_update_inflight`` walks ``_out_messages`` from
    the oldest to find the next queued one: it first steps over every message in flight,
    O(max_inflight) per PUBACK. A master fanning out to thousands of agents (and
    acknowledging thousands of results) lives in that state: the walk was 30-40 % of its
    CPU (py-spy, bench/). Here the queued messages' ids are kept in order in a deque, so
    the next one is found in O(1). The deque is filled where paho queues (``publish``,
    under paho's out-message lock, which is re-entrant) and rebuilt where paho re-queues
    (``_messages_reconnect_reset_out``); sending mirrors paho's ``_update_inflight``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued_mids: deque[int] = deque()

    def publish(
        self,
        topic: str,
        payload: PayloadType = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> MQTTMessageInfo:
        with self._out_message_mutex:
            info = super().publish(topic, payload, qos, retain, properties)
            if qos > 0:
                m = self._out_messages.get(info.mid)
                if m is not None and m.state == _ms.mqtt_ms_queued:
                    self._queued_mids.append(info.mid)
        return info

    def _create_socket(self) -> SocketLike:
        sock = super()._create_socket()
        return BufferedSocket(sock) if type(sock) is socket.socket else sock

    # paho's versions evaluate ``except ssl.SSLWantReadError`` on every would-block read or
    # write, which would load the deferred ssl module (see import_paho) for plain TCP.
    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if type(sock) is not BufferedSocket:
            return super()._sock_recv(bufsize)
        return sock.recv(bufsize)  # BlockingIOError / b"" / OSError: as paho's plain path

    def _sock_send(self, buf: bytes | bytearray) -> int:
        sock = self._sock
        if type(sock) is not BufferedSocket:
            return super()._sock_send(buf)
        try:
            return sock.send(buf)
        except BlockingIOError:
            self._call_socket_register_write()
            raise

    def _messages_reconnect_reset_out(self) -> None:
        with self._out_message_mutex:
            super()._messages_reconnect_reset_out()
            self._queued_mids = deque(mid for mid, m in self._out_messages.items() if m.state == _ms.mqtt_ms_queued)

    def _update_inflight(self) -> MQTTErrorCode:
        queued = self._queued_mids
        while queued and self._inflight_messages < self._max_inflight_messages:
            m = self._out_messages.get(queued.popleft())
            if m is None or m.state != _ms.mqtt_ms_queued or m.qos == 0:
                continue
            self._inflight_messages += 1
            m.state = _ms.mqtt_ms_wait_for_puback if m.qos == 1 else _ms.mqtt_ms_wait_for_pubrec
            rc = self._send_publish(m.mid, m.topic.encode("utf-8"), m.payload, m.qos, m.retain, m.dup, properties=m.properties)
            if rc != _ms.MQTT_ERR_SUCCESS:
                return rc
        return _ms.MQTT_ERR_SUCCESS
