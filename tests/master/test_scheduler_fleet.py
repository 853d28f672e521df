"""A schedule fires real tasks on real agents (issue 15): the master's core (store,
registry, engine, job service) on a real mosquitto with two real agent processes, and a
:class:`Scheduler` whose clock the test moves from fire time to fire time, so an
every-minute cron is tested without waiting minutes. The rollouts run on real time."""

from __future__ import annotations

import queue
import time
import uuid

import pytest

from harness.agentproc import start_agent
from mschedule_agent.transport import MqttTransport
from mschedule_master.engine import Engine
from mschedule_master.registry import Registry
from mschedule_master.scheduler import Scheduler
from mschedule_master.schedules import Overlap, Schedule
from mschedule_master.service import MasterService
from mschedule_master.store import Store


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Master:
    """The master's core on a real broker, pumped by the test's thread (as the daemon's loop does)."""

    def __init__(self, broker, topics, db) -> None:
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.transport = MqttTransport(
            broker.url, client_id=f"sched-{uuid.uuid4().hex[:8]}",
            subscriptions=[(t, 1) for t in topics.master_subscriptions()], on_message=self.inbox.put,
        )  # fmt: skip
        self.store = Store(str(db))
        self.registry = Registry()
        self.engine = Engine(store=self.store, transport=self.transport, topics=topics, registry=self.registry)
        self.service = MasterService(engine=self.engine, registry=self.registry, store=self.store, topics=topics)
        self.clock = Clock(time.time())
        self.scheduler = Scheduler(engine=self.engine, jobs=self.service.jobs, clock=self.clock)

    def pump(self, until, timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = []
            while True:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            if batch:
                self.service.handle_batch(batch)
            self.service.housekeeping()
            self.scheduler.tick()
            if until():
                return
            time.sleep(0.02)
        raise TimeoutError(f"not within {timeout}s: {what}")

    def at(self, t: float) -> None:
        self.clock.now = t
        self.scheduler.tick()

    def task(self, task_id: str):
        return self.store.get_task(task_id)

    def records(self, name: str) -> list[tuple[int, str, str | None]]:
        return [(r["fire_time"], r["outcome"], r["task_id"]) for r in reversed(self.scheduler.runs(name, 100))]


@pytest.fixture
def fleet(broker, topics, prefix, tmp_path):
    master = Master(broker, topics, tmp_path / "master.db")
    master.transport.start(connect_timeout=10)
    agents = []
    try:
        for i in range(2):
            agents.append(start_agent(tmp_path / f"agent{i}", broker.url, prefix, {"role": "web"}, wait=False))
        for a in agents:
            a.wait_online(30)
        master.pump(lambda: len([a for a in master.registry.agents() if a.online]) == 2, 30, "two agents online")
        yield master, agents
    finally:
        for a in agents:
            a.stop()
        master.transport.stop()
        master.store.close()


def _final(master, task_id):
    return lambda: master.task(task_id).state.final


def test_an_every_minute_schedule_fires_real_tasks_on_the_agents_once_per_fire_time(fleet):
    master, agents = fleet
    master.service.jobs.save("stamp", b"#!/bin/sh\necho stamped on $(hostname)\n", defaults={"targets": ["role=web"]})
    master.scheduler.add(Schedule("every-minute", job="stamp", cron="* * * * *"), created_by="test")
    first = master.scheduler.next_times("every-minute", 1)[0]
    for k in range(3):
        master.at(first + 60 * k + 1)
        master.at(first + 60 * k + 2)  # planned again: nothing more
        (fire_time, outcome, task_id) = master.records("every-minute")[-1]
        assert (fire_time, outcome) == (first + 60 * k, "fired") and task_id
        master.pump(_final(master, task_id), what=f"task {task_id} ends")
        task = master.task(task_id)
        assert task.state.value == "SUCCEED" and task.target_count == 2
        outputs = {a.agent_id: master.store.get_target(task_id, a.agent_id).stdout for a in agents}
        assert all(out.startswith(b"stamped on ") for out in outputs.values()), outputs
    tasks = {r[2] for r in master.records("every-minute")}
    assert len(tasks) == 3 and master.scheduler.next_wake() == first + 180


def test_overlap_with_a_long_real_job_skips_and_queues_while_it_runs(fleet):
    master, agents = fleet
    master.service.jobs.save("long", b"#!/bin/sh\nsleep 3\necho done\n", defaults={"targets": ["role=web"]})
    master.scheduler.add(Schedule("skip", job="long", cron="* * * * *"), created_by="test")
    master.scheduler.add(Schedule("queue", job="long", cron="* * * * *", overlap=Overlap.parse("queue(1)")),
                         created_by="test")  # fmt: skip
    first = master.scheduler.next_times("skip", 1)[0]
    master.at(first + 1)
    master.at(first + 61)  # the first runs are still going (3 s of real time)
    skip, queued = master.records("skip"), master.records("queue")
    assert [o for _, o, _ in skip] == ["fired", "skipped-overlap"]
    assert [o for _, o, _ in queued] == ["fired", "queued"]
    running = queued[0][2]
    assert master.task(running).state.value in ("WAITING", "RUNNING")
    # the first run ends; the queued fire time starts then, with no fire time due
    master.pump(lambda: master.records("queue")[1][1] == "fired", what="the queued fire time starts")
    assert master.task(running).state.value == "SUCCEED"
    second = master.records("queue")[1][2]
    master.pump(_final(master, second), what="the queued run ends")
    assert master.task(second).state.value == "SUCCEED"
    assert [o for _, o, _ in master.records("skip")] == ["fired", "skipped-overlap"]
