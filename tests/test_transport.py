"""The paho wrapper against a real mosquitto."""

from __future__ import annotations

import threading
import uuid

import pytest

from harness.mqtt import Collector
from harness.procs import wait_until
from mschedule_agent.protocol import MessageTooLarge
from mschedule_agent.transport import BrokerURL, MqttTransport, Will, backoff_delay


def test_broker_url_parses_credentials_and_tls():
    u = BrokerURL.parse("mqtts://alice:s%40cret@broker.example:8884")
    assert (u.host, u.port, u.tls, u.username, u.password) == ("broker.example", 8884, True, "alice", "s@cret")
    assert "s@cret" not in str(u)
    assert BrokerURL.parse("localhost").port == 1883
    with pytest.raises(ValueError):
        BrokerURL.parse("http://x")


def test_backoff_is_jittered_and_capped():
    assert backoff_delay(0, rand=lambda: 1.0) == pytest.approx(0.5)
    assert backoff_delay(3, rand=lambda: 1.0) == pytest.approx(4.0)
    assert backoff_delay(50, rand=lambda: 1.0) == pytest.approx(30.0)
    assert backoff_delay(5, rand=lambda: 0.5) == pytest.approx(8.0)


def test_publish_and_receive_with_manual_ack(broker, prefix):
    got = []
    done = threading.Event()

    def on_message(m):
        got.append(m)
        m.ack()
        done.set()

    t = MqttTransport(broker.url, client_id=f"rx-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/x", 1)],
                      on_message=on_message)
    t.start(connect_timeout=5)
    try:
        assert t.wait_connected(5)
        with Collector(broker.url, []) as c:
            c.publish(f"{prefix}/x", b"hello", response_topic=f"{prefix}/reply", correlation_data=b"42")
        assert done.wait(5)
        assert got[0].payload == b"hello"
        assert got[0].response_topic == f"{prefix}/reply"
        assert got[0].correlation_data == b"42"
    finally:
        t.stop()


def test_oversize_publish_is_refused_before_it_reaches_paho(broker):
    t = MqttTransport(broker.url, client_id=f"big-{uuid.uuid4().hex[:6]}", max_payload=1000)
    with pytest.raises(MessageTooLarge):
        t.publish("x/y", b"0" * 2000)


def test_callback_exception_does_not_kill_the_network_thread(broker, prefix):
    calls = []

    def on_message(m):
        calls.append(m.payload)
        if m.payload == b"boom":
            raise RuntimeError("handler bug")

    t = MqttTransport(broker.url, client_id=f"boom-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/b", 1)],
                      on_message=on_message)
    t.start(connect_timeout=5)
    try:
        assert t.wait_connected(5)
        with Collector(broker.url, []) as c:
            c.publish(f"{prefix}/b", b"boom")
            c.publish(f"{prefix}/b", b"after")
        from harness.procs import wait_until
        wait_until(lambda: b"after" in calls, 5, what="message after the exception")
    finally:
        t.stop()


def test_last_will_is_published_when_connection_dies(broker, prefix):
    topic = f"{prefix}/will"
    with Collector(broker.url, [topic]) as c:
        t = MqttTransport(broker.url, client_id=f"will-{uuid.uuid4().hex[:6]}",
                          will=Will(topic, b"gone", retain=True), session_expiry=0, clean_start=True)
        t.start(connect_timeout=5)
        assert t.wait_connected(5)
        t._client.socket().close()  # a dead connection, not a clean DISCONNECT
        msgs = c.wait_for(lambda m: m.topic == topic, timeout=10)
        assert msgs[0].payload == b"gone"
        t.stop()


def test_persistent_session_queues_messages_while_offline(broker, prefix):
    cid = f"persist-{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}/q"
    got = []
    ev = threading.Event()

    def on_message(m):
        got.append(m.payload)
        m.ack()
        ev.set()

    t = MqttTransport(broker.url, client_id=cid, subscriptions=[(topic, 1)], on_message=on_message)
    t.start(connect_timeout=5)
    assert t.wait_connected(5)
    t.stop()
    with Collector(broker.url, []) as c:
        c.publish(topic, b"while-away")
    t2 = MqttTransport(broker.url, client_id=cid, subscriptions=[(topic, 1)], on_message=on_message)
    t2.start(connect_timeout=5)
    try:
        assert ev.wait(5)
        assert got == [b"while-away"]
    finally:
        t2.stop()


