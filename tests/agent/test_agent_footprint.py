"""What an idle plain-mqtt agent process loads, and the first-connect path that keeps
tenacity out of it (issue 3: idle RSS <= 25 MB)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import orjson
import pytest

from harness.broker import free_port
from mschedule_agent.transport import MqttTransport, TransportError

#: Modules an idle mqtt:// agent must not load (each costs 1.4-5 MB of RSS).
HEAVY = ("ssl", "_ssl", "hashlib", "_hashlib", "urllib.request", "http.client", "email", "tenacity", "tomllib",
         "prometheus_client")  # fmt: skip

_PROBE = r"""
import sys, threading, uuid, orjson
from mschedule_agent import daemon
from mschedule_agent.transport import MqttTransport
url, topic = sys.argv[1], sys.argv[2]
got = threading.Event()
def on_message(m):
    m.ack()
    got.set()
t = MqttTransport(url, client_id="probe-" + uuid.uuid4().hex[:8], subscriptions=[(topic, 1)],
                  on_message=on_message, clean_start=True, session_expiry=0)
t.start(connect_timeout=20)
ok = t.wait_connected(20)
import time
deadline = time.monotonic() + 20
while ok and not got.is_set() and time.monotonic() < deadline:  # until our SUBACK has landed
    t.publish(topic, b"x" * 300_000).wait(5)  # big enough to fill the socket buffer (would-block path)
    got.wait(0.2)
t.stop()
print(orjson.dumps({"connected": ok, "got": got.is_set(), "loaded": sorted(sys.modules)}).decode())
"""


def test_plain_mqtt_process_never_loads_ssl_http_email_tenacity_or_tomllib(broker, prefix):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, broker.url, f"{prefix}/probe"], capture_output=True, timeout=60, check=True
    )
    report = orjson.loads(out.stdout.splitlines()[-1])
    assert report["connected"] and report["got"]
    assert [m for m in HEAVY if m in report["loaded"]] == []


def test_a_module_loaded_after_the_transport_is_the_real_one():
    out = subprocess.run(
        [sys.executable, "-c", "import mschedule_agent.daemon, mschedule_agent.transport as t, ssl, urllib.request, hashlib; "
         "print(type(ssl).__name__, type(urllib.request).__name__, hashlib.sha1(b'').hexdigest()[:4], "
         "t.paho.ssl.CERT_REQUIRED == ssl.CERT_REQUIRED, t.paho.urllib.request.getproxies is urllib.request.getproxies)"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["module", "module", "da39", "True", "True"]


def test_first_connect_retries_until_the_broker_appears(own_broker):
    own_broker.stop()
    t = MqttTransport(own_broker.url, client_id=f"late-{uuid.uuid4().hex[:8]}", clean_start=True, session_expiry=0)
    errors: list[BaseException] = []

    def connect():
        try:
            t.start(connect_timeout=60)
        except BaseException as e:  # reported to the test thread
            errors.append(e)

    th = threading.Thread(target=connect, daemon=True)
    th.start()
    try:
        assert not t.wait_connected(1.0)
        own_broker.start()
        assert t.wait_connected(60), "did not connect after the broker came up"
        th.join(10)
        assert errors == []
    finally:
        t.stop(timeout=2)


def test_first_connect_gives_up_after_connect_timeout():
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    t = MqttTransport(url, client_id=f"none-{uuid.uuid4().hex[:8]}", clean_start=True, session_expiry=0)
    with pytest.raises(TransportError, match="cannot reach broker"):
        t.start(connect_timeout=1.5)
