"""Scenario 5's two measurements.

* Agent idle: a real ``mschedule-agent`` daemon process, connected and heartbeating, sampled
  from /proc for RSS and CPU.
* Master result ingestion: ``n`` protocol-valid fake agents (a retained ``register`` each,
  published by one client) are targets of one task with parallel = all; once the master has
  dispatched every ``task``, the client publishes every agent's ``result`` as fast as it can.
  Ingestion rate = n / (first result published -> the task's summary arrived), i.e. every
  result decoded, stored, committed and the task closed.
"""

from __future__ import annotations

import threading
import time
import uuid

from harness.procs import Proc
from mschedule_agent import protocol
from mschedule_agent.protocol import Register, Result, Task, Topics
from mschedule_agent.transport import Incoming, MqttTransport

from .client import BenchClient, check_summary
from .master import MasterProc
from .procstat import Watch, cpu_share, pss_uss_bytes, sample
from .report import Outcome


def agent_idle(ctx, seconds: float) -> dict:
    prefix = ctx.prefix("s5-idle")
    d = ctx.dir("s5-idle")
    agent = Proc.python(
        "mschedule_agent",
        "--broker", ctx.broker.url, "--state-dir", str(d / "state"), "--topic-prefix", prefix,
        "--heartbeat", "5", "--log-level", "INFO",
        log_path=d / "agent.log",
    )
    with agent:
        if not agent.wait_for_log("online", 30):
            raise RuntimeError(f"agent did not come online:\n{agent.log()[-2000:]}")
        time.sleep(1.0)  # let start-up settle: idle means after it
        watch = Watch(agent.pid, interval=1.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.5)
            watch.poll()
        summary = watch.summary()
        try:
            pss, uss = pss_uss_bytes(agent.pid)
            summary.update({"pss_mb": round(pss / 2**20, 1), "uss_mb": round(uss / 2**20, 1)})
        except OSError:
            pass
        return summary


