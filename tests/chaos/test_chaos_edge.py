"""An edge broker down for longer than lost_grace while its agents' scripts succeed: the
master cannot hear that datacenter, so its LOST clock waits (up to lost_max), and whatever
it decided, the final verdict is what the agents report: SUCCEED, each script run once."""

from __future__ import annotations

import time

from .conftest import OUTAGE, events, mark, runs, wait_final_state


def test_an_edge_down_longer_than_lost_grace_while_its_scripts_succeed_ends_with_the_truth(edge_fleet, markers, tmp_path):
    fleet, xdc = edge_fleet, edge_fleet.xdc
    gate = tmp_path / "gate"
    script = f"{mark(markers)}; for i in $(seq 600); do [ -e {gate} ] && exit 0; sleep 0.05; done; exit 9"
    task_id = fleet.submit(["all"], script, parallel=2)
    fleet.wait_progress(task_id, lambda p: p["counts"].get("RUNNING") == 2, 30)
    seen = len(xdc.bridge_states("bj"))
    cut_at = time.monotonic()
    xdc.edges["bj"].broker.stop()
    xdc.wait_bridge("bj", up=False, after=seen)
    gate.touch()  # the scripts succeed while the master cannot hear their datacenter
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut_at)))  # > lost_grace
    xdc.edges["bj"].broker.start()

    task = wait_final_state(fleet, task_id, "SUCCEED", 40)
    assert task["counts"] == {"SUCCEED": 2}
    assert all((t["state"], t["code"]) == ("SUCCEED", 0) for t in task["targets"].values())
    assert runs(markers) == {"0": 1, "1": 1}, "every target runs exactly once"
    # Either it was never judged LOST, or that verdict was revised by the agent's report.
    revised = [(a, d) for _t, a, d in events(fleet.master.db, "revised") if a is not None]
    assert all('"old":"LOST","new":"SUCCEED"' in d for _a, d in revised), revised
