"""The real `mschedule` CLI (a child process) against a real master, broker and agents."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from harness.demo import cli_argv


def mschedule(fleet, *args: str, timeout: float = 90, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MSCHEDULE_MASTER": fleet.url}
    env.pop("MSCHEDULE_TOKEN", None)
    return subprocess.run([*cli_argv(), *args], env=env, capture_output=True, timeout=timeout, input=stdin)


def text(p: subprocess.CompletedProcess) -> tuple[str, str]:
    return p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def test_agents_lists_the_fleet_with_labels(ui_fleet):
    p = mschedule(ui_fleet, "agents", "--json")
    assert p.returncode == 0, p.stderr
    agents = json.loads(p.stdout)
    ids = {a.agent_id for a in ui_fleet.agents}
    assert {a["id"] for a in agents} == ids
    assert all(a["online"] for a in agents)
    assert sorted(f"{a['labels']['role']}/{a['labels']['zone']}" for a in agents) == ["db/bj", "web/bj", "web/sh"]

    out, _ = text(mschedule(ui_fleet, "agents"))
    assert "3 agents" in out and "role=db" in out and out.count("online") >= 3


def test_run_all_with_parallel_succeeds_and_shows_every_output(ui_fleet):
    p = mschedule(ui_fleet, "run", "-t", "all", "--parallel", "2", "-c", "echo out-$((6*7)); echo err-line >&2")
    out, err = text(p)
    assert p.returncode == 0, out + err
    assert "submitted to 3 targets (parallel 2)" in out
    assert "3/3 done - 3 succeeded, 0 failed, 0 running, 0 waiting" in out
    assert out.count("SUCCEED") >= 4 and out.count("out-42") == 3  # table rows show each first output line
    assert err == ""


def test_run_failing_script_exits_1_and_prints_failed_output(ui_fleet):
    p = mschedule(ui_fleet, "run", "-t", "role=web", "-c", "echo partial; echo broken >&2; exit 3")
    out, _ = text(p)
    assert p.returncode == 1
    assert out.count(": FAILED, exit 3") == 2  # one section per failed target
    assert out.count("broken") == 2 and "partial" in out
    assert "FAILED" in out.splitlines()[-1]


def test_a_script_that_could_not_start_shows_the_agents_reason_in_the_api_run_status_and_output(ui_fleet):
    missing = "/nonexistent/mschedule-cwd"
    p = mschedule(ui_fleet, "run", "-t", "role=db", "--cwd", missing, "--json", "-c", "echo never")
    assert p.returncode == 1, p.stderr
    task = json.loads(p.stdout)
    (target,) = task["targets"].values()
    assert target["state"] == "FAILED" and target["code"] is None
    assert target["error"] and missing in target["error"], target  # the agent's own words
    assert target["error"] in target["reason"]

    run_out, _ = text(mschedule(ui_fleet, "run", "-t", "role=db", "--cwd", missing, "-c", "echo never"))
    status_out, _ = text(mschedule(ui_fleet, "status", task["id"]))
    output_out, _ = text(mschedule(ui_fleet, "output", task["id"]))
    for out in (run_out, status_out, output_out):
        assert missing in out, out


def test_run_json_and_status_output_tasks(ui_fleet):
    p = mschedule(ui_fleet, "run", "-t", "role=db", "--json", "--timeout", "30", "-c", "printf 'a\\nb\\n'")
    assert p.returncode == 0, p.stderr
    task = json.loads(p.stdout)
    assert task["state"] == "SUCCEED" and task["timeout"] == 30 and task["target_count"] == 1
    (target,) = task["targets"].values()
    assert target["output"] == "a\nb\n" and target["output_encoding"] == "utf-8" and target["code"] == 0
    task_id, agent_id = task["id"], target["agent_id"]

    p = mschedule(ui_fleet, "status", task_id, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["id"] == task_id
    out, _ = text(mschedule(ui_fleet, "status", task_id[:8]))  # a unique prefix is enough
    assert "SUCCEED" in out and agent_id[:8] in out  # the table shows the short id

    p = mschedule(ui_fleet, "output", task_id, agent_id)
    assert p.returncode == 0 and p.stdout == b"a\nb\n"
    out, _ = text(mschedule(ui_fleet, "output", task_id))
    assert f"=== {agent_id} (SUCCEED, exit 0) ===\na\nb\n" in out

    p = mschedule(ui_fleet, "tasks", "--state", "SUCCEED", "--json")
    assert task_id in [t["id"] for t in json.loads(p.stdout)]


def test_no_wait_then_kill(ui_fleet):
    p = mschedule(ui_fleet, "run", "-t", "role=web", "--no-wait", "-c", "sleep 60")
    assert p.returncode == 0, p.stderr
    task_id = p.stdout.decode().strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until one target runs, so the kill reaches a process
        task = json.loads(mschedule(ui_fleet, "status", task_id, "--json").stdout)
        if task["counts"].get("RUNNING"):
            break
        time.sleep(0.2)
    assert task["counts"].get("RUNNING"), task
    p = mschedule(ui_fleet, "kill", task_id)
    assert p.returncode == 0 and f"kill requested for task {task_id}" in p.stdout.decode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        task = json.loads(mschedule(ui_fleet, "status", task_id, "--json").stdout)
        if task["state"] == "KILLED":
            break
        time.sleep(0.2)
    assert task["state"] == "KILLED"
    assert sorted(t["state"] for t in task["targets"].values()) == ["CANCELLED", "KILLED"]
    assert mschedule(ui_fleet, "status", task_id).returncode == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-t", "role=nosuch"], "mschedule: error: targets: target selector 'role=nosuch'"),
        (["-t", "all", "--parallel", "0"], "mschedule run: error: argument --parallel: takes N"),
        (["-t", "all", "--fail-rate", "150%"], "mschedule run: error: argument --fail-rate: takes a share"),
    ],
)
def test_bad_selectors_and_limits_are_one_line_errors(ui_fleet, args, needle):
    p = mschedule(ui_fleet, "run", *args, "-c", "true")
    out, err = text(p)
    assert p.returncode == 2
    assert err.strip().splitlines()[-1].startswith(needle), err  # (argparse's usage lines come first)
    assert out == ""


def test_run_keeps_following_across_a_master_restart(ui_fleet):
    """The master is stopped and started again mid-rollout: the CLI waits, then reports.
    (The target's 3 s outlast the restart; the agent re-sends its result until acked.)"""
    env = {**os.environ, "MSCHEDULE_MASTER": ui_fleet.url}
    p = subprocess.Popen([*cli_argv(), "run", "-t", "role=db", "-c", "sleep 3; echo survived"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        seen = b""
        for _ in range(50):
            line = p.stdout.readline()
            seen += line
            if b"1 running" in line or not line:
                break
        assert b"1 running" in seen, seen
        ui_fleet.master.stop()
        for _ in range(50):  # the CLI notices (its event stream breaks; it polls) and keeps waiting
            line = p.stdout.readline()
            seen += line
            if b"master unreachable" in line or not line:
                break
        ui_fleet.master.restart()
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        if not ui_fleet.master.running():
            ui_fleet.master.restart()
    text = (seen + out).decode()
    assert p.returncode == 0, text + err.decode()
    assert "master unreachable; retrying" in text
    assert "1/1 done - 1 succeeded" in text and "survived" in text
    ui_fleet.wait_online(30)


def test_run_returns_at_once_when_the_task_ends(ui_fleet):
    """Issue 22: the CLI follows the task's events and exits right after its end, not at
    a next poll. The gap from the master's finished_at to the process's exit includes the
    final read and the interpreter's exit; the bound is generous for a loaded machine."""
    gaps = []
    for _ in range(3):
        p = mschedule(ui_fleet, "run", "-t", "role=web", "--parallel", "2", "--json", "-c", "sleep 0.3")
        exited = time.time()
        assert p.returncode == 0, p.stderr
        task = json.loads(p.stdout)
        assert task["state"] == "SUCCEED" and task["finished_at"] is not None
        gaps.append(exited - task["finished_at"])
    assert all(g >= 0 for g in gaps), gaps
    assert sorted(gaps)[1] < 1.0, gaps  # the median of 3
