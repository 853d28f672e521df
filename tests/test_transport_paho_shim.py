"""paho_shim.InflightClient's own encoding and decoding of the common packets is byte for
byte paho's: a PUBLISH built in one join equals paho's, and one decoded inline reaches the
handler with the same topic, payload, QoS, retain flag and message id."""

from __future__ import annotations

import socket

import pytest
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

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
