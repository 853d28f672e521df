"""The master with ten real agents on a real mosquitto: the concurrency window, the
failure thresholds and kill, measured by the scripts themselves. One fleet serves the
whole module; every test ends its task before the next begins."""

from __future__ import annotations

import time
import uuid

import pytest

from harness.fleet import Fleet

N = 10


@pytest.fixture(scope="module")
def fleet(broker, tmp_path_factory):
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    with Fleet(tmp_path_factory.mktemp("fleet"), broker.url, prefix, agents=N) as f:
        yield f


def _index_of(fleet: Fleet) -> dict[str, int]:
    return {a: i for i, a in enumerate(fleet.agent_ids)}


def test_parallel_3_never_runs_more_than_3_at_once(fleet, tmp_path):
    log = tmp_path / "runs.log"
    script = f'echo "start $MSCHEDULE_TEST_AGENT $(date +%s.%N)" >> {log}; sleep 0.4; echo "end $MSCHEDULE_TEST_AGENT $(date +%s.%N)" >> {log}'
    task_id = fleet.submit(["all"], script, parallel=3)
    summary = fleet.wait_task(task_id, 60)
    assert summary["state"] == "SUCCEED", summary
    events = []
    for line in log.read_text().splitlines():
        kind, idx, ts = line.split()
        events.append((float(ts), 0 if kind == "end" else 1, idx))
    starts = [e for e in events if e[1] == 1]
    assert sorted(e[2] for e in starts) == sorted(str(i) for i in range(N)), "every target ran exactly once"
    running, peak = 0, 0
    for _ts, is_start, _idx in sorted(events):
        running += 1 if is_start else -1
        peak = max(peak, running)
    assert peak == 3, f"peak concurrency {peak}"


def test_fail_count_0_aborts_at_the_first_failure_and_kills_the_running(fleet):
    # Targets are dispatched in the order the reply lists them; the first one fails at once,
    # the next two (in the window of 3) would run for a long time.
    index = _index_of(fleet)
    first = sorted(fleet.agent_ids, key=lambda a: a)[0]  # resolved order: hostname (all equal), then id
    script = f'if [ "$MSCHEDULE_TEST_AGENT" = "{index[first]}" ]; then exit 7; fi; sleep 60'
    task_id = fleet.submit(["all"], script, parallel=3, fail_count=0)
    summary = fleet.wait_task(task_id, 60)
    assert summary["state"] == "FAILED"
    assert summary["counts"] == {"FAILED": 1, "KILLED": 2, "CANCELLED": 7}
    assert summary["targets"][first] == {"state": "FAILED", "code": 7}
    task = fleet.task(task_id)
    assert "fail_count" in task["reason"]
    killed = [t for t in task["targets"].values() if t["state"] == "KILLED"]
    assert all(t["signal"] is not None or t["code"] is not None for t in killed)


def test_fail_rate_20_percent_aborts_at_the_third_failure(fleet):
    task_id = fleet.submit(["all"], "exit 1", parallel=1, fail_rate=0.2)
    summary = fleet.wait_task(task_id, 60)
    assert (summary["state"], summary["counts"]) == ("FAILED", {"FAILED": 3, "CANCELLED": 7})


def test_drain_lets_running_targets_finish_after_an_abort(fleet):
    index = _index_of(fleet)
    first = sorted(fleet.agent_ids)[0]
    script = f'if [ "$MSCHEDULE_TEST_AGENT" = "{index[first]}" ]; then exit 1; fi; sleep 0.5'
    task_id = fleet.submit(["all"], script, parallel=3, fail_count=0, on_abort="drain")
    summary = fleet.wait_task(task_id, 60)
    assert (summary["state"], summary["counts"]) == ("FAILED", {"FAILED": 1, "SUCCEED": 2, "CANCELLED": 7})


def test_kill_mid_rollout_kills_the_running_and_cancels_the_rest(fleet):
    task_id = fleet.submit(["all"], "sleep 60", parallel=2)
    fleet.wait_progress(task_id, lambda p: p["counts"].get("RUNNING") == 2)
    t0 = time.monotonic()
    fleet.kill(task_id)
    summary = fleet.wait_task(task_id, 30)
    assert (summary["state"], summary["counts"]) == ("KILLED", {"KILLED": 2, "CANCELLED": 8})
    assert time.monotonic() - t0 < 15
    task = fleet.task(task_id)
    assert task["state"] == "KILLED" and task["finished_at"] is not None


def test_unknown_selector_is_refused_naming_it(fleet):
    with pytest.raises(RuntimeError, match="nosuch-host"):
        fleet.submit(["nosuch-host"], "true")
