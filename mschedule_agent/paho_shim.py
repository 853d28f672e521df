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
* The hot path (:class:`InflightClient`): per QoS-1 message paho builds a
  ``threading.Condition`` (its ``MQTTMessageInfo``), a ``Properties`` and a ``ReasonCode``
  per PUBACK, writes a wake-up byte to its socket pair per packet queued and one ``send()``
  per packet written: together ~40 % of the master's CPU ingesting results (py-spy, bench/).
  Here publications share one condition per client (:class:`SharedConditionInfo`), a
  plain successful PUBACK and a PUBLISH without properties are decoded inline, the wake-up
  is written only when the outgoing queue was empty, and the packets queued are written
  in one ``send()`` of up to 64 KiB (:meth:`InflightClient._packet_write`).
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
import threading
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
_CLIENT_ATTRS = (
    "_out_message_mutex", "_out_messages", "_inflight_messages", "_max_inflight_messages", "_sock", "_out_packet",
    "_thread", "_in_packet", "_manual_ack", "_protocol", "_max_queued_messages", "_in_callback_mutex", "_sockpairW",
    "_on_socket_register_write", "_userdata", "suppress_exceptions", "_msgtime_mutex", "_last_bytes_received",
)  # fmt: skip
#: ... methods we override or call, with the parameters we pass ...
_CLIENT_METHODS = {
    "_update_inflight": ["self"],
    "_messages_reconnect_reset_out": ["self"],
    "_sock_recv": ["self", "bufsize"],
    "_sock_send": ["self", "buf"],
    "_create_socket": ["self"],
    "_call_socket_register_write": ["self"],
    "_send_publish": ["self", "mid", "topic", "payload", "qos", "retain", "dup", "info", "properties"],
    "_packet_queue": ["self", "command", "packet", "mid", "qos", "info"],
    "_packet_write": ["self"],
    "_handle_pubackcomp": ["self", "cmd"],
    "_packet_read": ["self"],
    "_packet_handle": ["self"],
    "_handle_publish": ["self"],
    "_handle_on_message": ["self", "message"],
    "_send_puback": ["self", "mid"],
    "_easy_log": ["self", "level", "fmt"],
    "_mid_generate": ["self"],
    "_raise_for_invalid_topic": ["topic"],
}
#: ... module constants, and MQTTMessageInfo's attributes.
_MODULE_NAMES = (
    "mqtt_ms_queued", "mqtt_ms_wait_for_puback", "mqtt_ms_wait_for_pubrec", "mqtt_ms_publish", "mqtt_ms_invalid",
    "MQTT_ERR_SUCCESS", "MQTT_ERR_NO_CONN", "MQTT_ERR_QUEUE_SIZE", "MQTTv5", "PUBLISH", "DISCONNECT", "sockpair_data",
    "MQTTMessage", "time_func", "MQTT_LOG_ERR", "MQTT_ERR_PROTOCOL", "MalformedPacket",
)  # fmt: skip
_INFO_ATTRS = ("_condition", "_published", "_iterpos", "mid", "rc")
#: MQTTMessage's slots, each set by :func:`_message` (paho's __init__ would build a Condition).
_MESSAGE_SLOTS = ("_topic", "dup", "info", "mid", "payload", "properties", "qos", "retain", "state", "timestamp")


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
    message_cls = getattr(module, "MQTTMessage", None)
    slots = set(getattr(message_cls, "__slots__", ())) if message_cls is not None else set(_MESSAGE_SLOTS)
    problems += [f"MQTTMessage.{n}" for n in _MESSAGE_SLOTS if n not in slots]
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


class SharedConditionInfo(_ms.MQTTMessageInfo):
    """paho's ``MQTTMessageInfo`` waiting on its client's one condition instead of a
    ``threading.Condition`` of its own: building that condition was ~8 % of the master's CPU
    (one per message sent and received). Completion wakes every waiter, each of which
    re-checks its own ``_published`` (paho's ``wait_for_publish`` and
    :meth:`PahoPublication.wait` both do)."""

    __slots__ = ()

    def __init__(self, mid: int, condition: threading.Condition) -> None:  # no super(): it builds a Condition
        self.mid = mid
        self._published = False
        self._condition = condition
        self.rc = _ms.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        with self._condition:
            self._published = True
            self._condition.notify_all()


def _message(mid: int, topic: bytes, payload: bytes, qos: int, retain: bool, info: SharedConditionInfo) -> Any:
    """A paho ``MQTTMessage`` whose info is ``info`` (its __init__ would build a Condition)."""
    m = _ms.MQTTMessage.__new__(_ms.MQTTMessage)
    m.timestamp = _ms.time_func()
    m.state = _ms.mqtt_ms_invalid
    m.dup = False
    m.mid = mid
    m._topic = topic
    m.payload = payload
    m.qos = qos
    m.retain = retain
    m.info = info
    m.properties = None
    return m


