"""Several broker addresses against real brokers: the first connect takes the first that
answers, and a broker killed under a connection hands it to the next one in the list,
round robin, with paho's own network thread, the shared NetworkLoop and an asyncio loop alike.

Two separate Mosquittos share no sessions, so each move here starts a new one; the
sessions' move across a NATS cluster is tests/master/test_nats_cluster.py's."""

from __future__ import annotations

import logging
import threading
import uuid
from contextlib import ExitStack
from typing import Any

import pytest

from harness.broker import Mosquitto, free_port
from harness.loops import loop_network
from harness.procs import wait_until
from mschedule_agent.transport import MqttTransport, NetworkLoop


@pytest.fixture
def two_brokers(tmp_path):
    from tests.conftest import require_mosquitto

    require_mosquitto()
    brokers = [Mosquitto(tmp_path / f"m{i}") for i in range(2)]
    try:
        for b in brokers:
            b.start()
        yield brokers
    finally:
        for b in brokers:
            b.stop()


def _receiver(url: str, topic: str, *, network: NetworkLoop | None = None):
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(m):
        got.append(m.payload)
        m.ack()
        arrived.set()

    t = MqttTransport(url, client_id=f"fo-{uuid.uuid4().hex[:6]}", subscriptions=[(topic, 1)], on_message=on_message,
                      network=network)  # fmt: skip
    return t, got, arrived


def _delivered(t: MqttTransport, topic: str, payload: bytes, arrived: threading.Event) -> bool:
    """``payload`` published by ``t`` on its own subscription came back through its broker."""
    assert t.wait_subscribed(30), f"not subscribed on {t.url}"
    arrived.clear()
    assert t.publish(topic, payload).wait(10)
    return arrived.wait(10)


def test_the_first_connect_takes_the_first_broker_that_answers(two_brokers, prefix):
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there
    t, got, arrived = _receiver(f"{dead},{two_brokers[1].url}", f"{prefix}/x")
    t.start(connect_timeout=10)
    try:
        assert t.wait_connected(10)
        assert t.url.port == two_brokers[1].port
        assert _delivered(t, f"{prefix}/x", b"hello", arrived)
    finally:
        t.stop()


@pytest.mark.parametrize("loop", ["paho thread", "network loop", "asyncio loop"])
def test_a_killed_broker_hands_the_connection_to_the_next_and_back_round_robin(two_brokers, prefix, loop, caplog):
    """b0 killed: the client moves to b1 (b0 stays dead); b0 back and b1 killed: to b0."""
    b0, b1 = two_brokers
    topic = f"{prefix}/x"
    with ExitStack() as stack:
        _failover_round_trip(b0, b1, topic, loop, caplog, stack)


def _failover_round_trip(b0, b1, topic, loop, caplog, stack: ExitStack) -> None:
    net: Any = None
    if loop == "network loop":
        net = NetworkLoop().start()
        stack.callback(net.stop)
    elif loop == "asyncio loop":
        _loop, net, _thread = stack.enter_context(loop_network())
    t, got, arrived = _receiver(f"{b0.url},{b1.url}", topic, network=net)
    caplog.set_level(logging.WARNING, logger="mschedule_agent.transport")
    t.start(connect_timeout=10)
    try:
        assert t.wait_connected(10) and t.url.port == b0.port
        assert _delivered(t, topic, b"on b0", arrived)

        b0.kill()
        wait_until(lambda: t.is_connected() and t.url.port == b1.port, 30, what="connected to b1")
        assert _delivered(t, topic, b"on b1", arrived)
        assert any(f"moving to {b1.url}" in r.getMessage() for r in caplog.records)

        b0.start()
        b1.kill()
        wait_until(lambda: t.is_connected() and t.url.port == b0.port, 60, what="back on b0")
        assert _delivered(t, topic, b"on b0 again", arrived)
        assert got == [b"on b0", b"on b1", b"on b0 again"]
    finally:
        t.stop(timeout=2)
