"""The one place that speaks paho-mqtt (its private hooks: paho_shim.py; its import: paho_import.py).

Both daemons talk MQTT through :class:`MqttTransport`; business code sees only
:class:`Incoming` values and :class:`Publication` handles, and tests can swap in
:class:`MemoryTransport`. What this wrapper guarantees, on top of paho 2.x:

* MQTT v5 with a persistent session (``clean_start=False`` + a session expiry), or
  MQTT 3.1.1 (``mqtt_version="3.1.1"``, for clustered brokers such as NATS) with
  ``clean_session=False``: no will delay, no response topic or correlation data, no
  subscription options, no DISCONNECT reason; topic names without ``.`` or space (NATS
  drops a connection that publishes one, and paho would re-send it forever).
  Subscriptions are (re)made in ``on_connect``, so a reconnect renews them.
* Manual acknowledgement: an incoming QoS-1 message is PUBACKed only when the
  receiver calls :meth:`Incoming.ack` (after it has recorded the message durably).
* Every paho callback is wrapped: an exception is logged, never allowed to kill
  paho's network thread silently.
* TCP_NODELAY on the socket (88 ms -> 0.35 ms QoS-1 round trips, MQTT-FACTS.md).
* Reconnects forever with capped exponential backoff and full jitter (paho alone
  doubles without jitter); the first connect is retried the same way with tenacity.
* Several broker addresses (the nodes of one cluster, :mod:`.brokerlist`): the first
  connect takes the first that answers; a lost connection that does not come back within
  ``ATTEMPTS_PER_BROKER`` attempts moves on to the next address, round robin, same backoff.
* Payload sizes are checked before publishing: Mosquitto answers an oversize QoS-1
  publish in a way paho 2.2 cannot decode, and paho then resends it forever.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import selectors
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from .brokerlist import BrokerList
from .paho_import import import_paho
from .paho_shim import InflightClient, PahoPublication
from .protocol import MAX_MESSAGE_BYTES, MessageTooLarge

if TYPE_CHECKING:  # the checker reads paho's own types; the same module as import_paho's
    import paho.mqtt.client as paho
    from paho.mqtt.client import ConnectFlags, DisconnectFlags, SocketLike
    from tenacity import RetryCallState
else:
    paho = import_paho()  # already imported by paho_shim (after the agent's deferral, if any)
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

_P = ParamSpec("_P")
_R = TypeVar("_R")

log = logging.getLogger(__name__)

#: The one reconnect policy: full jitter, exponential from BASE, capped at CAP seconds.
RECONNECT_BASE = 0.5
RECONNECT_CAP = 30.0


def backoff_delay(
    attempt: int, *, base: float = RECONNECT_BASE, cap: float = RECONNECT_CAP, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based): full jitter."""
    return max(0.05, rand() * min(cap, base * (2.0 ** min(attempt, 30))))


class TransportError(Exception):
    """The broker could not be reached or refused us."""


#: The MQTT versions the transport speaks: "5" (the default) and "3.1.1".
MQTT_VERSIONS = ("5", "3.1.1")
#: Characters a 3.1.1-mode topic may not hold: NATS maps ``/`` to ``.`` and refuses both.
NON_PORTABLE_TOPIC_CHARS = ". "


def check_mqtt_version(text: str) -> str:
    """``text`` when it names a supported MQTT version, else ValueError saying which are."""
    if text not in MQTT_VERSIONS:
        raise ValueError(f"MQTT version must be one of {', '.join(MQTT_VERSIONS)}, not {text!r}")
    return text


def portable_topic(topic: str) -> bool:
    """True when every 3.1.1 broker mschedule supports takes ``topic`` (no ``.``, no space)."""
    return not any(c in topic for c in NON_PORTABLE_TOPIC_CHARS)


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """``mqtt://[user:pass@]host:port`` or ``mqtts://...`` (TLS)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Raises ValueError, whose message never holds the password."""
        if "://" not in url:
            url = "mqtt://" + url
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL scheme must be mqtt:// or mqtts://, not {u.scheme!r}")
        tls = u.scheme in ("mqtts", "ssl")
        if not u.hostname:
            raise ValueError(f"broker URL {redact_url(url)!r} has no host")
        try:
            port = u.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker URL {redact_url(url)!r} has a bad port") from None
        user = urllib.parse.unquote(u.username) if u.username else None
        pw = urllib.parse.unquote(u.password) if u.password else None
        return cls(u.hostname, port, tls, user, pw)

    def __str__(self) -> str:  # never prints the password
        auth = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


