"""paho has 65535 packet ids: a QoS-1 publish whose id is still taken by an unacknowledged
one is dropped (MQTT_ERR_QUEUE_SIZE). The transport says so, and its publication does not
pretend to be on its way (found by bench/capacity.py fanning out to 100,000 targets)."""

from __future__ import annotations

import logging
import time
import uuid

from mschedule_agent.transport import MqttTransport


def test_a_publish_with_no_free_packet_id_is_reported_dropped(caplog):
    t = MqttTransport("mqtt://127.0.0.1:9", client_id=f"ids-{uuid.uuid4().hex[:6]}")  # never connected
    pubs = [t.publish("p/x", b"", qos=1) for _ in range(65535)]  # queued for a connection
    with caplog.at_level(logging.ERROR):
        dropped = t.publish("p/x", b"", qos=1)
    assert "dropped by paho" in caplog.text
    t0 = time.monotonic()
    assert dropped.wait(30) is False
    assert time.monotonic() - t0 < 5, "a dropped publish has nothing to wait for"
    assert not pubs[0].wait(0)  # the queued ones are still waiting, not failed
