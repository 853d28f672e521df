"""mschedule across datacenters, end to end: a central broker with the master, edges
bj and sh with three real agents each, every broker started from the shipped configs
with authentication and ACLs on. One cluster serves the module; each test ends its
task before the next begins; the agent-killing test runs last."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from harness.agentproc import start_agent
from harness.fleet import Fleet, start_master
from harness.mqtt import Collector
from harness.procs import wait_until
from harness.require import require_tools
from harness.xdc import MASTER_USER, MONITOR_USER, OPERATOR_USER, Xdc
from mschedule_agent import protocol
from mschedule_agent.protocol import Topics

DCS = ("bj", "sh")
PER_DC = 3
#: How long the edge stays cut in the cut test (the issue's figure).
CUT_SECONDS = 10.0
#: The production defaults: a bridge cut must not turn running targets LOST.
MASTER_FLAGS = {"delivery_timeout": 60, "lost_grace": 60}

pytestmark = pytest.mark.slow


class XFleet(Fleet):
    """harness.fleet.Fleet's helpers (submit over MQTT as the operator, wait for the
    summary, HTTP API) over a master at central and agents at the edges."""

    xdc: Xdc
    dc_of: dict[str, str]
    markers: Path


@pytest.fixture(scope="module")
def xfleet(tmp_path_factory):
    require_tools("mosquitto")
    root = tmp_path_factory.mktemp("xfleet")
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    markers = root / "markers"
    markers.mkdir()
    with Xdc(root / "xdc", prefix=prefix, dcs=DCS) as xdc:
        fleet = XFleet(root, xdc.url("central", OPERATOR_USER), prefix)
        fleet.xdc, fleet.dc_of, fleet.markers = xdc, {}, markers
        try:
            fleet.master = start_master(root / "master", xdc.url("central", MASTER_USER), prefix, **MASTER_FLAGS)
            for dc in DCS:
                for i in range(PER_DC):
                    state_dir = root / f"agent-{dc}{i}"
                    agent_id = xdc.provision_agent(dc, state_dir)
                    xdc.wait_reloaded(dc, agent_id)
                    fleet.dc_of[agent_id] = dc
                    fleet.agents.append(start_agent(state_dir, xdc.url(dc, agent_id), prefix, wait=False,
                                                    env={"MARKERS": str(markers), "AGENT_NAME": f"{dc}{i}"}))
            for a in fleet.agents:
                a.wait_online(30)
            fleet.wait_agents_known(len(fleet.agents))
            yield fleet
        finally:
            fleet.stop()


def runs(fleet: XFleet, task_id: str) -> dict[str, int]:
    """How many times each agent ran the task, from the marker files the script wrote."""
    out = {}
    for f in fleet.markers.glob(f"{task_id}.*"):
        out[f.name.split(".", 1)[1]] = len(f.read_text().splitlines())
    return out


MARK = 'echo run >> "$MARKERS/$MSCHEDULE_TASK_ID.$AGENT_NAME"; echo "out $AGENT_NAME"'


def test_the_master_learns_each_agents_datacenter(xfleet):
    agents = {a["id"]: a for a in xfleet.http("GET", "/api/v1/agents")["agents"]}
    assert {i: agents[i]["dc"] for i in xfleet.dc_of} == xfleet.dc_of
    assert all(agents[i]["online"] for i in xfleet.dc_of)


def test_a_rollout_across_both_datacenters_completes_and_each_edge_sees_only_its_own_tasks(xfleet):
    xdc, t = xfleet.xdc, Topics(xfleet.prefix)
    with Collector(xdc.url("bj", MONITOR_USER), ["#"]) as at_bj, Collector(xdc.url("sh", MONITOR_USER), ["#"]) as at_sh:
        task_id = xfleet.submit(["all"], MARK, parallel=3)
        summary = xfleet.wait_task(task_id, 60)
    assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 2 * PER_DC}), summary
    assert set(summary["targets"]) == set(xfleet.dc_of)
    assert runs(xfleet, task_id) == {f"{dc}{i}": 1 for dc in DCS for i in range(PER_DC)}
    for dc, monitor in (("bj", at_bj), ("sh", at_sh)):
        mine = {a for a, d in xfleet.dc_of.items() if d == dc}
        task_topics = {m.topic for m in monitor.messages if m.topic.endswith("/tasks")}
        assert task_topics == {t.tasks(a) for a in mine}, f"edge {dc} saw another datacenter's tasks"
        assert not any("/dc/" in m.topic for m in monitor.messages)


def test_dc_selector_targets_one_datacenter(xfleet):
    task_id = xfleet.submit(["dc=sh"], MARK, parallel=3)
    summary = xfleet.wait_task(task_id, 60)
    assert summary["state"] == "SUCCEED", summary
    assert set(summary["targets"]) == {a for a, d in xfleet.dc_of.items() if d == "sh"}
    assert runs(xfleet, task_id) == {f"sh{i}": 1 for i in range(PER_DC)}


def test_kill_crosses_the_bridge(xfleet):
    task_id = xfleet.submit(["dc=bj"], "sleep 60", parallel=PER_DC)
    xfleet.wait_progress(task_id, lambda p: p["counts"].get("RUNNING") == PER_DC, 30)
    xfleet.kill(task_id)
    summary = xfleet.wait_task(task_id, 30)
    assert (summary["state"], summary["counts"]) == ("KILLED", {"KILLED": PER_DC}), summary
    # KILLED came back from the agents themselves: their results carry the signal.
    assert all(t["signal"] is not None or t["code"] is not None for t in xfleet.task(task_id)["targets"].values())


def test_an_edge_cut_for_10s_mid_rollout_loses_nothing_and_runs_nothing_twice(xfleet, tmp_path):
    """bj's edge broker stops while bj targets run and more are still to be dispatched:
    results wait in the agents' outboxes, dispatches in the bridge's session at central."""
    xdc = xfleet.xdc
    gate = tmp_path / "gate"
    script = f'{MARK}; for i in $(seq 600); do [ -e {gate} ] && exit 0; sleep 0.05; done; exit 9'
    task_id = xfleet.submit(["all"], script, parallel=2)
    wait_until(lambda: sum(runs(xfleet, task_id).values()) >= 2, 30, what="the first two targets running")
    seen = len(xdc.bridge_states("bj"))
    cut_at = time.monotonic()
    xdc.edges["bj"].broker.stop()
    xdc.wait_bridge("bj", up=False, after=seen)
    gate.touch()  # the running targets finish during the cut; the window moves on
    time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))  # the cut itself
    during_cut = runs(xfleet, task_id)
    xdc.edges["bj"].broker.start()
    summary = xfleet.wait_task(task_id, 90)
    assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 2 * PER_DC}), summary
    assert runs(xfleet, task_id) == {f"{dc}{i}": 1 for dc in DCS for i in range(PER_DC)}, "a task ran twice"
    assert sum(during_cut.values()) < 2 * PER_DC, "the cut was not mid-rollout"
    targets = xfleet.task(task_id)["targets"]
    assert set(targets) == set(xfleet.dc_of)
    for target in targets.values():
        assert (target["state"], target["code"]) == ("SUCCEED", 0), target


def test_a_central_restart_mid_rollout_loses_nothing_and_runs_nothing_twice(xfleet, tmp_path):
    """Central (with the master's session) stops for 10 s while targets in both datacenters
    run: their results wait in the edges' uplink queues and the agents' outboxes."""
    xdc = xfleet.xdc
    gate = tmp_path / "gate"
    script = f'{MARK}; for i in $(seq 600); do [ -e {gate} ] && exit 0; sleep 0.05; done; exit 9'
    task_id = xfleet.submit(["all"], script, parallel=3)
    wait_until(lambda: sum(runs(xfleet, task_id).values()) >= 3, 30, what="the first three targets running")
    cut_at = time.monotonic()
    xdc.central.broker.stop()
    gate.touch()
    time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))  # the cut itself
    xdc.central.broker.start()
    summary = xfleet.wait_task(task_id, 90)
    assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 2 * PER_DC}), summary
    assert runs(xfleet, task_id) == {f"{dc}{i}": 1 for dc in DCS for i in range(PER_DC)}, "a task ran twice"


def test_an_agents_last_will_crosses_the_bridge_to_the_master(xfleet):
    """Runs last: it kills an agent."""
    xdc, t = xfleet.xdc, Topics(xfleet.prefix)
    victim = next(a for a in xfleet.agents if xfleet.dc_of[a.agent_id] == "sh")
    agent_id = victim.agent_id
    victim.kill9()
    wait_until(lambda: not xfleet.http("GET", f"/api/v1/agents/{agent_id}")["online"], 30,
               what="the master marking the killed agent offline")
    with Collector(xdc.url("central", MONITOR_USER), [t.dc("sh").status(agent_id)]) as late:
        (msg,) = late.wait_for(lambda m: m.retain)
    will = protocol.decode(msg.payload)
    assert isinstance(will, protocol.Offline) and will.reason == "will"