#: Packets :meth:`InflightClient._packet_read` takes whole from the buffer: PUBLISH, PUBACK.
_FAST_READ = frozenset({0x30, 0x40})
_MalformedPacket: type[Exception] = getattr(_ms, "MalformedPacket")  # noqa: B009  (paho does not re-export it)

#: The most bytes :meth:`InflightClient._packet_write` joins into one ``send()``.
WRITE_JOIN_BYTES = 65536
#: The most bytes of the queue's head it regroups per call.
WRITE_PLAN_BYTES = 1 << 20
_PLAIN = 0x40  #: the command given to joined packets: a PUBACK's, which paho does nothing after writing


def _joinable(p: Any, qos0: bool) -> bool:
    """A queued packet not yet partly written that paho does nothing for after writing it, or
    (``qos0``: ``on_publish`` reports only failures) a QoS-0 PUBLISH, whose info paho marks
    published and for which it calls ``on_publish`` with success."""
    command = p["command"] & 0xF0
    return not p["pos"] and command != _ms.DISCONNECT and (qos0 or not (command == _ms.PUBLISH and p["qos"] == 0))


class _Infos:
    """The infos of the QoS-0 PUBLISHes in a joined entry: marked published together once
    the entry is written, as paho marks each when it writes it alone."""

    __slots__ = ("infos",)

    def __init__(self, infos: list[Any]) -> None:
        self.infos = infos

    def _set_as_published(self) -> None:
        for info in self.infos:
            info._set_as_published()


def _joined(run: list[Any], size: int) -> Any:
    """One queue entry for ``run`` (itself when alone). With QoS-0 PUBLISHes in it, the entry
    is a QoS-0 PUBLISH for paho (which then calls ``on_publish`` once, with mid 0, and marks
    the infos published); otherwise a PUBACK, after which paho does nothing."""
    if len(run) == 1:
        return run[0]
    infos = [p["info"] for p in run if p["command"] & 0xF0 == _ms.PUBLISH and p["qos"] == 0 and p["info"] is not None]
    command, qos, info = (_ms.PUBLISH, 0, _Infos(infos)) if infos else (_PLAIN, 1, None)
    return {"command": command, "mid": 0, "qos": qos, "pos": 0, "to_process": size,
            "packet": b"".join([p["packet"] for p in run]), "info": info}  # fmt: skip


