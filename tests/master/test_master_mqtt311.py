"""The whole agent <-> master path in MQTT 3.1.1 mode (``--mqtt-version 3.1.1``) on a real
mosquitto: a rollout, a kill, the master killed -9 mid-rollout and an agent away while its
task is dispatched. Every target runs exactly once; the verdicts are the usual ones. One
fleet serves the module; every test ends its task before the next begins."""

from __future__ import annotations

import re
import uuid

import pytest

from harness.fleet import Fleet, runs
from harness.procs import wait_until

N = 3


@pytest.fixture(scope="module")
def fleet(broker, tmp_path_factory):
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(tmp_path_factory.mktemp("fleet311"), broker.url, prefix, agents=N, mqtt_version="3.1.1") as f:
        yield f


def test_every_part_speaks_311_on_the_wire(fleet, broker):
    text = broker.log_path.read_text()
    for agent_id in fleet.agent_ids:
        assert re.search(rf"as mschedule-agent-{agent_id} \(p2,", text), "agent not on MQTT 3.1.1"
    # This fleet's master only: the broker is the session's, shared with other tests' v5 masters.
    argv = fleet.master.argv
    master = argv[argv.index("--client-id") + 1]
    lines = [line for line in text.splitlines() if f"as {master}" in line]
    assert lines and all("(p2," in line for line in lines), "master not on MQTT 3.1.1"


def test_a_rollout_runs_every_target_once(fleet, tmp_path):
    log = tmp_path / "runs.log"
    task_id = fleet.submit(["all"], f'echo "$MSCHEDULE_TEST_AGENT" >> {log}', parallel=2)
    summary = fleet.wait_task(task_id, 30)
    assert (summary["state"], summary["counts"]["SUCCEED"]) == ("SUCCEED", N)
    assert runs(log) == [str(i) for i in range(N)]


def test_kill_mid_rollout_kills_the_running_and_cancels_the_rest(fleet):
    task_id = fleet.submit(["all"], "sleep 60", parallel=2)
    fleet.wait_progress(task_id, lambda p: p["counts"].get("RUNNING") == 2)
    fleet.kill(task_id)
    summary = fleet.wait_task(task_id, 30)
    assert (summary["state"], {k: v for k, v in summary["counts"].items() if v}) == (
        "KILLED",
        {"KILLED": 2, "CANCELLED": 1},
    )


def test_master_killed_mid_rollout_resumes_from_its_persistent_session(fleet, tmp_path):
    log = tmp_path / "runs.log"
    task_id = fleet.submit(["all"], f'sleep 0.5; echo "$MSCHEDULE_TEST_AGENT" >> {log}', parallel=1)
    fleet.wait_progress(task_id, lambda p: p["counts"].get("RUNNING") == 1)
    fleet.master.kill9()
    fleet.master.restart()
    summary = fleet.wait_task(task_id, 60)
    assert summary["state"] == "SUCCEED", summary
    assert runs(log) == [str(i) for i in range(N)], "a target ran twice or never"


def test_an_agent_away_at_dispatch_gets_its_task_from_its_session(fleet, tmp_path):
    """kill -9: with no will delay in 3.1.1 the master sees it offline at once; the task
    published meanwhile waits in the broker's session and runs once it is back."""
    log = tmp_path / "runs.log"
    away = fleet.agents[0]
    away.kill9()
    wait_until(lambda: fleet._online_count() == N - 1, 10, what="the master to see the agent offline")
    task_id = fleet.submit(fleet.agent_ids, f'echo "$MSCHEDULE_TEST_AGENT" >> {log}', parallel=N)  # "all" = online
    fleet.wait_progress(task_id, lambda p: p["counts"].get("SUCCEED") == N - 1)
    offset = len(away.log())
    away.start()
    away.wait_online(20, after=offset)
    summary = fleet.wait_task(task_id, 30)
    assert summary["state"] == "SUCCEED", summary
    assert runs(log) == [str(i) for i in range(N)]
