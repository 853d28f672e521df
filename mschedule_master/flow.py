"""Flow control for task copies: the master's own queue and a bounded window in flight.

A fleet-wide fan-out decides thousands of dispatches at once. Handed to the MQTT client
all together, they would wait in its queue (paho drops QoS-1 publishes past 65,535 in
flight) while their delivery clocks ran. Instead the engine queues each task copy here
after its batch commits; :meth:`Flow.take` releases copies only while fewer than
``window`` are published and not yet acknowledged by the broker (PUBACK), and
:meth:`Flow.settled` returns the copies the broker took, in order, so that their
delivery clocks start then (docs/rollout.md, "Flow control").

Pure bookkeeping: no clock, no transport, no rollout. The engine publishes and decides
which copies are still wanted.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

from mschedule_agent.transport import Publication

#: Task copies published and not yet acknowledged by the broker, at most (master setting
#: ``dispatch_window``). Far below paho's 65,535 packet ids; large enough that a broker on
#: loopback is never left idle (bench/, "fan-out").
DEFAULT_WINDOW = 2000

Key = tuple[str, str]  #: (task id, agent id)


@dataclass(frozen=True, slots=True)
class Backlog:
    """How throttled delivery is, for the API, ``mschedule status`` and ``/metrics``."""

    queued: int  #: copies in the master's own queue (all tasks)
    in_flight: int  #: copies published, not yet acknowledged by the broker (all tasks)
    window: int  #: at most this many in flight
    task_queued: int = 0  #: ... of them for one task
    task_in_flight: int = 0

    @property
    def throttled(self) -> bool:
        """Copies wait in the master's queue because the window is full."""
        return self.queued > 0 and self.in_flight >= self.window


class Flow:
    def __init__(self, *, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"dispatch_window must be >= 1, got {window}")
        self.window = window
        self._queue: deque[Key] = deque()
        self._flight: deque[tuple[Key, Publication, float]] = deque()  #: (copy, its publication, sent at)
        self.lag = 0.0  #: how long the last copy the broker took had been in flight (seconds)
        self._held: set[Key] = set()  #: queued or in flight: a second copy would only queue behind it
        self._queued_by_task: Counter[str] = Counter()
        self._flight_by_task: Counter[str] = Counter()

    def holds(self, task_id: str, agent_id: str) -> bool:
        """A copy for this target is queued or in flight."""
        return (task_id, agent_id) in self._held

    def put(self, task_id: str, agent_id: str) -> bool:
        """Queue a copy; False (nothing queued) when one is already queued or in flight."""
        key = (task_id, agent_id)
        if key in self._held:
            return False
        self._held.add(key)
        self._queue.append(key)
        self._queued_by_task[task_id] += 1
        return True

    def room(self) -> int:
        """How many copies may be published now."""
        return max(0, self.window - len(self._flight)) if self._queue else 0

    def take(self) -> Key | None:
        """The next queued copy, if the window has room; the caller publishes it
        (:meth:`sent`) or drops it (:meth:`drop`)."""
        if not self._queue or len(self._flight) >= self.window:
            return None
        key = self._queue.popleft()
        self._dec(self._queued_by_task, key[0])
        return key

    def sent(self, key: Key, publication: Publication, now: float) -> None:
        self._flight.append((key, publication, now))
        self._flight_by_task[key[0]] += 1

    def drop(self, key: Key) -> None:
        """A taken copy that is no longer wanted (acked, killed, ended, agent offline)."""
        self._held.discard(key)

    def settled(self, now: float) -> list[Key]:
        """The copies the broker acknowledged since the last call, oldest first (a copy
        still unacknowledged holds back the ones behind it: PUBACKs come in order)."""
        done: list[Key] = []
        flight = self._flight
        while flight and flight[0][1].wait(0):
            key, _, sent_at = flight.popleft()
            self.lag = max(0.0, now - sent_at)
            self._dec(self._flight_by_task, key[0])
            self._held.discard(key)
            done.append(key)
        return done

    def allowance(self, now: float) -> float:
        """Extra accept-by time for a copy published now: twice what copies take to reach
        the broker at present (the last one's time in flight, or the oldest unacknowledged
        one's age if longer), in whole seconds. A copy's accept-by is written before it
        leaves; the agent must not refuse it for our own connection's slowness."""
        oldest = now - self._flight[0][2] if self._flight else 0.0
        return float(math.ceil(2 * max(self.lag, oldest)))

    @property
    def busy(self) -> bool:
        """Copies are queued or in flight: someone should call settled()/take() soon."""
        return bool(self._queue or self._flight)

    def backlog(self, task_id: str | None = None) -> Backlog:
        return Backlog(
            queued=len(self._queue), in_flight=len(self._flight), window=self.window,
            task_queued=self._queued_by_task.get(task_id, 0) if task_id else 0,
            task_in_flight=self._flight_by_task.get(task_id, 0) if task_id else 0,
        )  # fmt: skip

    @staticmethod
    def _dec(counter: Counter[str], task_id: str) -> None:
        counter[task_id] -= 1
        if counter[task_id] <= 0:
            del counter[task_id]