class InflightClient(_ms.Client):
    """paho's client minus one quadratic cost and most of its per-message overhead.

    Beyond ``max_inflight`` unacknowledged QoS>0 messages, paho marks new publishes
    "queued" and, after every PUBACK, ``_update_inflight`` walks ``_out_messages`` from
    the oldest to find the next queued one: it first steps over every message in flight,
    O(max_inflight) per PUBACK. A master fanning out to thousands of agents (and
    acknowledging thousands of results) lives in that state: the walk was 30-40 % of its
    CPU (py-spy, bench/). Here the queued messages' ids are kept in order in a deque, so
    the next one is found in O(1). The deque is filled where paho queues (``publish``,
    under paho's out-message lock, which is re-entrant) and rebuilt where paho re-queues
    (``_messages_reconnect_reset_out``); sending mirrors paho's ``_update_inflight``.

    The per-message costs (see the module docstring) are cut where paho's own code would
    do the same thing more slowly; anything unusual (QoS 2, properties, a PUBACK with a
    reason code of failure or with properties) takes paho's own path. With
    ``publish_callbacks=False`` ``on_publish`` is called only for a PUBACK reporting a
    failure (the transport logs those and nothing else).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued_mids: deque[int] = deque()
        self._published_condition = threading.Condition()
        self.publish_callbacks = True
        self._filtered_callbacks = False  #: message_callback_add() was called: paho's matching applies

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered_callbacks = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: Any) -> None:
        """paho's, minus matching the topic against per-topic callbacks when there are none
        (paho walks its matcher for every message: 9 % of the master's CPU ingesting)."""
        if self._filtered_callbacks:
            super()._handle_on_message(message)
            return
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(_ms.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def publish(
        self,
        topic: str,
        payload: PayloadType = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> MQTTMessageInfo:
        if type(payload) is not bytes or not topic or qos not in (0, 1) or properties is not None:
            return self._paho_publish(topic, payload, qos, retain, properties)
        topic_bytes = topic.encode("utf-8")
        self._raise_for_invalid_topic(topic_bytes)
        if len(payload) > 268435455:
            raise ValueError("Payload too large.")
        mid = self._mid_generate()
        info = SharedConditionInfo(mid, self._published_condition)
        if qos == 0:
            info.rc = self._send_publish(mid, topic_bytes, payload, 0, retain, False, info, None)
            return info
        message = _message(mid, topic_bytes, payload, qos, retain, info)
        with self._out_message_mutex:  # as paho's publish() from here on
            if (self._max_queued_messages > 0 and len(self._out_messages) >= self._max_queued_messages) or (
                mid in self._out_messages
            ):
                info.rc = _ms.MQTT_ERR_QUEUE_SIZE
                return info
            self._out_messages[mid] = message
            if self._max_inflight_messages == 0 or self._inflight_messages < self._max_inflight_messages:
                self._inflight_messages += 1
                message.state = _ms.mqtt_ms_wait_for_puback
                rc = self._send_publish(mid, topic_bytes, payload, qos, retain, False, info, None)
                if rc == _ms.MQTT_ERR_NO_CONN:  # sent again after the reconnect
                    self._inflight_messages -= 1
                    message.state = _ms.mqtt_ms_publish
                info.rc = rc
            else:
                message.state = _ms.mqtt_ms_queued
                self._queued_mids.append(mid)
        return info

    def _paho_publish(
        self, topic: str, payload: PayloadType, qos: int, retain: bool, properties: Properties | None
    ) -> MQTTMessageInfo:
        with self._out_message_mutex:
            info = super().publish(topic, payload, qos, retain, properties)
            if qos > 0:
                m = self._out_messages.get(info.mid)
                if m is not None and m.state == _ms.mqtt_ms_queued:
                    self._queued_mids.append(info.mid)
        return info

    # ------------------------------------------------------------------ receiving
    def _handle_publish(self) -> MQTTErrorCode:
        """A QoS 0/1 MQTT 5 PUBLISH without properties, decoded here; others by paho."""
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if qos > 1 or self._protocol != _ms.MQTTv5 or len(packet) < 2:
            return super()._handle_publish()
        end = topic_end = 2 + ((packet[0] << 8) | packet[1])
        mid = 0
        if qos:
            if end + 2 > len(packet):
                return super()._handle_publish()  # paho raises MalformedPacket
            mid = (packet[end] << 8) | packet[end + 1]
            end += 2
        if end >= len(packet) or packet[end] != 0:  # properties (or a malformed packet): paho's path
            return super()._handle_publish()
        info = SharedConditionInfo(mid, self._published_condition)
        message = _message(mid, bytes(packet[2:topic_end]), bytes(packet[end + 1 :]), qos, bool(header & 0x01), info)
        message.dup = bool(header & 0x08)
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return _ms.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        """A PUBACK saying success without properties, handled here; others by paho."""
        packet = self._in_packet["packet"]
        n = len(packet)
        if (
            cmd != "PUBACK"
            or self.publish_callbacks
            or not (n == 2 or (n == 3 and packet[2] < 0x80) or (n == 4 and packet[2] < 0x80 and packet[3] == 0))
        ):
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:  # as paho's _do_on_publish, without the callback
            msg = self._out_messages.pop(mid, None)
            if msg is None:
                return _ms.MQTT_ERR_SUCCESS
            msg.info._set_as_published()
            if msg.qos > 0:
                self._inflight_messages -= 1
                if self._max_inflight_messages > 0:
                    return self._update_inflight()
        return _ms.MQTT_ERR_SUCCESS

    # ------------------------------------------------------------------ sending
    def _send_publish(
        self,
        mid: int,
        topic: bytes,
        payload: bytes | bytearray = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        info: MQTTMessageInfo | None = None,
        properties: Properties | None = None,
    ) -> MQTTErrorCode:
        """paho's, building a QoS 0/1 PUBLISH without properties in one join (paho appends
        to a bytearray piece by piece and formats a debug line whether or not it logs)."""
        if properties is not None or qos > 1 or self._sock is None or type(topic) is not bytes:
            return super()._send_publish(mid, topic, payload, qos, retain, dup, info, properties)
        v5 = self._protocol == _ms.MQTTv5
        remaining = 2 + len(topic) + len(payload) + (2 if qos else 0) + (1 if v5 else 0)
        header = bytearray((_ms.PUBLISH | (int(bool(dup)) << 3) | (qos << 1) | int(bool(retain)),))
        while True:  # the remaining length, 7 bits a byte
            byte, remaining = remaining & 0x7F, remaining >> 7
            header.append(byte | 0x80 if remaining else byte)
            if not remaining:
                break
        packet = b"".join((header, len(topic).to_bytes(2, "big"), topic, mid.to_bytes(2, "big") if qos else b"",
                           b"\x00" if v5 else b"", payload))  # fmt: skip
        return self._packet_queue(_ms.PUBLISH, packet, mid, qos, info)

    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: MQTTMessageInfo | None = None
    ) -> MQTTErrorCode:
        """paho's, except that the network thread is woken only when this packet is at the
        head of the queue: otherwise the packets before it are still to be written (whoever
        queued the head woke the thread, or the thread put it back and waits to write), and
        the thread writes until the queue is empty. (Two publishers appending at once: the
        one whose packet is at the head wakes it; an empty queue: the thread took both.)"""
        out = self._out_packet
        mpkt: Any = {"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet), "packet": packet,
                     "info": info}  # fmt: skip
        out.append(mpkt)
        try:
            wake = out[0] is mpkt
        except IndexError:  # the network thread has taken it already
            wake = False
        sockpair = self._sockpairW
        if wake and sockpair is not None:
            try:
                sockpair.send(_ms.sockpair_data)
            except BlockingIOError:
                pass
        if self._thread is None and self._on_socket_register_write is None and self._in_callback_mutex.acquire(False):
            self._in_callback_mutex.release()
            return self.loop_write()
        self._call_socket_register_write()
        return _ms.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        """paho's, writing the packets queued in as few ``send()`` calls as it can: each run of
        packets whose writing needs nothing more (all but QoS-0 PUBLISHes, DISCONNECT and a
        packet partly written) is joined into one, up to WRITE_JOIN_BYTES each. Joining only
        the first WRITE_JOIN_BYTES left paho to write the rest of a big batch (2,000 results
        queue ~350 KB of result_acks and PUBACKs) one ``send()`` per packet.
        At most WRITE_PLAN_BYTES are regrouped per call: what the socket does not take now
        is regrouped again at the next."""
        out = self._out_packet  # only this (the network) thread takes from its left end
        if len(out) > 1:
            front: list[Any] = []  #: the regrouped head of the queue, in order
            run: list[Any] = []
            run_size = planned = 0
            qos0 = not self.publish_callbacks
            for _ in range(len(out)):  # what is queued now; publishers append on the right meanwhile
                if planned >= WRITE_PLAN_BYTES:
                    break
                try:
                    p = out.popleft()
                except IndexError:
                    break
                size = p["to_process"]
                planned += size
                if _joinable(p, qos0) and (not run or run_size + size <= WRITE_JOIN_BYTES):
                    run.append(p)
                    run_size += size
                    continue
                if run:
                    front.append(_joined(run, run_size))
                if _joinable(p, qos0):  # a full run: p starts the next
                    run, run_size = [p], size
                else:
                    run, run_size = [], 0
                    front.append(p)
            if run:
                front.append(_joined(run, run_size))
            out.extendleft(reversed(front))
        return super()._packet_write()

    def _create_socket(self) -> SocketLike:
        sock = super()._create_socket()
        return BufferedSocket(sock) if type(sock) is socket.socket else sock

    def _packet_read(self) -> MQTTErrorCode:
        """A PUBLISH or PUBACK already whole in the BufferedSocket's buffer is taken in one
        slice; anything else (a packet split across reads, other packets) is read by paho,
        byte by byte through ``_sock_recv`` (three or more calls per packet: 7 % of the
        master's CPU ingesting results)."""
        sock = self._sock
        if type(sock) is not BufferedSocket or self._in_packet["command"] != 0:
            return super()._packet_read()
        data, start = sock._data, sock._pos
        size = len(data)
        if size - start < 2 or data[start] & 0xF0 not in _FAST_READ:
            return super()._packet_read()
        length, mult, i = 0, 1, start + 1
        while True:
            if i >= size or i - start > 4:
                return super()._packet_read()  # the length is not all here (or too long: paho refuses it)
            byte = data[i]
            length += (byte & 127) * mult
            mult *= 128
            i += 1
            if not byte & 128:
                break
        end = i + length
        if end > size:
            return super()._packet_read()
        sock._pos = end
        whole: Any = {"command": data[start], "have_remaining": 1, "remaining_count": [], "remaining_mult": mult,
                      "remaining_length": length, "packet": data[i:end], "to_process": 0, "pos": 0}  # fmt: skip
        self._in_packet = whole  # bytes, not paho's bytearray: its decoders and ours only read it
        try:
            rc = self._packet_handle()
        except _MalformedPacket:
            rc = _ms.MQTT_ERR_PROTOCOL
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}  # fmt: skip
        with self._msgtime_mutex:
            self._last_bytes_received = _ms.time_func()
        return rc

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
            rc = self._send_publish(
                m.mid, m.topic.encode("utf-8"), m.payload, m.qos, m.retain, m.dup, properties=m.properties
            )
            if rc != _ms.MQTT_ERR_SUCCESS:
                return rc
        return _ms.MQTT_ERR_SUCCESS
