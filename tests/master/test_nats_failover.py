"""Failover across a real three-node NATS cluster: every agent and the master are given all
three nodes' addresses (``--broker a,b,c``), each starting on its own node. The node under
an agent, then the one under the master, is killed -9 mid-rollout and NOT restarted: each
moves to the next node in its list, where its persistent session is waiting (NATS keeps
MQTT sessions in JetStream, replicated over the cluster), and the rollout ends with every
target run exactly once and the right verdict. tests/master/test_nats_cluster.py is the
single-address fleet, whose agents wait for their node to come back.

One cluster and fleet serve the module, in order: the first test leaves node 1 dead; the
second starts it again first (two of three nodes must live: JetStream's quorum)."""

from __future__ import annotations

import time
import uuid

import pytest

from harness.fleet import Fleet, nonzero_counts, runs
from harness.nats import NatsCluster
from harness.procs import wait_until
from harness.require import require_tools

N = 3  #: agent i starts on node i, then tries i+1, i+2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_tools("nats-server", why="the NATS failover tests run a real three-node cluster")
    with NatsCluster(tmp_path_factory.mktemp("natsfo")) as c:
        yield c


def _from(urls: list[str], i: int) -> str:
    """The cluster's addresses as one --broker list, node ``i`` first."""
    return ",".join(urls[i:] + urls[:i])


@pytest.fixture(scope="module")
def fleet(cluster, tmp_path_factory):
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    urls = cluster.urls
    with Fleet(
        tmp_path_factory.mktemp("natsfofleet"), _from(urls, 0), prefix, agents=N,
        agent_brokers=[_from(urls, i) for i in range(N)], mqtt_version="3.1.1",
        # a moved session's queued tasks and results arrive once the next node serves it
        master_flags={"delivery_timeout": 30, "lost_grace": 30},
    ) as f:  # fmt: skip
        yield f


def _target_state(fleet: Fleet, task_id: str, agent: int) -> str:
    return fleet.task(task_id)["targets"][fleet.agent_ids[agent]]["state"]


def _moved(log: str, to_url: str) -> bool:
    """The log says the daemon gave up its node for ``to_url`` and got a CONNACK there."""
    moved_at = log.rfind(f"moving to {to_url}")
    return moved_at >= 0 and f"connected to {to_url} " in log[moved_at:]


def test_each_daemon_starts_on_the_first_node_of_its_list(cluster, fleet):
    for i, agent in enumerate(fleet.agents):
        assert f"connected to {cluster.urls[i]} " in agent.log()
    assert f"connected to {cluster.urls[0]} " in fleet.master.log()


def test_an_agent_whose_node_dies_moves_to_the_next_and_the_rollout_ends_without_that_node(cluster, fleet, tmp_path):
    """Node 1 dies while agent 1 runs its target: agent 1 moves to node 2 with its session,
    reports there, and the rollout ends SUCCEED with each target run once; node 1 stays dead."""
    log = tmp_path / "runs.log"
    script = f'sleep 2; echo "$MSCHEDULE_TEST_AGENT" >> {log}'
    task_id = fleet.submit(["all"], script, parallel=2)
    wait_until(lambda: _target_state(fleet, task_id, 1) == "RUNNING", 60, interval=0.1, what="agent 1 running")
    cluster.nodes[1].kill9()
    t0 = time.monotonic()
    summary = fleet.wait_task(task_id, 90)
    ended = time.monotonic() - t0
    assert (summary["state"], nonzero_counts(summary)) == ("SUCCEED", {"SUCCEED": N}), (summary, f"{ended:.1f} s")
    assert runs(log) == [str(i) for i in range(N)], "a target ran twice or never"
    assert _moved(fleet.agents[1].log(), cluster.urls[2]), fleet.agents[1].log()[-3000:]
    assert not cluster.nodes[1].running(), "the dead node was not needed"


def test_the_master_whose_node_dies_moves_to_the_next_and_its_rollout_ends(cluster, fleet, tmp_path):
    """Node 0 (the master's, agent 0's and the test client's) dies while targets run: the
    master moves to node 1, its session's queued acks and results with it; node 0 stays dead."""
    cluster.nodes[1].start()  # back first: two live nodes of three keep JetStream's quorum
    cluster.wait_ready(60, nodes=[cluster.nodes[1]])
    log = tmp_path / "runs.log"
    script = f'sleep 2; echo "$MSCHEDULE_TEST_AGENT" >> {log}'
    task_id = fleet.submit(["all"], script, parallel=2)
    wait_until(lambda: "RUNNING" in {_target_state(fleet, task_id, i) for i in range(N)}, 60, interval=0.1,
               what="a target running")  # fmt: skip
    cluster.nodes[0].kill9()
    wait_until(lambda: _moved(fleet.master.log(), cluster.urls[1]), 60, interval=0.2, what="the master on node 1")
    summary = wait_until(lambda: _ended(fleet, task_id), 90, interval=0.2, what="the task ended")
    assert (summary["state"], nonzero_counts(summary)) == ("SUCCEED", {"SUCCEED": N}), summary
    assert runs(log) == [str(i) for i in range(N)], "a target ran twice or never"
    assert _moved(fleet.agents[0].log(), cluster.urls[1]), fleet.agents[0].log()[-3000:]
    assert not cluster.nodes[0].running()


def _ended(fleet: Fleet, task_id: str) -> dict | None:
    """The task as the master's HTTP API shows it, once it ended (the API does not need the broker)."""
    task = fleet.task(task_id)
    return task if task["state"] in ("SUCCEED", "FAILED", "KILLED") else None
