"""paho_shim.InflightClient's own encoding and decoding of the common packets is byte for
byte paho's: a PUBLISH built in one join equals paho's, and one decoded inline reaches the
handler with the same topic, payload, QoS, retain flag and message id."""

from __future__ import annotations

import socket

import pytest
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from mschedule_agent import paho_shim
from mschedule_agent.paho_shim import InflightClient


@pytest.fixture(params=[paho.MQTTv5, paho.MQTTv311], ids=["v5", "v311"])
def client(request):
    a, b = socket.socketpair()
    c = InflightClient(CallbackAPIVersion.VERSION2, client_id="shim-test", protocol=request.param)
    c._sock = a  # _send_publish only checks that there is one
    yield c
    c._sock = None
    a.close()
    b.close()


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("size", [0, 5, 127, 128, 16_383, 16_384, 2_100_000])
def test_a_publish_is_built_as_paho_builds_it(client, qos, retain, size):
    queued: list[bytes] = []
    client._packet_queue = lambda command, packet, mid, qos, info=None: queued.append(bytes(packet)) or 0  # type: ignore[method-assign]
    payload = b"p" * size
    client._send_publish(513, b"pre/agents/a1/control", payload, qos, retain, False)
    paho.Client._send_publish(client, 513, b"pre/agents/a1/control", payload, qos, retain, False)
    assert queued[0] == queued[1]


@pytest.mark.parametrize("qos", [0, 1])
def test_a_publish_without_properties_is_decoded_as_paho_decodes_it(client, qos):
    built: list[bytes] = []
    client._packet_queue = lambda command, packet, mid, qos, info=None: built.append(bytes(packet)) or 0  # type: ignore[method-assign]
    client._send_publish(4242, b"pre/results/a1", b'{"type":"result"}', qos, True, False)
    packet = built[0]
    body = packet[2:]  # one byte of command, one of remaining length (short packet)
    seen: list[tuple] = []
    client.on_message = lambda _c, _u, m: seen.append((m.topic, m.payload, m.qos, m.retain, m.mid))
    for decode in (InflightClient._handle_publish, paho.Client._handle_publish):
        client._in_packet = {"command": packet[0], "packet": bytearray(body)}  # type: ignore[typeddict-item]
        client._manual_ack = True
        decode(client)
    expected_mid = 4242 if qos else 0
    assert seen[0] == seen[1] == ("pre/results/a1", b'{"type":"result"}', qos, True, expected_mid)


def test_queued_packets_are_written_in_as_few_sends_as_their_kinds_allow(client, monkeypatch):
    """A run of packets paho does nothing after writing goes out in one send(), before and
    after a QoS-0 PUBLISH (which paho writes alone, to mark it published), and a run past
    WRITE_JOIN_BYTES in several: 3 sends here, where joining only the head's run took 102
    (one per PUBACK after the QoS-0 PUBLISH)."""
    sent: list[bytes] = []
    real = client._sock

    class Counting:  # the real socket pair's end, counting the send() calls made on it
        def send(self, buf: bytes) -> int:
            sent.append(bytes(buf))
            return real.send(buf)

    client._sock = Counting()
    client.on_socket_register_write = lambda *_a: None  # queue them: written by _packet_write below
    info = paho.MQTTMessageInfo(2)
    client._send_publish(1, b"pre/agents/a1/tasks", b"t" * 300, 1, False, False)
    client._send_publish(2, b"pre/tasks/t1/progress", b"p", 0, False, False, info)
    for mid in range(100, 200):
        client._send_puback(mid)
    expected = b"".join(bytes(p["packet"]) for p in client._out_packet)
    assert client._packet_write() == paho.MQTT_ERR_SUCCESS
    assert b"".join(sent) == expected  # the same bytes, in the same order
    assert len(sent) == 3
    assert info.is_published()

    sent.clear()  # 1,200 PUBACKs (4,800 bytes) with a join limit of 1,000 bytes: 5 sends, not 951
    monkeypatch.setattr(paho_shim, "WRITE_JOIN_BYTES", 1000)
    for mid in range(1000, 2200):
        client._send_puback(mid)
    expected = b"".join(bytes(p["packet"]) for p in client._out_packet)
    assert client._packet_write() == paho.MQTT_ERR_SUCCESS
    assert b"".join(sent) == expected
    assert len(sent) == 5
    client._sock = real


def test_qos0_publishes_join_the_run_when_on_publish_reports_only_failures(client):
    """With ``publish_callbacks`` off (the transport's on_publish only logs refusals), QoS-0
    PUBLISHes (the master's result_acks) join the run around them: one send() for all, each
    info marked published only once the joined bytes are written, on_publish called once."""
    sent: list[bytes] = []
    real = client._sock
    full = [True]  # the socket takes nothing while this holds

    class Counting:
        def send(self, buf: bytes) -> int:
            if full[0]:
                raise BlockingIOError
            sent.append(bytes(buf))
            return real.send(buf)

    client._sock = Counting()
    client.publish_callbacks = False
    calls: list[int] = []
    client.on_publish = lambda _c, _u, mid, rc, _p: calls.append(mid)
    client.on_socket_register_write = lambda *_a: None
    infos = [paho.MQTTMessageInfo(m) for m in range(2, 52)]
    client._send_publish(1, b"pre/agents/a1/tasks", b"t" * 300, 1, False, False)
    for info in infos:
        client._send_publish(info.mid, b"pre/agents/a1/control", b"ack", 0, False, False, info)
        client._send_puback(info.mid + 100)
    expected = b"".join(bytes(p["packet"]) for p in client._out_packet)
    assert client._packet_write() == paho.MQTT_ERR_AGAIN
    assert not any(i.is_published() for i in infos)  # nothing written: nothing published
    full[0] = False
    assert client._packet_write() == paho.MQTT_ERR_SUCCESS
    assert b"".join(sent) == expected and len(sent) == 1
    assert all(i.is_published() for i in infos)
    assert calls == [0]
    client._sock = real
