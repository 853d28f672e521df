"""One master per broker and prefix, proven by a live answer, never by a retained message.

Each master keeps a retained ``master_status`` on ``<prefix>/master/status`` (``offline``
is its last will). A retained ``online`` there may be stale: a broker restored from an
old persistence snapshot brings back the status of a master long gone. So a status only
raises the question; a ``master_challenge`` with a fresh nonce on
``<prefix>/master/challenge`` answers it: a live master replies ``master_answer`` with
that nonce on the challenger's ``<prefix>/master/probe/<instance>``. No answer within
:data:`ANSWER_SECONDS` means the status is stale, and the master carries on. The
database lock (``<db>.lock``) remains the real guard against two masters on one database.

* :func:`find_live_rival`: at start-up, through a short-lived probe connection.
* :class:`RivalGuard`: while running: answers challenges, and challenges any other
  ``online`` status it sees; of two live masters, the older one yields (exits 2).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from mschedule_agent import protocol
from mschedule_agent.protocol import MasterAnswer, MasterChallenge, MasterStatus, Topics
from mschedule_agent.transport import Incoming, MqttTransport, Transport, TransportError

from . import config

log = logging.getLogger(__name__)

#: How long to look for another master's retained status before connecting, at most.
PROBE_SECONDS = 5.0
#: How long a challenged master has to answer before its status is taken as stale.
ANSWER_SECONDS = 5.0


def status_payload(state: str, instance: str, client_id: str) -> bytes:
    return protocol.encode(MasterStatus(state, instance, client_id, os.getpid(), socket.gethostname(), time.time()))


def other_online(payload: bytes, instance: str) -> MasterStatus | None:
    """The status of another master that says it is online, or None (also for junk)."""
    try:
        status = protocol.decode_as(payload, MasterStatus)
    except protocol.DecodeError:
        return None
    if status.state == "online" and status.instance != instance:
        return status
    return None


def _answer_with(payload: bytes, nonce: str) -> MasterAnswer | None:
    try:
        answer = protocol.decode_as(payload, MasterAnswer)
    except protocol.DecodeError:
        return None
    return answer if answer.nonce == nonce else None


def find_live_rival(settings: config.Settings, topics: Topics, instance: str) -> MasterAnswer | None:
    """Another master online on this broker and prefix that answers a challenge now, or None.

    Retained messages arrive right after a subscription; a ping published after it comes
    back after them, so its arrival ends the wait for the status.
    """
    statuses: list[bytes] = []
    answers: list[bytes] = []
    pinged, answered = threading.Event(), threading.Event()
    status_topic, probe_topic = topics.master_status(), topics.master_probe(instance)

    def on_message(msg: Incoming) -> None:
        if msg.topic == status_topic:
            statuses.append(msg.payload)
        elif msg.payload == b"ping":
            pinged.set()
        else:
            answers.append(msg.payload)
            answered.set()

    probe = MqttTransport(
        settings.broker,
        client_id=f"{settings.client_id}-probe-{instance[:8]}",
        subscriptions=[(status_topic, 1), (probe_topic, 1)],
        on_message=on_message,
        on_connect=lambda _sp: probe.publish(probe_topic, b"ping", qos=1),
        clean_start=True,
        session_expiry=0,
        manual_ack=False,
        mqtt_version=settings.mqtt_version,
    )
    try:
        probe.start(connect_timeout=10)
    except TransportError as e:
        log.warning("could not look for another master (%s); carrying on", e)
        return None
    try:
        if not pinged.wait(PROBE_SECONDS):
            log.warning("no answer from the broker within %.0f s while looking for another master", PROBE_SECONDS)
        claims = [s for s in (other_online(p, instance) for p in list(statuses)) if s is not None]
        if not claims:
            return None
        claim = claims[-1]
        nonce = uuid.uuid4().hex
        probe.publish(topics.master_challenge(), protocol.encode(MasterChallenge(nonce, instance)), qos=1)
        deadline = time.monotonic() + ANSWER_SECONDS
        while time.monotonic() < deadline:
            answered.wait(max(0.0, deadline - time.monotonic()))
            answered.clear()
            for payload in list(answers):
                answer = _answer_with(payload, nonce)
                if answer is not None:
                    return answer
        log.warning(
            "the retained status says master %s (pid %s on %s) is online, but it did not answer a challenge "
            "within %.0f s: taking it as stale and starting", claim.client_id, claim.pid, claim.host, ANSWER_SECONDS,
        )  # fmt: skip
        return None
    finally:
        probe.stop(timeout=1)


class RivalGuard:
    """The running master's side: answers challenges, and checks other ``online`` statuses.

    Runs on the master's loop thread: :meth:`handle` for each message on its topics,
    :meth:`tick` from the timer. ``republish`` re-sends this master's retained status;
    ``yield_to`` is called once when a live, newer master proved itself.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        topics: Topics,
        instance: str,
        client_id: str,
        started_at: float,
        republish: Callable[[], None],
        yield_to: Callable[[MasterAnswer], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.instance = instance
        self.client_id = client_id
        self.started_at = started_at
        self.republish = republish
        self.yield_to = yield_to
        self.clock = clock
        self.status_topic = topics.master_status()
        self.challenge_topic = topics.master_challenge()
        self.probe_topic = topics.master_probe(instance)
        self._pending: tuple[str, MasterStatus, float] | None = None  #: nonce, the claim, deadline

    def subscriptions(self) -> list[str]:
        return [self.status_topic, self.challenge_topic, self.probe_topic]

    def handle(self, msg: Incoming) -> bool:
        """Deal with ``msg`` if it is on one of this guard's topics (True), else False."""
        if msg.topic == self.status_topic:
            self._status(msg.payload)
        elif msg.topic == self.challenge_topic:
            self._challenge(msg.payload)
        elif msg.topic == self.probe_topic:
            self._answer(msg.payload)
        else:
            return False
        return True

    def tick(self) -> None:
        if self._pending is None or self.clock() < self._pending[2]:
            return
        _nonce, claim, _ = self._pending
        self._pending = None
        log.warning(
            "the retained status says master %s (pid %s on %s) is online, but it did not answer a challenge "
            "within %.0f s: stale; publishing ours again", claim.client_id, claim.pid, claim.host, ANSWER_SECONDS,
        )  # fmt: skip
        self.republish()

    def _status(self, payload: bytes) -> None:
        claim = other_online(payload, self.instance)
        if claim is None or self._pending is not None:
            return
        nonce = uuid.uuid4().hex
        self._pending = (nonce, claim, self.clock() + ANSWER_SECONDS)
        log.info("master %s (pid %s on %s) says it is online here: challenging it", claim.client_id, claim.pid, claim.host)
        self.transport.publish(self.challenge_topic, protocol.encode(MasterChallenge(nonce, self.instance)), qos=1)

    def _challenge(self, payload: bytes) -> None:
        try:
            ch = protocol.decode_as(payload, MasterChallenge)
        except protocol.DecodeError as e:
            log.warning("bad master_challenge ignored: %s", e)
            return
        if ch.instance == self.instance:
            return  # our own
        answer = MasterAnswer(ch.nonce, self.instance, self.client_id, os.getpid(), socket.gethostname(), self.started_at)
        self.transport.publish(self.topics.master_probe(ch.instance), protocol.encode(answer), qos=1)

    def _answer(self, payload: bytes) -> None:
        if self._pending is None:
            return
        answer = _answer_with(payload, self._pending[0])
        if answer is None:
            return
        self._pending = None
        if (answer.started_at, answer.instance) > (self.started_at, self.instance):
            log.error(
                "another mschedule-master (client id %s, pid %s on %s) started after this one and is alive "
                "on this broker and prefix; yielding to it", answer.client_id, answer.pid, answer.host,
            )  # fmt: skip
            self.yield_to(answer)
        else:
            log.warning(
                "an older mschedule-master (client id %s, pid %s on %s) is alive on this broker and prefix; "
                "it yields to this one", answer.client_id, answer.pid, answer.host,
            )  # fmt: skip
            self.republish()
