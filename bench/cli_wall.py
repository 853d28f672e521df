"""What the user sees (issue 22): ``mschedule run -c true`` wall time on N real agent
processes, from pressing Enter to the prompt coming back, with the master's own share.

    python -m bench.cli_wall                 # N = 1 and 10, median of 3
    python -m bench.cli_wall --sizes 1,10,100 --runs 3
    python -m bench --cli-wall 1,10,100      # the same rows after the other scenarios

Per N it starts a broker, a master and N agents (harness/), runs the CLI N times as a
child process, and prints one row: the CLI's wall time, the master's created -> finished,
the gap from finished_at to the CLI's exit, and the CLI's start (``--help``) for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness.broker import Mosquitto
from harness.demo import cli_argv, start_demo_fleet


def run_once(url: str, n: int) -> dict[str, float]:
    env = {**os.environ, "MSCHEDULE_MASTER": url}
    env.pop("MSCHEDULE_TOKEN", None)
    began = time.time()
    p = subprocess.run([*cli_argv(), "run", "-t", "role=bench", "--parallel", "100%", "--yes", "--json", "-c", "true"],
                       env=env, capture_output=True, timeout=300)  # fmt: skip
    ended = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"mschedule run failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}")
    task = json.loads(p.stdout)
    if task["state"] != "SUCCEED" or task["target_count"] != n:
        raise RuntimeError(f"unexpected task: {task['state']} on {task['target_count']} targets")
    return {"wall": ended - began, "master": task["finished_at"] - task["created_at"], "gap": ended - task["finished_at"]}


def cli_start_ms(runs: int = 10) -> float:
    """The best of ``runs`` wall times of ``mschedule --help`` (interpreter start included)."""
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([*cli_argv(), "--help"], capture_output=True, check=True, timeout=60)
        best = min(best, time.perf_counter() - began)
    return best * 1000


def measure(sizes: list[int], runs: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="mschedule-cli-wall-") as tmp:
        broker = Mosquitto(Path(tmp) / "broker", overrides={"connection_messages": "false"})
        broker.start()
        try:
            for n in sizes:
                prefix = f"cliwall{uuid.uuid4().hex[:8]}/mschedule"
                fleet = start_demo_fleet(Path(tmp) / f"n{n}", broker.url, prefix, labels=({"role": "bench"},) * n)
                try:
                    run_once(fleet.url, n)  # warm-up: the agents' first task, the master's first request
                    got = [run_once(fleet.url, n) for _ in range(runs)]
                finally:
                    fleet.stop()
                rows.append({"n": n, **{k: statistics.median(g[k] for g in got) for k in ("wall", "master", "gap")}})
        finally:
            broker.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cli_wall", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,10", help="agent counts, comma-separated (default 1,10)")
    p.add_argument("--runs", type=int, default=3, help="runs per size; the median is shown (default 3)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print_rows(measure(sizes, args.runs))
    return 0


def print_rows(rows: list[dict]) -> None:
    print(f"mschedule --help (CLI start, best of 10): {cli_start_ms():.0f} ms")
    print("| N (real agents) | `mschedule run` wall (median) | master's own (created -> finished) | finished -> CLI exit |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']} | {row['wall']:.3f} s | {row['master']:.3f} s | {row['gap'] * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