def test_network_loop_drives_many_connections_on_one_thread_and_reconnects(own_broker, prefix):
    from harness.procs import wait_until
    from mschedule_agent.transport import NetworkLoop

    n = 150
    got: dict[int, list[bytes]] = {i: [] for i in range(n)}
    net = NetworkLoop().start()
    clients = []
    threads_before = threading.active_count()

    def handler(i):
        def on_message(m):
            got[i].append(m.payload)
            m.ack()
        return on_message

    try:
        for i in range(n):
            t = MqttTransport(own_broker.url, client_id=f"net-{i}-{uuid.uuid4().hex[:6]}",
                              subscriptions=[(f"{prefix}/n/{i}", 1)], on_message=handler(i), network=net)
            t.start(connect_timeout=10)
            clients.append(t)
        assert threading.active_count() == threads_before  # no thread per connection
        wait_until(lambda: all(c.is_connected() for c in clients), 10, what="all connected")
        assert all(c.wait_subscribed(10) for c in clients)
        with Collector(own_broker.url, []) as pub:
            for i in range(n):
                pub.publish(f"{prefix}/n/{i}", b"one")
        wait_until(lambda: all(got[i] == [b"one"] for i in range(n)), 15, what="every client got one")

        own_broker.stop()
        wait_until(lambda: not any(c.is_connected() for c in clients), 15, what="all disconnected")
        own_broker.start()
        wait_until(lambda: all(c.is_connected() for c in clients), 60, what="all reconnected")
        assert all(c.wait_subscribed(10) for c in clients)  # a session the restart lost subscribes anew
        with Collector(own_broker.url, []) as pub:
            for i in range(n):
                pub.publish(f"{prefix}/n/{i}", b"two")
        # QoS 1 is at least once: an ack still on its way when the broker stopped brings "one" again
        wait_until(lambda: all(list(dict.fromkeys(got[i])) == [b"one", b"two"] and got[i][-1] == b"two"
                               for i in range(n)), 15, what="every client got two")  # fmt: skip
    finally:
        for c in clients:
            c.stop(timeout=2)
        net.stop()


def test_wait_subscribed_returns_once_the_broker_granted_the_subscriptions(own_broker, prefix):
    """No sleep is needed: a publish made right after wait_subscribed() is delivered, for
    the first connection and again after a reconnect (the SUBSCRIBE is renewed)."""
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(m):
        got.append(m.payload)
        arrived.set()

    t = MqttTransport(own_broker.url, client_id=f"ws-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/ws", 0)],
                      on_message=on_message, clean_start=True, session_expiry=0, manual_ack=False)  # fmt: skip
    assert not t.wait_subscribed(0.01)  # not even connected
    t.start(connect_timeout=10)
    try:
        for round_ in (b"first", b"second"):
            assert t.wait_subscribed(10)
            arrived.clear()
            with Collector(own_broker.url, []) as pub:
                pub.publish(f"{prefix}/ws", round_, qos=0)  # QoS 0: only a granted subscription gets it
            assert arrived.wait(10), f"{round_!r} did not arrive"
            if round_ == b"first":
                own_broker.stop()
                wait_until(lambda: not t.is_connected(), 15, what="disconnected")
                assert not t.wait_subscribed(0.01)  # a lost connection's grant is gone
                own_broker.start()
                assert t.wait_connected(30)
        assert got == [b"first", b"second"]
    finally:
        t.stop()


def test_an_ack_from_an_earlier_connection_is_not_sent_on_the_next(own_broker, prefix):
    """A packet id belongs to one connection's session: after a reconnect the same id may name
    another message, which a late PUBACK would acknowledge unread. The late ack is dropped;
    a message of the new connection is acknowledged as usual."""
    got: list = []
    arrived = threading.Event()

    def on_message(m):
        got.append(m)
        arrived.set()

    t = MqttTransport(own_broker.url, client_id=f"la-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/la", 1)],
                      on_message=on_message)  # manual ack: the test acks
    t.start(connect_timeout=10)
    try:
        sent: list[int] = []
        client = t._client
        real_ack = client.ack
        client.ack = lambda mid, qos: (sent.append(mid), real_ack(mid, qos))[1]  # a spy beside the real ack
        for round_ in (b"old", b"new"):
            assert t.wait_subscribed(10)
            arrived.clear()
            with Collector(own_broker.url, []) as pub:
                pub.publish(f"{prefix}/la", round_)
            assert arrived.wait(10), f"{round_!r} did not arrive"
            if round_ == b"old":
                own_broker.stop()
                wait_until(lambda: not t.is_connected(), 15, what="disconnected")
                own_broker.start()
                assert t.wait_connected(30)
        old = next(m for m in got if m.payload == b"old")
        new = [m for m in got if m.payload == b"new"][-1]
        old.ack()
        assert sent == []
        new.ack()
        assert len(sent) == 1
    finally:
        t.stop()
