"""Baselines measured in the same run, so scenario figures read as ratios to the machine's
physical limits: how fast Python can fork+exec+wait ``/bin/sh -c true``, and a bare QoS-1
round trip through the same mosquitto the scenarios use.

The round trip is measured as a plain paho ping-pong would be: two bare paho clients
(TCP_NODELAY, as every mschedule client sets it), in a fresh interpreter of their own
(``python -m bench.baselines URL COUNT``), so that nothing of the bench's own process (its
threads, what it imported and allocated) slows the figure the scenarios are divided by.
The same ping-pong through mschedule's transport wrapper is reported next to it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from mschedule_agent.transport import Incoming, MqttTransport

from .stats import latency_ms

TRUE_ARGV = ["/bin/sh", "-c", "true"]


def spawn_rate(threads: int, count: int) -> dict[str, float]:
    """fork+exec+wait of ``/bin/sh -c true``, ``count`` times over ``threads`` threads."""

    def one(_i: int) -> None:
        subprocess.Popen(TRUE_ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).wait()

    for _ in range(min(20, count)):  # warm up the page cache and the interpreter
        one(0)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    elapsed = time.perf_counter() - start
    return {"threads": threads, "count": count, "seconds": round(elapsed, 3), "per_s": round(count / elapsed, 1)}


class _Echo:
    """A pinger and an echoer, each its own paho client: publish -> echo -> reply, QoS 1."""

    def __init__(self, url: str, prefix: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.ping_topic = f"{prefix}/baseline/{tag}/ping"
        self.pong_topic = f"{prefix}/baseline/{tag}/pong"
        self._got = threading.Event()
        self.echoer = MqttTransport(
            url, client_id=f"bench-echo-{tag}", subscriptions=[(self.ping_topic, 1)], on_message=self._echo,
            clean_start=True, session_expiry=0, manual_ack=False,
        )
        self.pinger = MqttTransport(
            url, client_id=f"bench-ping-{tag}", subscriptions=[(self.pong_topic, 1)], on_message=self._pong,
            clean_start=True, session_expiry=0, manual_ack=False,
        )

    def _echo(self, msg: Incoming) -> None:
        self.echoer.publish(self.pong_topic, msg.payload, qos=1)

    def _pong(self, msg: Incoming) -> None:
        self._got.set()

    def __enter__(self) -> _Echo:
        for t in (self.echoer, self.pinger):
            t.start(connect_timeout=10)
            if not t.wait_connected(10) or not t.wait_subscribed(10):
                raise TimeoutError("baseline client did not connect and subscribe")
        return self

    def __exit__(self, *exc) -> None:
        self.pinger.stop()
        self.echoer.stop()

    def once(self, timeout: float = 5.0) -> float:
        self._got.clear()
        start = time.perf_counter()
        self.pinger.publish(self.ping_topic, b"x" * 200, qos=1)
        if not self._got.wait(timeout):
            raise TimeoutError(f"no echo within {timeout}s")
        return time.perf_counter() - start


def mqtt_round_trip(url: str, prefix: str, count: int) -> dict[str, float]:
    """QoS-1 publish -> echo -> reply through the broker at ``url``, ``count`` times."""
    with _Echo(url, prefix) as echo:
        for _ in range(min(50, count)):
            echo.once()
        rtts = [echo.once() for _ in range(count)]
    return latency_ms(rtts)


def plain_round_trip(url: str, prefix: str, count: int) -> dict[str, float]:
    """QoS-1 publish -> echo -> reply between two bare paho clients (no mschedule code)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from mschedule_agent.transport import BrokerURL

    broker = BrokerURL.parse(url)
    tag = uuid.uuid4().hex[:8]
    ping, pong = f"{prefix}/baseline/{tag}/ping", f"{prefix}/baseline/{tag}/pong"
    got, subscribed = threading.Event(), threading.Semaphore(0)

    def client(name: str, topic: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-plain-{name}-{tag}", protocol=mqtt.MQTTv5)
        c.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_a: subscribed.release()
        c.connect(broker.host, broker.port)
        c.loop_start()
        return c

    echoer, pinger = client("echo", ping), client("ping", pong)
    echoer.on_message = lambda c, _u, m: c.publish(pong, m.payload, qos=1)
    pinger.on_message = lambda _c, _u, _m: got.set()
    try:
        if not (subscribed.acquire(timeout=10) and subscribed.acquire(timeout=10)):
            raise TimeoutError("baseline clients did not subscribe")

        def once() -> float:
            got.clear()
            start = time.perf_counter()
            pinger.publish(ping, b"x" * 200, qos=1)
            if not got.wait(5.0):
                raise TimeoutError("no echo within 5 s")
            return time.perf_counter() - start

        for _ in range(min(50, count)):
            once()
        return latency_ms([once() for _ in range(count)])
    finally:
        for c in (pinger, echoer):
            c.disconnect()
            c.loop_stop()


def plain_round_trip_apart(url: str, prefix: str, count: int) -> dict[str, float]:
    """:func:`plain_round_trip` in a fresh interpreter (``python -m bench.baselines``)."""
    argv = [sys.executable, "-m", "bench.baselines", url, prefix, str(count)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120 + count / 100, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(url: str, prefix: str, *, quick: bool) -> dict[str, dict]:
    n_spawn = 300 if quick else 2000
    n_rtt = 300 if quick else 3000
    return {
        "spawn_1_thread": spawn_rate(1, n_spawn),
        "spawn_2_threads": spawn_rate(2, n_spawn),
        "mqtt_qos1_rtt": plain_round_trip_apart(url, prefix, n_rtt),
        "transport_qos1_rtt": mqtt_round_trip(url, prefix, n_rtt),
    }


if __name__ == "__main__":  # python -m bench.baselines URL PREFIX COUNT: one JSON line
    print(json.dumps(plain_round_trip(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
