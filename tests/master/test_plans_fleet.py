"""Rollout plans with a real master, mosquitto and three real agents: a canary of 1 pauses,
`mschedule approve` runs the rest; a failing first batch stops the plan; a master restart
during a pause keeps the pause. One fleet serves the module; each test ends its task."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import uuid

import pytest

from harness.demo import cli_argv
from harness.fleet import Fleet

N = 3


@pytest.fixture(scope="module")
def fleet(broker, tmp_path_factory):
    prefix = f"p{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(tmp_path_factory.mktemp("plans"), broker.url, prefix, agents=N) as f:
        yield f


def wait_state(fleet: Fleet, task_id: str, state: str, timeout: float = 30) -> dict:
    """Poll the API until the task is in ``state`` (bounded); return the task."""
    deadline = time.monotonic() + timeout
    task: dict = {}
    while time.monotonic() < deadline:
        task = fleet.task(task_id)
        if task["state"] == state:
            return task
        time.sleep(0.1)
    raise TimeoutError(f"task {task_id} not {state} within {timeout}s: {task.get('state')} {task.get('reason')}")


def mschedule(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    assert fleet.master is not None
    env = {**os.environ, "MSCHEDULE_MASTER": fleet.master.http_url}
    env.pop("MSCHEDULE_TOKEN", None)
    return subprocess.run([*cli_argv(), *args], env=env, capture_output=True, text=True, timeout=60)


def states(task: dict) -> dict[str, int]:
    return {k: v for k, v in task["counts"].items() if v}


def test_a_canary_of_one_pauses_and_an_approval_runs_the_rest(fleet):
    task_id = fleet.submit(["all"], "echo ran", parallel=2, plan="1,pause,rest")
    task = wait_state(fleet, task_id, "PAUSED")
    assert states(task) == {"SUCCEED": 1, "WAITING": 2}, "only the canary ran"
    assert task["plan_step"] == 2 and task["paused_at"] is not None
    assert [(s["kind"], s["targets"], s["current"]) for s in task["plan_stages"]] == [
        ("batch", 1, False), ("pause", 0, True), ("batch", 2, False),
    ]  # fmt: skip
    p = mschedule(fleet, "status", task_id)
    assert p.returncode == 0 and "plan: 1 (parallel 2) > [pause] > 2 (parallel 2)" in p.stdout, p.stdout + p.stderr
    p = mschedule(fleet, "approve", task_id, "--by", "canary-tester")
    assert p.returncode == 0 and f"task {task_id} approved" in p.stdout, p.stdout + p.stderr
    summary = fleet.wait_task(task_id, 60)
    assert summary["state"] == "SUCCEED" and summary["counts"] == {"SUCCEED": 3}
    (approval,) = fleet.task(task_id)["approvals"]
    assert approval["by"] == "canary-tester" and approval["step"] == 2 and approval["at"] >= task["paused_at"]
    p = mschedule(fleet, "status", task_id)
    assert "step 2 approved by canary-tester" in p.stdout, p.stdout
    p = mschedule(fleet, "approve", task_id)
    assert p.returncode == 2 and "is not paused" in p.stderr, p.stdout + p.stderr


def test_a_failing_first_batch_stops_the_plan(fleet):
    plan = [{"batch": 1, "fail_count": 0}, {"pause": True}, {"batch": "rest"}]
    task_id = fleet.submit(["all"], "exit 3", plan=plan)
    summary = fleet.wait_task(task_id, 60)
    assert summary["state"] == "FAILED" and summary["reason"] == "step 1: fail_count 0 exceeded: 1 failure"
    assert summary["counts"] == {"FAILED": 1, "CANCELLED": 2}


def test_a_master_restart_during_a_pause_keeps_the_pause(fleet):
    task_id = fleet.submit(["all"], "echo ran", parallel=3, plan="1,pause,rest")
    before = wait_state(fleet, task_id, "PAUSED")
    assert fleet.master is not None
    fleet.master.stop()
    fleet.master.restart()
    fleet.wait_agents_known(N)
    after = fleet.task(task_id)
    assert after["state"] == "PAUSED" and after["paused_at"] == before["paused_at"]
    assert states(after) == {"SUCCEED": 1, "WAITING": 2}
    fleet.http("POST", f"/api/v1/tasks/{task_id}/approve", {"by": "after-restart"})
    summary = fleet.wait_task(task_id, 60)
    assert summary["state"] == "SUCCEED" and summary["counts"] == {"SUCCEED": 3}


def test_abort_over_the_api_ends_a_paused_plan(fleet):
    task_id = fleet.submit(["all"], "echo ran", plan="1,pause,rest")
    wait_state(fleet, task_id, "PAUSED")
    task = fleet.http("POST", f"/api/v1/tasks/{task_id}/abort", {"by": "ops"})
    assert task["state"] == "FAILED" and task["reason"] == "aborted by ops"
    assert states(task) == {"SUCCEED": 1, "CANCELLED": 2}
    assert fleet.task(task_id)["aborted_by"]["by"] == "ops"
    with pytest.raises(urllib.error.HTTPError) as e:
        fleet.http("POST", f"/api/v1/tasks/{task_id}/abort", {"by": "ops"})
    assert e.value.code == 409
    e.value.close()


def test_run_with_a_canary_says_how_to_approve_and_follows_the_task_to_its_end(fleet):
    assert fleet.master is not None
    env = {**os.environ, "MSCHEDULE_MASTER": fleet.master.http_url}
    env.pop("MSCHEDULE_TOKEN", None)
    argv = [*cli_argv(), "run", "-t", "all", "--canary", "1", "-c", "echo canary"]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            assert p.stdout is not None
            first = p.stdout.readline()  # "task ID submitted to 3 targets (parallel 1; plan 1 ... )"
            task_id = first.split()[1]
            assert "plan 1 (parallel 1) > pause > 2 (parallel 1)" in first, first
            for _ in range(100):  # bounded: one line per change
                line = p.stdout.readline()
                if not line or "paused: go on with" in line:
                    break
            assert f"mschedule approve {task_id}" in line, line
            fleet.http("POST", f"/api/v1/tasks/{task_id}/approve", {"by": "cli-test"})
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 0, out + err
    assert fleet.task(task_id)["state"] == "SUCCEED"
