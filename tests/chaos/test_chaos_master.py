"""The master down or frozen for longer than delivery_timeout right after a submit, while
its agents take the task and run it: no deadline may run while it cannot hear, so every
target ends as it really did (SUCCEED), and the verdict never needs revising."""

from __future__ import annotations

import os
import signal
import time

from harness.procs import stopped, wait_until

from .conftest import OUTAGE, events, mark, runs


def assert_every_target_succeeded_once(fleet, task_id: str, markers) -> None:
    summary = fleet.wait_task(task_id, 30)
    task = fleet.task(task_id)
    verdicts = {a: (t["state"], t["reason"]) for a, t in task["targets"].items()}
    assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 3}), verdicts
    assert all((t["state"], t["code"]) == ("SUCCEED", 0) for t in task["targets"].values()), verdicts
    assert runs(markers) == {"0": 1, "1": 1, "2": 1}, "every target runs exactly once"
    assert events(fleet.master.db, "revised") == [], "no target was judged before the master could hear"
    assert task["revised_at"] is None


def _warm_up(fleet) -> None:
    """One task through every agent first: each one has subscribed to its tasks topic."""
    warm_up = fleet.submit(["all"], "true")
    assert fleet.wait_task(warm_up, 30)["state"] == "SUCCEED"


def _dispatch_while_agents_wait(fleet, markers) -> str:
    """Submit while the agents are frozen: the task waits in their broker sessions, so no
    ack can reach the master before what the test does to it next."""
    return fleet.submit(["all"], mark(markers), parallel=3)


def test_a_master_killed_right_after_a_submit_and_down_longer_than_delivery_timeout_judges_nothing_unheard(
    fleet, markers
):
    _warm_up(fleet)
    with stopped(*(a.pid for a in fleet.agents)):
        task_id = _dispatch_while_agents_wait(fleet, markers)
        fleet.master.kill9()
    down_at = time.monotonic()
    wait_until(lambda: len(runs(markers)) == 3, 15, what="every agent running the task while the master is down")
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # > delivery_timeout + ack_grace
    fleet.master.restart()
    assert_every_target_succeeded_once(fleet, task_id, markers)


def test_a_master_frozen_right_after_a_submit_for_longer_than_delivery_timeout_judges_nothing_unheard(
    fleet, markers
):
    _warm_up(fleet)
    master_pid = fleet.master.pid
    with stopped(*(a.pid for a in fleet.agents)):
        task_id = _dispatch_while_agents_wait(fleet, markers)
        os.kill(master_pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        wait_until(lambda: len(runs(markers)) == 3, 15, what="every agent running the task while the master is frozen")
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - frozen_at)))
    finally:
        os.kill(master_pid, signal.SIGCONT)
    assert_every_target_succeeded_once(fleet, task_id, markers)
