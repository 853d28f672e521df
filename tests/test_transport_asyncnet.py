"""MqttTransport driven by an asyncio loop (mschedule_agent/asyncnet.py, the master's way),
against a real mosquitto: messages arrive on the loop's thread, publications are
acknowledged, a broker restart is survived, and nothing that may block runs on the loop."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from harness.loops import loop_network
from harness.mqtt import Collector
from harness.procs import wait_until
from mschedule_agent.transport import MqttTransport


class Ticker:
    """Counts the loop's turns every ``every`` s: the largest gap says how long it was held."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every: float = 0.02) -> None:
        self.loop, self.every = loop, every
        self.stamps: list[float] = []
        loop.call_soon_threadsafe(self._tick)

    def _tick(self) -> None:
        self.stamps.append(time.monotonic())
        if len(self.stamps) < 10_000:  # bounded: 200 s at the default pace
            self.loop.call_later(self.every, self._tick)

    def max_gap(self, since: float) -> float:
        stamps = [s for s in self.stamps if s >= since]
        return max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0.0)


def test_messages_arrive_on_the_loop_thread_without_a_thread_of_pahos(own_broker, prefix):
    got: list[tuple[bytes, int]] = []
    with loop_network() as (_loop, net, thread):
        threads_before = threading.active_count()

        def on_message(m):
            got.append((m.payload, threading.get_ident()))
            m.ack()

        t = MqttTransport(own_broker.url, client_id=f"an-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/x", 1)],
                          on_message=on_message, network=net)  # fmt: skip
        t.start(connect_timeout=10)
        try:
            assert t.wait_connected(10) and t.wait_subscribed(10)
            assert threading.active_count() == threads_before  # paho's loop_start() not called
            assert t.publish(f"{prefix}/x", b"own").wait(10)  # PUBACK read by the loop
            with Collector(own_broker.url, []) as pub:
                for i in range(200):
                    pub.publish(f"{prefix}/x", b"m%d" % i)
            wait_until(lambda: len(got) >= 201, 15, what="every message")
            assert sorted(p for p, _ in got) == sorted([b"own"] + [b"m%d" % i for i in range(200)])
            assert {ident for _, ident in got} == {thread.ident}
        finally:
            t.stop(timeout=5)


def test_a_broker_restart_is_survived_and_the_loop_stays_free(own_broker, prefix):
    got: list[bytes] = []
    with loop_network() as (loop, net, _thread):
        ticker = Ticker(loop)

        def on_message(m):
            got.append(m.payload)
            m.ack()

        t = MqttTransport(own_broker.url, client_id=f"an-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/y", 1)],
                          on_message=on_message, network=net)  # fmt: skip
        t.start(connect_timeout=10)
        try:
            assert t.wait_subscribed(10)
            down_at = time.monotonic()
            own_broker.stop()
            wait_until(lambda: not t.is_connected(), 15, what="disconnected")
            time.sleep(1.5)  # reconnects refused meanwhile, at the backoff's pace
            own_broker.start()
            wait_until(t.is_connected, 60, what="reconnected")
            assert t.wait_subscribed(10)
            assert ticker.max_gap(down_at) < 0.5, "the loop was held while the broker was away"
            with Collector(own_broker.url, []) as pub:
                pub.publish(f"{prefix}/y", b"after")
            wait_until(lambda: b"after" in got, 15, what="a message after the restart")
        finally:
            t.stop(timeout=5)


def test_a_reconnect_runs_off_the_loop(own_broker):
    """A connect may wait its whole TCP timeout: call_later runs it in the loop's executor,
    so the loop keeps turning meanwhile."""
    with loop_network() as (loop, net, thread):
        ticker = Ticker(loop)
        ran_on: list[int | None] = []
        done = threading.Event()

        def slow_reconnect() -> None:
            ran_on.append(threading.get_ident())
            time.sleep(1.0)
            done.set()

        start = time.monotonic()
        net.call_later(0.05, slow_reconnect)
        assert done.wait(10)
        assert ran_on and ran_on[0] != thread.ident
        assert ticker.max_gap(start) < 0.5


def test_unacknowledged_counts_publications_until_the_brokers_puback(own_broker, prefix):
    """What the master's inbox waits on (daemon.OUT_BACKLOG_MAX): QoS-1 publications the
    broker has not acknowledged, whether in flight or queued in paho."""
    with loop_network() as (_loop, net, _thread):
        t = MqttTransport(own_broker.url, client_id=f"an-{uuid.uuid4().hex[:6]}", network=net)
        t.start(connect_timeout=10)
        try:
            assert t.wait_connected(10)
            pubs = [t.publish(f"{prefix}/u", b"x") for _ in range(5)]
            assert all(p.wait(10) for p in pubs)
            assert t.unacknowledged() == 0
            own_broker.stop()
            wait_until(lambda: not t.is_connected(), 15, what="disconnected")
            for _ in range(3):
                t.publish(f"{prefix}/u", b"y")
            assert t.unacknowledged() == 3
            own_broker.start()
            wait_until(lambda: t.unacknowledged() == 0, 60, what="the three re-sent and acknowledged")
        finally:
            t.stop(timeout=5)
