"""A master gives back the memory and disk of large outputs (issue 10: 25 x 8 MiB outputs
left it at 336 MB with a 169 MB write-ahead log). Real broker, master and agents."""

from __future__ import annotations

import os
import time

from bench.procstat import rss_bytes
from harness.fleet import Fleet
from mschedule_master.store import WAL_LIMIT

BIG = "head -c 4194304 /dev/zero | tr '\\0' a; head -c 4194304 /dev/zero | tr '\\0' b >&2"


def _rss_mb(pid: int) -> float:
    rss = rss_bytes(pid)
    assert rss, "no VmRSS"
    return rss / 2**20



def test_a_master_that_stored_large_outputs_returns_to_its_size_and_keeps_a_small_wal(broker, prefix, tmp_path):
    with Fleet(tmp_path, broker.url, prefix, agents=3, master_flags={"delivery_timeout": 60}) as fleet:
        master = fleet.master
        assert master is not None
        time.sleep(1)
        before = _rss_mb(master.pid)
        task_ids = [fleet.submit(["all"], BIG, output_cap=4194304) for _ in range(4)]  # 12 results of 8 MiB at once
        for task_id in task_ids:
            summary = fleet.wait_task(task_id, 120)
            assert summary["state"] == "SUCCEED", summary
        # the timer trims within a tick: polled (at most 20 s: ticks come late on a loaded machine)
        deadline = time.monotonic() + 20
        while True:
            after, wal = _rss_mb(master.pid), os.path.getsize(f"{master.db}-wal")
            if (after - before < 40 and wal <= WAL_LIMIT) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert after - before < 40, (before, after)
        assert wal <= WAL_LIMIT
