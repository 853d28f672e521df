"""The paho wrapper in MQTT 3.1.1 mode against a real mosquitto: what 3.1.1 brokers (NATS)
give instead of the v5 features, checked on the wire (mosquitto logs "p2", its number for 3.1.1; "p5" for MQTT 5)."""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest

from harness.mqtt import Collector
from harness.procs import wait_until
from mschedule_agent.transport import MqttTransport, Will, check_mqtt_version, portable_topic

V311 = "3.1.1"


def _cid(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def _protocol_logged(broker, client_id: str) -> str:
    """The protocol mosquitto logged for ``client_id``'s connection: p2 = 3.1.1 (mosquitto's own numbering), p5 = 5."""
    found = wait_until(lambda: re.search(rf"as {re.escape(client_id)} \((p\d)", broker.log_path.read_text()), 5)
    return found.group(1)


def test_mqtt_version_names_are_checked():
    assert check_mqtt_version("3.1.1") == "3.1.1" and check_mqtt_version("5") == "5"
    with pytest.raises(ValueError, match="5, 3.1.1"):
        check_mqtt_version("3.1")
    assert portable_topic("a/b/c") and not portable_topic("a/b.c") and not portable_topic("a/b c")


def test_a_311_persistent_session_keeps_what_was_published_while_away(broker, prefix):
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(m):
        got.append(m.payload)
        m.ack()
        arrived.set()

    cid = _cid("p311")
    topic = f"{prefix}/agents/a1/tasks"

    def client() -> MqttTransport:
        return MqttTransport(broker.url, client_id=cid, subscriptions=[(topic, 1)], on_message=on_message,
                             mqtt_version=V311)  # fmt: skip

    t = client()
    t.start(connect_timeout=5)
    assert t.wait_subscribed(5)
    assert _protocol_logged(broker, cid) == "p2"
    t.stop()
    with Collector(broker.url, [], mqtt_version=V311) as c:
        c.publish(topic, b"while-away")
    t = client()
    sessions: list[bool] = []
    t._on_connect = sessions.append
    t.start(connect_timeout=5)
    try:
        assert arrived.wait(5), "the queued message did not arrive after the reconnect"
        assert got == [b"while-away"] and sessions == [True]
    finally:
        t.stop()


def test_a_311_will_is_published_at_once_although_a_delay_was_asked(broker, prefix):
    """3.1.1 has no will delay: the will comes as soon as the connection is gone."""
    status = f"{prefix}/agents/a2/status"
    t = MqttTransport(broker.url, client_id=_cid("will"), mqtt_version=V311,
                      will=Will(status, b"gone", retain=True, delay=30))  # fmt: skip
    t.start(connect_timeout=5)
    assert t.wait_connected(5)
    with Collector(broker.url, [status], mqtt_version=V311) as c:
        t0 = time.monotonic()
        t.stop(final=[(f"{prefix}/never", b"x", False)], timeout=0)  # not acked in 0 s: leave with the will
        (msg,) = c.wait_for(lambda m: m.topic == status, 5)
        assert msg.payload == b"gone"
        assert time.monotonic() - t0 < 5, "a 30 s delay would have held it back"


def test_a_311_clean_stop_publishes_no_will(broker, prefix):
    status = f"{prefix}/agents/a3/status"
    t = MqttTransport(broker.url, client_id=_cid("clean"), mqtt_version=V311, will=Will(status, b"gone", retain=False))
    t.start(connect_timeout=5)
    assert t.wait_connected(5)
    with Collector(broker.url, [status, f"{prefix}/bye"], mqtt_version=V311) as c:
        t.stop(final=[(f"{prefix}/bye", b"bye", False)])
        c.wait_for(lambda m: m.topic == f"{prefix}/bye", 5)
        time.sleep(0.3)  # a will would follow the disconnect at once
        assert not [m for m in c.messages if m.topic == status]


def test_311_refuses_v5_only_properties_and_non_portable_topics(broker, prefix):
    t = MqttTransport(broker.url, client_id=_cid("refuse"), mqtt_version=V311)
    with pytest.raises(ValueError, match="response topic"):
        t.publish(f"{prefix}/submit", b"{}", response_topic=f"{prefix}/submit/reply/me")
    with pytest.raises(ValueError, match="'.' or ' '"):
        t.publish(f"{prefix}/submit/reply/req.1", b"{}")


def test_311_subscribers_see_live_and_retained_messages_as_the_spec_says(broker, prefix):
    """A live message arrives with retain=0 whatever it was published with (3.1.1 has no
    retain-as-published); a retained one replayed to a new subscription has retain=1."""
    topic = f"{prefix}/agents/a4/status"
    with Collector(broker.url, [topic], mqtt_version=V311) as live:
        live.publish(topic, b"r1", retain=True)
        (m,) = live.wait_for(lambda m: m.payload == b"r1", 5)
        assert m.retain is False
    with Collector(broker.url, [topic], mqtt_version=V311) as late:
        (m,) = late.wait_for(lambda m: m.payload == b"r1", 5)
        assert m.retain is True
        late.publish(topic, b"", retain=True)