def _retain_as_published(qos: int) -> SubscribeOptions:
    opts = SubscribeOptions
    return opts(qos=qos, retainAsPublished=True, retainHandling=opts.RETAIN_SEND_IF_NEW_SUB)


def redact_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``."""
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    userinfo, at, hostport = rest.rpartition("@")  # a broker URL has no path: the last '@' ends it
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{hostport}"


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    delay: int = 0  #: seconds the broker waits before publishing it (MQTT v5 will delay)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A received message. Call :meth:`ack` once it is durably handled (QoS >= 1)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    _ack: Callable[[], object] | None = field(default=None, repr=False, compare=False)

    def ack(self) -> None:
        if self._ack is not None:
            self._ack()


class Publication(Protocol):
    def wait(self, timeout: float) -> bool:
        """True once the broker acknowledged the message (QoS 1) or it was written (QoS 0)."""


class Transport(Protocol):
    """What business code needs from MQTT; :class:`MqttTransport` and :class:`MemoryTransport`."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> Publication: ...

    def is_connected(self) -> bool: ...


MessageHandler = Callable[[Incoming], None]


class Network(Protocol):
    """Who drives a transport's socket when paho's own thread does not: :class:`NetworkLoop`
    (one thread for many connections) or :class:`~.asyncnet.AsyncioNetwork` (an asyncio
    loop). The socket callbacks come from any thread; ``call_later`` schedules a reconnect."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...

    def _register(self, client: paho.Client, sock: SocketLike) -> None: ...

    def _want_write(self, client: paho.Client, sock: SocketLike, on: bool) -> None: ...

    def _unregister(self, sock: SocketLike) -> None: ...


class MqttTransport:
    """A paho client with the guarantees listed in the module docstring.

    ``on_message`` runs on the network thread (paho's, or the ``network``'s): keep it short, and call
    ``msg.ack()`` (possibly later, from any thread) to PUBACK a QoS-1 message.
    ``on_connect(session_present)`` runs after the subscriptions are renewed.
    """

    def __init__(
        self,
        url: BrokerURL | BrokerList | str,
        *,
        client_id: str,
        subscriptions: Iterable[tuple[str, int]] = (),
        on_message: MessageHandler | None = None,
        on_connect: Callable[[bool], object] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        will: Will | None = None,
        clean_start: bool = False,
        session_expiry: int = 7 * 24 * 3600,
        keepalive: int = 30,
        max_inflight: int = 1000,
        max_payload: int = MAX_MESSAGE_BYTES,
        ca_file: str | None = None,
        manual_ack: bool = True,
        network: Network | None = None,
        retain_as_published: Iterable[str] = (),
        mqtt_version: str = "5",
    ) -> None:
        #: the broker addresses; ``url`` (below) is the one in use or being tried
        if isinstance(url, BrokerURL):
            url = BrokerList([url])
        self.brokers = url if isinstance(url, BrokerList) else BrokerList.parse(url)
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        #: Subscriptions whose messages keep the retain flag they were published with (MQTT v5),
        #: so a receiver can tell a retained publication however it arrives; their retained
        #: message is replayed only to a new subscription, not again at each reconnect of a
        #: persistent session (which also receives it from its queue).
        self._retain_as_published = frozenset(retain_as_published)
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._max_payload = max_payload
        self.mqtt_version = check_mqtt_version(mqtt_version)
        self._v5 = mqtt_version == "5"
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._subscribed = threading.Event()  #: the broker granted this connection's subscriptions
        self._sub_mid: int | None = None
        self._network = network
        self._attempt = 0
        self._stopping = False
        self.connect_count = 0

        c = InflightClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else clean_start,  # 3.1.1: the broker keeps the session until a clean one
            manual_ack=manual_ack,
        )
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        c.publish_callbacks = False  # _handle_publish only reports failures: a successful PUBACK needs no call
        if self.url.username is not None:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            import ssl  # here only: see paho_import.import_paho

            c.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain, properties=self._will_props(will))
        c.on_connect = self._guard(self._handle_connect)
        c.on_disconnect = self._guard(self._handle_disconnect)
        c.on_connect_fail = self._guard(self._handle_connect_fail)
        c.on_message = self._guard(self._handle_message)
        c.on_publish = self._guard(self._handle_publish)
        c.on_subscribe = self._guard(self._handle_subscribe)
        c.on_socket_open = self._guard(self._handle_socket_open)
        if network is not None:
            c.on_socket_close = self._guard(lambda cl, ud, sock: network._unregister(sock))
            c.on_socket_register_write = self._guard(lambda cl, ud, sock: network._want_write(cl, sock, True))
            c.on_socket_unregister_write = self._guard(lambda cl, ud, sock: network._want_write(cl, sock, False))
        self._client = c
        self._connect_props: Properties | None = None
        if self._v5:
            self._connect_props = Properties(PacketTypes.CONNECT)
            self._connect_props.SessionExpiryInterval = session_expiry
        self._rejitter()

    @property
    def url(self) -> BrokerURL:
        """The broker in use, or the one the next (re)connect tries."""
        return self.brokers.current

    def _will_props(self, will: Will) -> Properties | None:
        if not will.delay:
            return None
        if not self._v5:
            log.info(
                "MQTT 3.1.1 has no will delay: the broker publishes %s as soon as it sees the connection gone "
                "(a network blip shows this client offline until it reconnects)", will.topic,
            )  # fmt: skip
            return None
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = int(will.delay)
        return props

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, connect_timeout: float | None = None) -> None:
        """Connect (retrying with jittered backoff, forever unless ``connect_timeout``)
        and start the network thread, which then reconnects by itself."""
        if self._stopping:
            return
        try:
            self._connect_first()
        except OSError as e:
            log.warning("cannot reach broker %s (%s); will retry", self.brokers, e)
            if not self._retry_connect(connect_timeout):
                return
        if self._network is None:
            self._client.loop_start()

    def _connect_first(self) -> None:
        """Connect to the first broker of the list (from the current one) that answers;
        the last one's OSError when none does."""
        error: OSError | None = None
        for url in self.brokers.round():
            self._point_at(url)
            try:
                self._client.reconnect()
                return
            except OSError as e:
                if len(self.brokers) > 1:
                    log.warning("cannot reach broker %s (%s); trying the next", url, e)
                error = e
        assert error is not None  # the list is never empty
        raise error

    def _point_at(self, url: BrokerURL) -> None:
        """Make ``url`` the broker the next (re)connect goes to, through paho's public
        ``connect_async`` (which only records it): the same keepalive, session flags and
        properties every time. Only while no connection is open."""
        self.brokers.select(url)
        self._client.username_pw_set(url.username, url.password)
        if not self._v5:  # 3.1.1: clean_session was given to the client; no properties
            self._client.connect_async(url.host, url.port, keepalive=self._keepalive)
            return
        self._client.connect_async(
            url.host, url.port, keepalive=self._keepalive, clean_start=self._clean_start, properties=self._connect_props
        )

    def _attempt_failed(self) -> None:
        """A (re)connect attempt failed: after the current broker's last attempt, the next
        (re)connect goes to the next one in the list."""
        if self._stopping:
            return
        gone = self.brokers.current
        url = self.brokers.failed()
        if url is not None:
            log.warning("broker %s did not answer %d attempts in a row; moving to %s", gone, self.brokers.attempts, url)
            self._point_at(url)

    def _retry_connect(self, connect_timeout: float | None) -> bool:
        """The first connect failed: retry it with tenacity's jittered backoff. tenacity
        (and the concurrent/asyncio modules it imports, ~3.7 MB) is imported only here, so a
        process whose first connect succeeds never loads it. False: stopped meanwhile."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

        retry = Retrying(
            wait=wait_random_exponential(multiplier=RECONNECT_BASE, max=RECONNECT_CAP),
            retry=retry_if_exception_type(OSError),
            stop=stop_after_delay(connect_timeout) if connect_timeout is not None else (lambda _s: False),
            before_sleep=self._log_retry,
            reraise=True,
        )
        time.sleep(backoff_delay(0))  # tenacity's first attempt is immediate: the wait after the failed one
        try:
            for attempt in retry:
                with attempt:
                    if self._stopping:
                        return False
                    self._connect_first()
        except OSError as e:
            raise TransportError(f"cannot reach broker {self.brokers}: {e}") from e
        return True

    def _log_retry(self, rs: RetryCallState) -> None:
        error = rs.outcome.exception() if rs.outcome is not None else None  # set before a retry's sleep
        log.warning("cannot reach broker %s (%s); will retry", self.brokers, error)

    def unacknowledged(self) -> int:
        """Our QoS > 0 publications the broker has not acknowledged yet (in flight, or queued
        in paho behind ``max_inflight``): each holds one of paho's 65,535 packet ids."""
        return len(self._client._out_messages)

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the broker has answered this connection's SUBSCRIBE (its SUBACK):
        from then on a message published to the subscribed topics reaches us."""
        return self._subscribed.wait(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, *, final: Iterable[tuple[str, bytes, bool]] = (), timeout: float = 5.0) -> None:
        """Publish ``final`` (topic, payload, retain) messages, wait for them at most
        ``timeout`` seconds in all, disconnect.

        A clean DISCONNECT means the broker does not publish the last will; so when a final
        message was not acknowledged in time (the broker is slow or gone), the DISCONNECT
        asks for the will (MQTT v5 reason 0x04): whoever reads our status learns we left.
        MQTT 3.1.1 has no such reason: the socket is closed without a DISCONNECT instead,
        which makes the broker publish the will all the same.
        """
        self._stopping = True
        pubs: list[Publication] = []
        for topic, payload, retain in final:
            try:
                pubs.append(self.publish(topic, payload, retain=retain))
            except Exception:
                log.exception("final publish to %s failed", topic)
        deadline = time.monotonic() + timeout
        delivered = all([p.wait(max(0.0, deadline - time.monotonic())) for p in pubs])
        try:
            if delivered:
                self._client.disconnect()
            else:
                log.warning("final messages not acknowledged within %.1f s; disconnecting with the last will", timeout)
                self._disconnect_with_will()
            if self._network is not None:
                self._disconnected.wait(max(0.1, deadline - time.monotonic()))
        finally:
            if self._network is None:
                self._client.loop_stop()
            self._connected.clear()

    def _disconnect_with_will(self) -> None:
        if self._v5:
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            return
        if self._network is None:
            self._client.loop_stop()  # first: paho's thread would reconnect after the socket closes
        sock = self._client.socket()  # 3.1.1: a connection lost without DISCONNECT publishes the will
        if sock is not None and hasattr(sock, "shutdown"):  # (a websocket wrapper has none: it closes below)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ------------------------------------------------------------------ publishing
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> Publication:
        if len(payload) + len(topic) > self._max_payload:
            raise MessageTooLarge(len(payload) + len(topic), self._max_payload)
        if not self._v5:
            self._check_v311(topic, response_topic, correlation_data)
        props = None
        if response_topic is not None or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            log.error(
                "publish to %s dropped by paho: every one of its 65535 packet ids is taken by an unacknowledged "
                "QoS-1 message (tasks, kills and results are re-sent end to end; progress is not)", topic,
            )  # fmt: skip
        elif info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publish to %s returned %s; paho keeps it queued", topic, paho.error_string(info.rc))
        return PahoPublication(info)

    @staticmethod
    def _check_v311(topic: str, response_topic: str | None, correlation_data: bytes | None) -> None:
        if response_topic is not None or correlation_data is not None:
            raise ValueError("MQTT 3.1.1 has no response topic or correlation data: reply on a request-id topic")
        if not portable_topic(topic):
            raise ValueError(f"topic {topic[:200]!r} holds '.' or ' ', which 3.1.1 brokers such as NATS refuse")

    # ------------------------------------------------------------------ callbacks
    def _guard(self, fn: Callable[_P, _R]) -> Callable[_P, _R | None]:
        def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.exception("error in MQTT callback %s; carrying on", fn.__name__)
                return None

        wrapped.__name__ = fn.__name__
        return wrapped

    def _rejitter(self) -> None:
        # paho doubles its delay without jitter; pin min=max to our own jittered value.
        d = backoff_delay(self._attempt)
        self._attempt += 1
        # paho annotates int seconds; it only waits them, and a float keeps the jitter
        self._client.reconnect_delay_set(min_delay=d, max_delay=d)  # type: ignore[arg-type]

    def _handle_socket_open(self, client: paho.Client, userdata: Any, sock: SocketLike) -> None:
        set_option = getattr(sock, "setsockopt", None)  # a TCP socket's (not in paho's SocketLike)
        try:
            if set_option is not None:
                set_option(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self._network is not None:
            self._network._register(client, sock)

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.url, reason_code)
            self._rejitter()
            return
        self._attempt = 0
        self._rejitter()
        self.brokers.connected()
        self._disconnected.clear()
        self.connect_count += 1
        self._subscribed.clear()
        if self.subscriptions:
            if self._v5:
                rap = self._retain_as_published
                self._sub_mid = client.subscribe(
                    [
                        (t, _retain_as_published(q) if t in rap else SubscribeOptions(qos=q))
                        for t, q in self.subscriptions
                    ]
                )[1]
            else:  # 3.1.1: no subscription options; paho refuses a SubscribeOptions there ("Invalid QoS level")
                self._sub_mid = client.subscribe(list(self.subscriptions))[1]
        else:
            self._subscribed.set()
        self._connected.set()
        log.info("connected to %s as %s (session present: %s)", self.url, self.client_id, flags.session_present)
        if self._on_connect is not None:
            self._on_connect(bool(flags.session_present))

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        disconnect_flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        self._disconnected.set()
        self._rejitter()
        if not was:  # closed before a CONNACK (refused, or the node going down): a failed attempt
            self._attempt_failed()
        if not self._stopping:
            log.warning("disconnected from %s (%s); will reconnect", self.url, reason_code)
            if self._network is not None:
                self._network.call_later(backoff_delay(self._attempt - 1), self._network_reconnect)
        if was and self._on_disconnect is not None:
            self._on_disconnect()

    def _network_reconnect(self) -> None:
        if self._stopping or self._connected.is_set():
            return
        try:
            self._client.reconnect()
        except OSError as e:
            self._rejitter()
            log.warning("reconnect to %s failed (%s); will retry", self.url, e)
            self._attempt_failed()
            if self._network is not None:  # always: only the network loop schedules this method
                self._network.call_later(backoff_delay(self._attempt - 1), self._network_reconnect)

    def _handle_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._rejitter()
        log.warning("reconnect to %s failed; will retry", self.url)
        self._attempt_failed()

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                log.error("subscription refused by %s: %s", self.url, rc)
        if mid == self._sub_mid:
            self._subscribed.set()

    def _handle_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused publish mid=%s: %s (not authorised?)", mid, reason_code)

    def _acker(self, client: paho.Client, mid: int, qos: int) -> Callable[[], object]:
        """The PUBACK of packet ``mid`` on this connection only. A packet id belongs to one
        connection's session: after a reconnect (another broker of the list, or a session
        the broker lost) the same id may name a different message, which a late ack would
        acknowledge unread. The broker re-sends what this connection left unacknowledged
        when the session resumes, and that copy is acknowledged in its turn."""
        connection = self.connect_count

        def ack() -> object:
            if self.connect_count != connection:
                log.debug("ack of packet %s from an earlier connection not sent", mid)
                return None
            return client.ack(mid, qos)

        return ack

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = msg.properties  # None from the shim's own decoding of a PUBLISH without properties
        response_topic = corr = None
        if props is not None:
            response_topic = getattr(props, "ResponseTopic", None)
            corr = getattr(props, "CorrelationData", None)
        ack: Callable[[], object] | None = None
        qos = msg.qos
        if qos > 0:
            ack = self._acker(client, msg.mid, qos)
        # bytes(): paho annotates bytes | bytearray; it decodes bytes, which bytes() returns as they are
        payload = msg.payload
        incoming = Incoming(msg.topic, payload if type(payload) is bytes else bytes(payload), qos, bool(msg.retain),
                            response_topic, corr, ack)  # fmt: skip
        if self._on_message is None:
            incoming.ack()
            return
        try:
            self._on_message(incoming)
        except Exception:
            # Never leave a message un-acked on a handler bug: the broker would hold the
            # session's inflight window forever. The handler logs its own failures.
            log.exception("message handler failed on %s; acknowledging it anyway", msg.topic)
            incoming.ack()


# ---------------------------------------------------------------------- shared network loop


class NetworkLoop:
    """Drives many :class:`MqttTransport` connections from ONE thread through paho's
    external-loop API (socket callbacks + ``loop_read``/``loop_write``/``loop_misc``),
    instead of one network thread per connection. This is what lets a fleet simulator
    pack thousands of real agents into a process; a lone daemon does not need it.

    Socket (un)registrations arrive from any thread as queued operations applied on the
    loop thread; ``call_soon``/``call_later`` run functions there too (e.g. reconnects).
    """

    MISC_INTERVAL = 1.0

    def __init__(self, name: str = "mqtt-network") -> None:
        self._sel = selectors.DefaultSelector()
        self._ops: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._clients: dict[int, paho.Client] = {}  # fd -> client
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> NetworkLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._ops.append(fn)
        if threading.get_ident() != self._thread.ident:  # the loop runs its ops before it sleeps
            self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))
        self._wake()

    # socket callbacks (any thread) ------------------------------------------------
    # socket callbacks (any thread). The fd is read now: by the time the queued
    # operation runs, paho may already have closed the socket.
    # On the loop thread itself (a publish from a message handler) they apply at once.
    def _register(self, client: paho.Client, sock: SocketLike) -> None:
        self._update(sock.fileno(), client, selectors.EVENT_READ)

    def _want_write(self, client: paho.Client, sock: SocketLike, on: bool) -> None:
        self._update(sock.fileno(), client, selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0))

    def _update(self, fd: int, client: paho.Client | None, events: int) -> None:
        if threading.get_ident() == self._thread.ident:
            self._apply(fd, client, events)
        else:
            self.call_soon(lambda: self._apply(fd, client, events))

    def _unregister(self, sock: SocketLike) -> None:
        self._update(sock.fileno(), None, 0)

    def _apply(self, fd: int, client: paho.Client | None, events: int) -> None:
        if fd < 0:
            return
        try:
            if events == 0 or client is None:  # no client: only _unregister, with events 0
                if fd in self._clients:
                    self._clients.pop(fd)
                    self._sel.unregister(fd)
            elif fd in self._clients:
                self._sel.modify(fd, events, client)
                self._clients[fd] = client
            else:
                self._sel.register(fd, events, client)
                self._clients[fd] = client
        except (KeyError, ValueError, OSError):
            log.debug("selector update for fd %s failed", fd, exc_info=True)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # the loop --------------------------------------------------------------------
    def _run(self) -> None:
        next_misc = time.monotonic() + self.MISC_INTERVAL
        while not self._stop.is_set():
            try:
                next_misc = self._once(next_misc)
            except Exception:
                log.exception("network loop iteration failed; carrying on")

    def _once(self, next_misc: float) -> float:
        while self._ops:
            self._ops.popleft()()
        now = time.monotonic()
        with self._lock:
            due = []
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            wake_at = min(next_misc, self._timers[0][0]) if self._timers else next_misc
        for fn in due:
            fn()
        if due or self._ops:
            return next_misc
        for key, mask in self._sel.select(max(0.0, min(wake_at - now, 1.0))):
            client = key.data
            if client is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            if mask & selectors.EVENT_READ:
                client.loop_read()
                for _ in range(1000):  # packets already read into the socket's buffer
                    sock = client.socket()
                    if sock is None or not getattr(sock, "pending", None) or not sock.pending():
                        break
                    client.loop_read()
            if mask & selectors.EVENT_WRITE:
                client.loop_write()
        now = time.monotonic()
        if now >= next_misc:
            for client in list(self._clients.values()):
                client.loop_misc()
            next_misc = now + self.MISC_INTERVAL
        return next_misc


# ---------------------------------------------------------------------- in-memory fake


class _DonePublication:
    def wait(self, timeout: float) -> bool:
        return True


@dataclass
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


class MemoryTransport:
    """A fake for unit tests: records what was published, never touches a network."""

    def __init__(self, *, max_payload: int = MAX_MESSAGE_BYTES) -> None:
        self.published: list[Published] = []
        self.connected = True
        self._max_payload = max_payload
        self._lock = threading.Lock()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> Publication:
        if len(payload) + len(topic) > self._max_payload:
            raise MessageTooLarge(len(payload) + len(topic), self._max_payload)
        with self._lock:
            self.published.append(Published(topic, payload, qos, retain, response_topic, correlation_data))
        return _DonePublication()

    def is_connected(self) -> bool:
        return self.connected

    def take(self) -> list[Published]:
        with self._lock:
            out, self.published = self.published, []
        return out
