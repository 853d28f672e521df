"""docs/schedules.md's first block, run verbatim against a real master and agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]


def test_the_schedules_doc_opening_example_works_as_printed(broker, prefix, tmp_path):
    block = (ROOT / "docs/schedules.md").read_text().split("```\n", 1)[1].split("```", 1)[0]
    with Fleet(tmp_path, broker.url, prefix, agents=1) as fleet:
        env = {**os.environ, "MSCHEDULE_MASTER": fleet.master.http_url,
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
        run = subprocess.run(["bash", "-ec", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "schedule nightly added: backup@default on '30 2 * * *' in Europe/Berlin" in run.stdout
    assert run.stdout.count("02:30 CET") >= 3 or run.stdout.count("02:30 CEST") >= 3
