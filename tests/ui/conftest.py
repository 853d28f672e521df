"""A real in-memory Service (dicts, no mocks) for the API and CLI tests, and a fixture
that serves it over HTTP from a loop thread, as the master daemon does."""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from harness.api import LiveApi, serve_in_thread
from mschedule_agent import protocol
from mschedule_master.models import Agent, Event, InvalidRequest, NotFound, Target, Task, TaskEnded
from mschedule_master.states import TargetState, TaskState


def make_agent(agent_id: str, *, online: bool = True, **labels: str) -> Agent:
    return Agent(
        id=agent_id,
        hostname=f"{agent_id}.example",
        ip=["10.0.0.1"],
        labels=labels,
        version="0.1.0",
        capacity=2,
        online=online,
        dc=None,
        started_at=1000.0,
        last_seen=2000.0,
        last_heartbeat=1999.0,
        heartbeat_interval=5.0,
    )


class FakeService:
    """Holds agents, tasks and targets in dicts; the test moves targets along."""

    def __init__(self, agents: list[Agent] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.agents_by_id: dict[str, Agent] = {a.id: a for a in agents or []}
        self.task_by_id: dict[str, Task] = {}
        self.targets: dict[str, dict[str, Target]] = {}
        self.killed: list[str] = []
        self.submitted: list[protocol.Submit] = []
        self._subs: list[Callable[[Event], None]] = []
        self._ids = itertools.count(1)

    # -- Service ---------------------------------------------------------------------
    def submit(self, spec: protocol.Submit) -> Task:
        ids = self._resolve(spec.targets)
        task_id = f"task{next(self._ids):04d}"
        now = self.clock()
        task = Task(
            id=task_id,
            name=spec.name,
            script=spec.script_bytes,
            targets_spec=list(spec.targets),
            timeout=spec.timeout,
            parallel=spec.parallel if spec.parallel is not None else 1,
            fail_rate=spec.fail_rate,
            fail_count=spec.fail_count,
            on_abort=spec.on_abort,
            env=dict(spec.env),
            cwd=spec.cwd,
            output_cap=spec.output_cap,
            delivery_timeout=spec.delivery_timeout or 60.0,
            state=TaskState.WAITING,
            reason="",
            created_at=now,
            finished_at=None,
            counts={},
            target_count=len(ids),
        )
        self.submitted.append(spec)
        self.task_by_id[task_id] = task
        self.targets[task_id] = {
            a: Target(task_id=task_id, agent_id=a, state=TargetState.WAITING, hostname=self.agents_by_id[a].hostname)
            for a in ids
        }
        self._refresh(task_id)
        return self.task(task_id)

    def kill(self, task_id: str) -> Task:
        if self.task(task_id).state.final:
            raise TaskEnded(task_id, self.task(task_id).state.value)
        self.killed.append(task_id)
        for agent_id, t in self.targets[task_id].items():
            if not t.state.final:
                self.set_target(task_id, agent_id, TargetState.KILLED if t.state.active else TargetState.CANCELLED)
        self._finish(task_id, TaskState.KILLED, "killed by user")
        return self.task(task_id)

    def agents(self, *, online=None, label=None, hostname=None) -> list[Agent]:
        out = list(self.agents_by_id.values())
        if online is not None:
            out = [a for a in out if a.online == online]
        if label is not None:
            k, _, v = label.partition("=")
            out = [a for a in out if a.labels.get(k) == v]
        if hostname is not None:
            out = [a for a in out if fnmatch.fnmatch(a.hostname, hostname)]
        return out

    def agent(self, agent_id: str) -> Agent:
        try:
            return self.agents_by_id[agent_id]
        except KeyError:
            raise NotFound("agent", agent_id) from None

    def resolve_targets(self, selectors: list[str]) -> list[Agent]:
        return [self.agents_by_id[a] for a in self._resolve(selectors)]

    def tasks(self, *, state=None, limit=50, offset=0, id_prefix=None) -> list[Task]:
        out = sorted(self.task_by_id.values(), key=lambda t: (t.created_at, t.id), reverse=True)
        out = [t for t in out if t.id.startswith(id_prefix or "")]
        if state is not None:
            out = [t for t in out if t.state == state]
        return out[offset : offset + limit]

    def task(self, task_id: str, *, outputs: bool = True, targets: bool = True, tail: int | None = None) -> Task:
        try:
            task = self.task_by_id[task_id]
        except KeyError:
            raise NotFound("task", task_id) from None
        return replace(task, targets=list(self.targets[task_id].values()) if targets else None)

    def output(self, task_id: str, agent_id: str) -> Target:
        self.task(task_id)
        try:
            return self.targets[task_id][agent_id]
        except KeyError:
            raise NotFound("target", agent_id) from None

    def live_chunks(self, task_id: str, agent_id: str, stream: str, offset: int) -> list[Any]:
        """A running target's bytes as one live chunk (what it has streamed so far)."""
        from mschedule_master.liveoutput import Chunk

        target = self.output(task_id, agent_id)
        data = (target.stdout if stream == "stdout" else target.stderr) or b""
        return [Chunk(stream, 0, 0, data)] if len(data) > offset else []

    def subscribe(self, callback):
        self._subs.append(callback)
        return lambda: self._subs.remove(callback)

    # -- test controls ---------------------------------------------------------------
    def set_target(self, task_id: str, agent_id: str, state: TargetState, **fields) -> None:
        t = replace(self.targets[task_id][agent_id], state=state, **fields)
        self.targets[task_id][agent_id] = t
        self._emit(Event("target", task_id, self.clock(), {"agent_id": agent_id, "state": state.value}))
        self._refresh(task_id)

    def finish_all(self, task_id: str, state: TargetState = TargetState.SUCCEED, *, code: int = 0,
                   stdout: bytes = b"hello\n", stderr: bytes = b"") -> None:
        for agent_id in list(self.targets[task_id]):
            self.set_target(task_id, agent_id, state, code=code, stdout=stdout, stderr=stderr,
                            stdout_bytes=len(stdout), stderr_bytes=len(stderr),
                            started_at=self.clock(), finished_at=self.clock())  # fmt: skip
        final = TaskState.SUCCEED if state == TargetState.SUCCEED else TaskState.FAILED
        self._finish(task_id, final, "")

    def subscriber_count(self) -> int:
        return len(self._subs)

    # -- internals ---------------------------------------------------------------------
    def _resolve(self, selectors: list[str]) -> list[str]:
        ids: list[str] = []
        for sel in selectors:
            if sel in ("*", "all"):
                found = list(self.agents_by_id)
            elif "=" in sel:
                found = [a.id for a in self.agents(label=sel)]
            else:
                found = [sel] if sel in self.agents_by_id else []
            if not found:
                raise InvalidRequest(f"target selector {sel!r} matched no agent", field="targets")
            ids.extend(a for a in found if a not in ids)
        return ids

    def _refresh(self, task_id: str) -> None:
        counts: dict[str, int] = {}
        for t in self.targets[task_id].values():
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
        task = self.task_by_id[task_id]
        state = task.state
        if state == TaskState.WAITING and any(t.state != TargetState.WAITING for t in self.targets[task_id].values()):
            state = TaskState.RUNNING
        self.task_by_id[task_id] = replace(task, counts=counts, state=state)
        self._emit(Event("task", task_id, self.clock(), {"state": state.value, "counts": counts}))

    def _finish(self, task_id: str, state: TaskState, reason: str) -> None:
        task = self.task_by_id[task_id]
        self.task_by_id[task_id] = replace(task, state=state, reason=reason, finished_at=self.clock())
        self._emit(Event("task", task_id, self.clock(), {"state": state.value, "final": True}))

    def _emit(self, ev: Event) -> None:
        for cb in list(self._subs):
            cb(ev)


@pytest.fixture
def fake_service() -> FakeService:
    return FakeService([make_agent("web1", role="web", dc="bj"), make_agent("web2", role="web", dc="sh"),
                        make_agent("db1", online=False, role="db", dc="bj")])  # fmt: skip


@pytest.fixture
def live_api(fake_service) -> Iterator[LiveApi]:
    yield from serve_in_thread(fake_service)


@pytest.fixture
def serve_api():
    """``with serve_api(service, token=...) as live:`` serves ``service`` for the block."""
    return contextlib.contextmanager(serve_in_thread)


# ---------------------------------------------------------------------- real fleet


@pytest.fixture(scope="session")
def ui_fleet(broker, tmp_path_factory):
    """A real master (HTTP on a free loopback port) and the demo's three agents
    (role=web zone=bj, role=web zone=sh, role=db zone=bj) on the session broker."""
    from harness.demo import start_demo_fleet

    prefix = f"ui{uuid.uuid4().hex[:8]}/mschedule"
    fleet = start_demo_fleet(tmp_path_factory.mktemp("ui-fleet"), broker.url, prefix)
    try:
        yield fleet
    finally:
        fleet.stop()
