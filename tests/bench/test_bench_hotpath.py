"""bench/hotpath.py end to end at a tiny size: each phase runs against a real master with
instant protocol-level agents and checks every result (check_summary)."""

from __future__ import annotations

import json

from bench.hotpath import main


def test_the_hot_path_bench_runs_every_phase_and_checks_every_result(tmp_path):
    argv = ["--fanout", "6", "--repeat", "2", "--results", "30", "--hb-agents", "20", "--hb-interval", "1",
            "--hb-seconds", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = json.loads((tmp_path / "hotpath.json").read_text())
    assert out["fanout"]["problems"] == [] and len(out["fanout"]["seconds"]) == 2
    assert out["ingest"]["problems"] == [] and out["ingest"]["results"] == 30 and out["ingest"]["per_s"] > 0
    assert out["hb"]["sent"] >= 20 and out["hb"]["cpu_share"] >= 0
