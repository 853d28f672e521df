"""mschedule on a real three-node NATS cluster (Debian's nats-server, JetStream, its MQTT
3.1.1 listener on each node): agents spread over the three nodes, the master on the first.
A rollout, a kill, and a node killed -9 mid-rollout: every target runs exactly once and the
task ends with the right verdict. One cluster and fleet serve the module; each test ends its
task before the next begins. Each daemon here has its one node's address, so the dead node's
agents wait for it to come back; given all three (``--broker a,b,c``) they move to another
node instead: tests/master/test_nats_failover.py."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from harness.fleet import Fleet, nonzero_counts, runs
from harness.nats import NatsCluster
from harness.require import require_tools

N = 3  #: one agent per node: agent i is on node i


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_tools("nats-server", why="the NATS-cluster tests run a real three-node cluster")
    with NatsCluster(tmp_path_factory.mktemp("nats")) as c:
        yield c


@pytest.fixture(scope="module")
def fleet(cluster, tmp_path_factory):
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(
        tmp_path_factory.mktemp("natsfleet"), cluster.urls[0], prefix, agents=N, agent_brokers=cluster.urls,
        mqtt_version="3.1.1",
        # A dead node's agents get their tasks late and are silent until it is back and they
        # have reconnected (seconds under load): neither UNREACHABLE nor LOST for that.
        master_flags={"delivery_timeout": 30, "lost_grace": 30},
    ) as f:  # fmt: skip
        yield f


def test_agents_are_spread_over_the_three_nodes(cluster, fleet):
    for i, agent in enumerate(fleet.agents):
        port = re.search(r"--broker mqtt://127\.0\.0\.1:(\d+)", " ".join(agent.argv))
        assert port and int(port.group(1)) == cluster.nodes[i % 3].ports["mqtt"]


def test_a_rollout_across_the_nodes_runs_every_target_once(fleet, tmp_path):
    log = tmp_path / "runs.log"
    task_id = fleet.submit(["all"], f'echo "$MSCHEDULE_TEST_AGENT" >> {log}', parallel=2)
    summary = fleet.wait_task(task_id, 30)
    assert (summary["state"], nonzero_counts(summary)) == ("SUCCEED", {"SUCCEED": N})
    assert runs(log) == [str(i) for i in range(N)]


def test_a_failing_target_gives_the_failed_verdict(fleet):
    task_id = fleet.submit(["all"], 'test "$MSCHEDULE_TEST_AGENT" != 2', parallel=N)
    summary = fleet.wait_task(task_id, 30)
    assert (summary["state"], nonzero_counts(summary)) == ("FAILED", {"SUCCEED": N - 1, "FAILED": 1})
    assert summary["targets"][fleet.agent_ids[2]]["state"] == "FAILED"


def test_kill_mid_rollout_kills_the_running_and_cancels_the_rest(fleet):
    task_id = fleet.submit(["all"], "sleep 60", parallel=2)
    fleet.wait_progress(task_id, lambda p: p["counts"].get("RUNNING") == 2)
    fleet.kill(task_id)
    summary = fleet.wait_task(task_id, 30)
    assert (summary["state"], nonzero_counts(summary)) == ("KILLED", {"KILLED": 2, "CANCELLED": N - 2})


def test_a_node_killed_mid_rollout_loses_nothing_and_runs_nothing_twice(cluster, fleet, tmp_path):
    """Node 1 (agent 1's; not the master's) dies while targets run and are dispatched; it
    comes back on its store. Its agents' sessions and queued tasks live in JetStream on
    the other two nodes; results wait in the agents' outboxes."""
    log = tmp_path / "runs.log"
    script = f'sleep 0.5; echo "$MSCHEDULE_TEST_AGENT" >> {log}'
    task_id = fleet.submit(["all"], script, parallel=2)
    fleet.wait_progress(task_id, lambda p: p["counts"].get("RUNNING", 0) >= 1)
    node = cluster.nodes[1]
    node.kill9()
    fleet.wait_progress(task_id, lambda p: p["counts"].get("SUCCEED", 0) >= 2, 30)  # the others carry on
    t0 = time.monotonic()
    node.start()
    cluster.wait_ready(60, nodes=[node])
    back = time.monotonic() - t0
    summary = fleet.wait_task(task_id, 60)
    assert (summary["state"], nonzero_counts(summary)) == ("SUCCEED", {"SUCCEED": N}), (summary, f"node back in {back:.1f} s")
    assert runs(log) == [str(i) for i in range(N)], "a target ran twice or never"