class FakeAgents:
    """One MQTT client speaking for ``n`` agents: registers them, records their tasks.
    With ``respond``, answers each first delivery at once with ``ack``, ``started`` and a
    SUCCEED ``result``, as an infinitely fast agent would (no script runs): what is left
    of a fan-out's time is the master's and the broker's."""

    def __init__(self, url: str, prefix: str, n: int, *, respond: bool = False, ack: bool = False) -> None:
        self.topics = Topics(prefix)
        self.respond = respond
        self.ack = ack  #: acknowledge each first delivery at once, as a real agent does
        tag = uuid.uuid4().hex[:6]
        self.ids = [f"fake{tag}{i:06d}" for i in range(n)]
        self.tasks: dict[str, str] = {}  # agent id -> task id
        self.deliveries = 0  #: task messages received, re-deliveries included
        self.last_task_at = 0.0  #: perf_counter when the last task message arrived
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self.transport = MqttTransport(
            url, client_id=f"bench-fake-agents-{tag}", subscriptions=[(f"{prefix}/agents/+/tasks", 1)],
            on_message=self._on_message, on_connect=lambda _sp: self._ready.set(),
            clean_start=True, session_expiry=0, manual_ack=False,
        )
        # The answers (ack, started, result) go out on connections of SENDER_AGENTS agents
        # each: one connection answering 100,000 first deliveries queued more QoS-1
        # publications than paho has packet ids (65,535) and dropped the rest.
        # Up to SENDER_AGENTS agents, the one connection does it all.
        self._extra = [
            MqttTransport(url, client_id=f"bench-fake-answers-{tag}-{k}", clean_start=True, session_expiry=0)
            for k in range((n + self.SENDER_AGENTS - 1) // self.SENDER_AGENTS)
        ] if n > self.SENDER_AGENTS else []  # fmt: skip
        self._sender = {a: self._extra[i // self.SENDER_AGENTS] for i, a in enumerate(self.ids)} if self._extra else {}

    def __enter__(self) -> FakeAgents:
        for t in self._extra:
            t.start(connect_timeout=10)
        self.transport.start(connect_timeout=10)
        if not self._ready.wait(10):
            raise TimeoutError("fake agents did not connect")
        time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        for agent_id in self.ids:  # clear the retained statuses
            self.transport.publish(self.topics.status(agent_id), b"", qos=0, retain=True)
        self.transport.stop()
        for t in self._extra:
            t.stop(timeout=2)

    def _on_message(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        try:
            task = protocol.decode_as(msg.payload, Task)
        except protocol.DecodeError:
            return
        if info is None or info.agent_id is None:
            return
        with self._cond:
            self.deliveries += 1
            self.last_task_at = time.perf_counter()
            first = info.agent_id not in self.tasks
            self.tasks[info.agent_id] = task.id
            self._cond.notify_all()
        if self.respond and first:
            self._answer(info.agent_id, task.id)
        elif self.ack and first:
            ack = protocol.Ack(id=task.id, agent_id=info.agent_id, at=time.time())
            self._sender.get(info.agent_id, self.transport).publish(self.topics.results(info.agent_id), protocol.encode(ack), qos=1)

    def _answer(self, agent_id: str, task_id: str) -> None:
        now = time.time()
        topic = self.topics.results(agent_id)
        sender = self._sender.get(agent_id, self.transport)
        for msg in (
            protocol.Ack(id=task_id, agent_id=agent_id, at=now),
            protocol.Started(id=task_id, agent_id=agent_id, started_at=now),
            Result(id=task_id, agent_id=agent_id, state="SUCCEED", code=0, started_at=now, finished_at=now),
        ):
            sender.publish(topic, protocol.encode(msg), qos=1)

    #: QoS-1 publishes in flight at most: paho has 65535 packet ids and drops a publish
    #: when the next one is still taken (MQTT_ERR_QUEUE_SIZE).
    WINDOW = 30_000
    #: Agents answered per connection (their acks, started and results on first delivery).
    SENDER_AGENTS = 20_000

    def register(self) -> None:
        now = time.time()
        pubs = []
        for agent_id in self.ids:
            reg = Register(id=agent_id, hostname=agent_id, ip=["192.0.2.1"], heartbeat=3600.0, started_at=now)
            pubs.append(self.transport.publish(self.topics.status(agent_id), protocol.encode(reg), retain=True))
            if len(pubs) >= self.WINDOW:
                for p in pubs:
                    p.wait(60)
                pubs = []
        for p in pubs:
            p.wait(60)

    def wait_dispatched(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.tasks) < len(self.ids):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {len(self.tasks)} of {len(self.ids)} tasks dispatched after {timeout}s")
                self._cond.wait(remaining)

    def results(self) -> list[tuple[str, bytes]]:
        """(topic, payload) of a SUCCEED result for every dispatched task, encoded ahead of time."""
        now = time.time()
        out = []
        for agent_id in self.ids:
            r = Result(id=self.tasks[agent_id], agent_id=agent_id, state="SUCCEED", code=0, started_at=now, finished_at=now)
            out.append((self.topics.results(agent_id), protocol.encode(r)))
        return out

    def publish_all(self, messages: list[tuple[str, bytes]]) -> float:
        """Publish everything at QoS 1; returns seconds until the last PUBACK."""
        start = time.perf_counter()
        for i in range(0, len(messages), self.WINDOW):
            pubs = [self.transport.publish(topic, payload, qos=1) for topic, payload in messages[i : i + self.WINDOW]]
            for p in pubs:
                p.wait(60)
        return time.perf_counter() - start


def wait_idle(pid: int, *, below: float = 0.05, window: float = 0.5, timeout: float = 60.0) -> float:
    """Wait until ``pid`` uses less than ``below`` of a core over ``window`` seconds; returns
    the seconds waited."""
    start = time.monotonic()
    prev = sample(pid)
    while time.monotonic() - start < timeout:
        time.sleep(window)
        cur = sample(pid)
        if cpu_share(prev, cur) < below:
            break
        prev = cur
    return time.monotonic() - start


def master_bound_fanout(ctx, n: int, o: Outcome) -> dict:
    """A fan-out to ``n`` instant protocol-level agents: the master's share of a fan-out."""
    prefix = ctx.prefix(f"s2-instant-{n}")
    d = ctx.dir(f"s2-instant-{n}")
    with MasterProc(ctx.broker.url, prefix, d) as master, FakeAgents(ctx.broker.url, prefix, n, respond=True) as fake:
        fake.register()
        master.wait_online(n, 120)
        with BenchClient(ctx.broker.url, prefix) as client:
            done, seconds = client.run(fake.ids, timeout=120, parallel=n)
            o.problems.extend(check_summary(done, fake.ids))
    return {"agents": n, "seconds": round(seconds, 3)}


def master_bound_rollout(ctx, n: int, parallel: int, o: Outcome) -> dict:
    """Scenario 3 against instant protocol-level agents: how well the master keeps its window
    full, against 20 one-target round trips through the same agents."""
    prefix = ctx.prefix(f"s3-instant-{n}")
    d = ctx.dir(f"s3-instant-{n}")
    with MasterProc(ctx.broker.url, prefix, d) as master, FakeAgents(ctx.broker.url, prefix, n, respond=True) as fake:
        fake.register()
        master.wait_online(n, 120)
        with BenchClient(ctx.broker.url, prefix) as client:
            singles = []
            for i in range(25):
                fake.tasks.pop(fake.ids[i], None)  # let it answer this agent's next task too
                done, rtt = client.run([fake.ids[i]], timeout=30)
                o.problems.extend(check_summary(done, [fake.ids[i]]))
                if i >= 5:
                    singles.append(rtt)
            fake.tasks.clear()
            done, seconds = client.run(fake.ids, timeout=120, parallel=parallel)
            o.problems.extend(check_summary(done, fake.ids))
    one = sorted(singles)[len(singles) // 2]
    ideal = n / parallel * one
    return {"seconds": round(seconds, 3), "one_target_p50_ms": round(one * 1000, 3), "ratio": round(seconds / ideal, 2)}


def master_ingestion(ctx, n: int, o: Outcome) -> dict:
    prefix = ctx.prefix("s5-ingest")
    d = ctx.dir("s5-ingest")
    with MasterProc(ctx.broker.url, prefix, d) as master, FakeAgents(ctx.broker.url, prefix, n, ack=True) as fake:
        fake.register()
        master.wait_online(n, 120)
        with BenchClient(ctx.broker.url, prefix) as client:
            request_id, _ = client.submit(fake.ids, parallel=n)
            reply = client.reply(request_id, 60)
            fake.wait_dispatched(120)
            messages = fake.results()
            settle = wait_idle(master.pid, timeout=60)  # the master has applied every ack
            with ctx.profiled(o, "ingestion", {"master": master.pid}):
                first = time.perf_counter()
                publish_seconds = fake.publish_all(messages)
                done = client.finished(reply.task_id, 120)
            o.problems.extend(check_summary(done, fake.ids))
        seconds = done.at - first
    return {
        "task_messages": fake.deliveries,
        "settle_s": round(settle, 2),
        "results": n,
        "seconds": round(seconds, 3),
        "per_s": round(n / seconds, 1),
        "publisher_seconds": round(publish_seconds, 3),
        "publisher_per_s": round(n / publish_seconds, 1),
    }
