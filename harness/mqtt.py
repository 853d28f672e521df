"""Test-side MQTT helpers built on the product's own transport."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable

from mschedule_agent.transport import Incoming, MqttTransport

_ids = itertools.count()


class Collector:
    """Subscribes to ``topics`` and records every message; ``wait_for`` polls them.

    Use as a context manager; it connects with a clean, non-persistent session, in MQTT 5
    or (``mqtt_version="3.1.1"``) 3.1.1.
    """

    def __init__(self, url: str, topics: list[str], *, client_id: str | None = None, mqtt_version: str = "5") -> None:
        self.messages: list[Incoming] = []
        self.arrivals: list[float] = []  #: time.monotonic() at each message's arrival (same order)
        self._cond = threading.Condition()
        self.transport = MqttTransport(
            url,
            client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}-{next(_ids)}",
            subscriptions=[(t, 1) for t in topics],
            on_message=self._on_message,
            on_connect=lambda _sp: self._subscribed.set(),
            clean_start=True,
            session_expiry=0,
            manual_ack=False,
            mqtt_version=mqtt_version,
        )
        self._subscribed = threading.Event()

    def _on_message(self, msg: Incoming) -> None:
        with self._cond:
            self.messages.append(msg)
            self.arrivals.append(time.monotonic())
            self._cond.notify_all()

    def __enter__(self) -> Collector:
        self.transport.start(connect_timeout=10)
        if not self._subscribed.wait(10) or not self.transport.wait_subscribed(10):
            raise TimeoutError("collector did not connect and subscribe")
        return self

    def __exit__(self, *exc) -> None:
        self.transport.stop()

    def publish(self, topic: str, payload: bytes, **kw) -> None:
        if not self.transport.publish(topic, payload, **kw).wait(10):
            raise TimeoutError(f"publish to {topic} was not acknowledged")

    def wait_for(self, pred: Callable[[Incoming], bool], timeout: float = 10.0, count: int = 1) -> list[Incoming]:
        """Wait until ``count`` recorded messages satisfy ``pred``; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if pred(m)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {len(found)} of {count} expected messages after {timeout}s")
                self._cond.wait(remaining)
