"""Chaos scenarios: real brokers, a real master and real agents, and an outage of one part
at the worst moment. Each scenario asserts the final task state, every target's state and
how many times each target ran (from marker files the script writes).

The outages are made longer than the master's deadlines (``delivery_timeout``, ``lost_grace``)
but kept short (a few seconds) by giving the master short deadlines.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from harness.agentproc import start_agent
from harness.broker import mosquitto_binary
from harness.fleet import Fleet, start_master
from harness.procs import wait_until
from harness.xdc import MASTER_USER, OPERATOR_USER, Xdc

#: Short master deadlines: an outage of OUTAGE seconds outlasts every one of them.
MASTER_FLAGS = {"delivery_timeout": 3, "ack_grace": 0.5, "redeliver_interval": 1, "lost_grace": 2}
#: How long each outage lasts (seconds): > delivery_timeout + ack_grace, > lost_grace.
OUTAGE = 5.0


def mark(markers: Path) -> str:
    """The script every target runs: one line per run in markers/<agent index>."""
    return f'echo run >> "{markers}/$MSCHEDULE_TEST_AGENT"'


def runs(markers: Path) -> dict[str, int]:
    """Runs per agent index, from the marker files."""
    return {p.name: len(p.read_text().splitlines()) for p in markers.iterdir()}


def events(db: Path, kind: str) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c, c:
        return c.execute("select task_id, agent_id, data from events where kind=?", (kind,)).fetchall()


def wait_final_state(fleet: Fleet, task_id: str, state: str, timeout: float) -> dict:
    """The task (API view) once it is final in ``state``; on timeout, the last view seen
    is in the error, so a wrong verdict reads as what it was."""
    seen: list[dict] = []

    def done() -> bool:
        task = fleet.task(task_id)
        seen[:] = [task]
        return task["state"] == state and all(t["state"] == state or state != "SUCCEED" for t in task["targets"].values())

    try:
        wait_until(done, timeout, interval=0.2, what=f"task {task_id} {state}")
    except TimeoutError:
        task = seen[0] if seen else {}
        verdicts = {a: (t["state"], t["reason"]) for a, t in task.get("targets", {}).items()}
        raise AssertionError(f"task ended {task.get('state')} ({task.get('reason')}): {verdicts}") from None
    return seen[0]


@pytest.fixture
def markers(tmp_path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()
    return d


@pytest.fixture
def fleet(broker, prefix, tmp_path, markers):
    """A master with short deadlines and three agents on the session broker."""
    with Fleet(tmp_path, broker.url, prefix, agents=3, master_flags=MASTER_FLAGS) as f:
        yield f


class EdgeFleet(Fleet):
    """A master at central and agents at edge ``bj``, every broker from the shipped configs."""

    xdc: Xdc


@pytest.fixture
def edge_fleet(tmp_path, prefix, markers):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    with Xdc(tmp_path / "xdc", prefix=prefix, dcs=("bj",)) as xdc:
        fleet = EdgeFleet(tmp_path, xdc.url("central", OPERATOR_USER), prefix)
        fleet.xdc = xdc
        try:
            fleet.master = start_master(tmp_path / "master", xdc.url("central", MASTER_USER), prefix, **MASTER_FLAGS)
            for i in range(2):
                state_dir = tmp_path / f"agent-bj{i}"
                agent_id = xdc.provision_agent("bj", state_dir)
                xdc.wait_reloaded("bj", agent_id)
                env = {"MSCHEDULE_TEST_AGENT": str(i)}
                fleet.agents.append(start_agent(state_dir, xdc.url("bj", agent_id), prefix, wait=False, env=env))
            for a in fleet.agents:
                a.wait_online(30)
            fleet.wait_agents_known(len(fleet.agents))
            yield fleet
        finally:
            fleet.stop()
