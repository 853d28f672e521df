"""The benchmark's user: submits tasks over MQTT (``P/submit``) and follows their replies and
retained summaries, recording when each arrived. A task's summary is published by the master
after the task's last result is committed, so "summary arrived" bounds "every result stored"."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass

from mschedule_agent import protocol
from mschedule_agent.protocol import Submit, SubmitReply, Summary, Topics
from mschedule_agent.transport import Incoming, MqttTransport

_seq = itertools.count()


@dataclass(frozen=True, slots=True)
class Finished:
    task_id: str
    summary: Summary
    at: float  #: perf_counter when the summary arrived


class BenchClient:
    """Use as a context manager. Thread-safe waits on replies and summaries."""

    def __init__(self, url: str, prefix: str, *, count_tasks: bool = False) -> None:
        """``count_tasks``: also count every ``task`` message the master publishes to agents
        (first dispatches and re-deliveries), in ``task_messages``."""
        self.topics = Topics(prefix)
        self.task_messages = 0
        subscriptions = [(f"{prefix}/submit/reply/+", 1), (f"{prefix}/tasks/+/summary", 1)]
        if count_tasks:
            subscriptions.append((f"{prefix}/agents/+/tasks", 0))
        self._tag = uuid.uuid4().hex[:8]
        self._cond = threading.Condition()
        self._replies: dict[str, tuple[SubmitReply, float]] = {}
        self._summaries: dict[str, Finished] = {}
        self._ready = threading.Event()
        self.transport = MqttTransport(
            url,
            client_id=f"bench-user-{self._tag}",
            subscriptions=subscriptions,
            on_message=self._on_message,
            on_connect=lambda _sp: self._ready.set(),
            clean_start=True,
            session_expiry=0,
            manual_ack=False,
        )

    def __enter__(self) -> BenchClient:
        self.transport.start(connect_timeout=10)
        if not self._ready.wait(10):
            raise TimeoutError("bench client did not connect")
        if not self.transport.wait_subscribed(10):
            raise TimeoutError("bench client did not subscribe")
        return self

    def __exit__(self, *exc) -> None:
        self.transport.stop()

    def _on_message(self, msg: Incoming) -> None:
        now = time.perf_counter()
        if msg.topic.endswith("/tasks"):
            self.task_messages += 1
            return
        try:
            decoded = protocol.decode(msg.payload)
        except protocol.DecodeError:
            return
        with self._cond:
            if isinstance(decoded, SubmitReply) and decoded.request_id:
                self._replies[decoded.request_id] = (decoded, now)
            elif isinstance(decoded, Summary):
                self._summaries.setdefault(decoded.task_id, Finished(decoded.task_id, decoded, now))
            self._cond.notify_all()

    def submit(self, targets: list[str], script: str = "true", **fields) -> tuple[str, float]:
        """Publish a submit; returns (request_id, perf_counter at publish)."""
        request_id = f"b{self._tag}-{next(_seq)}"
        spec = Submit(targets=targets, script_text=script, request_id=request_id, **fields)
        payload = protocol.encode(spec)
        at = time.perf_counter()
        self.transport.publish(self.topics.submit(), payload, qos=1)
        return request_id, at

    def _wait(self, pick, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = pick()
                if value is not None:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {what} within {timeout}s")
                self._cond.wait(remaining)

    def reply(self, request_id: str, timeout: float = 30.0) -> SubmitReply:
        reply, _at = self._wait(lambda: self._replies.get(request_id), timeout, f"reply to {request_id}")
        if not reply.ok:
            raise RuntimeError(f"submit refused: {reply.error} (field {reply.field})")
        return reply

    def finished(self, task_id: str, timeout: float = 60.0) -> Finished:
        return self._wait(lambda: self._summaries.get(task_id), timeout, f"summary of task {task_id}")

    def run(self, targets: list[str], timeout: float = 60.0, **fields) -> tuple[Finished, float]:
        """Submit and wait for the summary: (finished, seconds from submit to summary)."""
        request_id, at = self.submit(targets, **fields)
        reply = self.reply(request_id, timeout)
        done = self.finished(reply.task_id, timeout)
        return done, done.at - at


def check_summary(done: Finished, expected: list[str], *, state: str = "SUCCEED", code: int = 0) -> list[str]:
    """Problems with a finished task: a target missing, in the wrong state, or with the wrong code."""
    problems = []
    targets = done.summary.targets
    missing = [a for a in expected if a not in targets]
    if missing:
        problems.append(f"{len(missing)} target(s) missing from the summary, e.g. {missing[:3]}")
    wrong = [a for a in expected if a in targets and (_get(targets[a], "state") != state or _get(targets[a], "code") != code)]
    if wrong:
        problems.append(f"{len(wrong)} target(s) not {state}/{code}, e.g. {wrong[0]}: {targets[wrong[0]]}")
    extra = set(targets) - set(expected)
    if extra:
        problems.append(f"{len(extra)} unexpected target(s) in the summary")
    if done.summary.state != state:
        problems.append(f"task state {done.summary.state}, expected {state}")
    return problems


def _get(entry, key):
    return entry.get(key) if isinstance(entry, dict) else None
