"""paho_shim.InflightClient's O(1) queue of publishes beyond max_inflight (a fix the benchmarks
called for): every message still arrives, in order, also across a broker restart."""

from __future__ import annotations

import time
import uuid

from harness.mqtt import Collector
from harness.procs import wait_until
from mschedule_agent.transport import MqttTransport


def _payloads(msgs) -> list[bytes]:
    return [m.payload for m in msgs]


def test_a_burst_beyond_max_inflight_arrives_complete_and_in_order(broker, prefix):
    n = 600
    with Collector(broker.url, [f"{prefix}/burst"]) as c:
        t = MqttTransport(broker.url, client_id=f"burst-{uuid.uuid4().hex[:6]}", max_inflight=7,
                          clean_start=True, session_expiry=0)
        t.start(connect_timeout=5)
        try:
            assert t.wait_connected(5)
            pubs = [t.publish(f"{prefix}/burst", str(i).encode()) for i in range(n)]
            assert all(p.wait(20) for p in pubs)
            c.wait_for(lambda m: True, 20, count=n)
            assert _payloads(c.messages) == [str(i).encode() for i in range(n)]
            assert not t._client._queued_mids and t._client._inflight_messages == 0
        finally:
            t.stop()


def test_messages_queued_while_the_broker_is_down_arrive_after_it_returns(own_broker, prefix):
    got: list[bytes] = []
    rx = MqttTransport(own_broker.url, client_id=f"rx-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/q", 1)],
                       on_message=lambda m: got.append(m.payload), session_expiry=300, manual_ack=False)
    t = MqttTransport(own_broker.url, client_id=f"requeue-{uuid.uuid4().hex[:6]}", max_inflight=5)
    for x in (rx, t):
        x.start(connect_timeout=5)
        assert x.wait_connected(5)
    try:
        for _ in range(100):  # until the receiver's subscription is in place
            t.publish(f"{prefix}/q", b"probe").wait(5)
            if got:
                break
            time.sleep(0.05)
        assert got == [b"probe"] or got[:1] == [b"probe"]
        got.clear()
        own_broker.stop()  # a clean stop keeps the receiver's persistent session
        wait_until(lambda: not t.is_connected() and not rx.is_connected(), 10, what="both to notice")
        pubs = [t.publish(f"{prefix}/q", str(i).encode()) for i in range(50)]  # 5 in flight, 45 queued
        own_broker.start()
        assert all(p.wait(30) for p in pubs)
        wait_until(lambda: len(got) >= 50, 30, what="every message at the receiver")
        assert sorted(int(p) for p in got if p != b"probe") == list(range(50))
    finally:
        t.stop()
        rx.stop()


def test_buffered_socket_serves_small_reads_from_one_recv_and_reports_pending():
    import socket

    from mschedule_agent.paho_shim import BufferedSocket

    a, b = socket.socketpair()
    try:
        b.sendall(b"\x30\x05hello\x40\x02")
        buf = BufferedSocket(a)
        assert buf.recv(1) == b"\x30" and buf.pending() == 8
        assert buf.recv(1) == b"\x05"
        assert buf.recv(100) == b"hello\x40\x02"  # at most what is buffered, never a blocking read
        assert buf.pending() == 0
        b.close()
        assert buf.recv(1) == b""  # EOF passes through
    finally:
        a.close()


def test_the_paho_internals_the_shim_relies_on_are_all_there():
    """Fails loudly, naming each one, on a paho release whose private names moved."""
    from mschedule_agent.paho_shim import internals_problems

    assert internals_problems() == []


def test_moved_paho_internals_are_each_named():
    import types

    from mschedule_agent.paho_shim import internals_problems

    class Client:
        def __init__(self):
            self._out_messages = {}

        def _update_inflight(self):
            pass

        def _send_publish(self, mid, topic):  # parameters changed
            pass

    class MQTTMessageInfo:
        def __init__(self):
            self._condition = None

    fake = types.SimpleNamespace(Client=Client, MQTTMessageInfo=MQTTMessageInfo, mqtt_ms_queued=9)
    problems = internals_problems(fake)
    assert "Client()._out_messages" not in problems
    assert "Client()._inflight_messages" in problems
    assert "Client._update_inflight()" not in problems
    assert "Client._sock_recv()" in problems
    assert any(p.startswith("Client._send_publish(") for p in problems)
    assert "MQTTMessageInfo()._published" in problems
    assert "paho.mqtt.client.mqtt_ms_wait_for_puback" in problems
    assert internals_problems(types.SimpleNamespace()) == ["paho.mqtt.client.Client", "paho.mqtt.client.MQTTMessageInfo"]
