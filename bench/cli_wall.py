"""What the user sees (issue 22): ``mschedule run -c true`` wall time on N agents, from
pressing Enter to the prompt coming back, with the master's own share, and Ansible's
``-m raw`` on the same N when it is installed (bench/peers.py), with the ratio.

    python -m bench.cli_wall                         # N = 1 and 10, median of 3
    python -m bench.cli_wall --sizes 1,10,100,1000 --runs 3
    python -m bench --cli-wall 1,10,100,1000         # the same rows after the other scenarios

Per N it starts a master (production timings) and N agents on one broker: up to
``--real-max`` (100) real ``mschedule-agent`` processes (harness/), beyond that simulated
agents (bench/fleetsim.py: the agent's own core, a real MQTT session each, packed into a
few worker processes). It runs the CLI as a child process, one warm-up then ``--runs``
timed runs, and keeps the medians: the CLI's wall time, the master's created -> finished
(from the task's JSON), and the gap from finished_at to the CLI's exit. Then, with the
fleet stopped (its idle ticking would slow Ansible down), Ansible on N local hosts.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.broker import Mosquitto
from harness.demo import PRODUCTION_TIMINGS, DemoFleet, cli_argv, start_demo_fleet
from harness.fleet import start_master

from . import peers
from .fleetsim import Fleet, raise_fd_limit

#: Up to this many agents the rows use real agent processes; beyond, simulated ones.
REAL_MAX = 100


@dataclass(frozen=True, slots=True)
class Target:
    """A running fleet as the CLI sees it: the master's URL and the selector for all of it."""

    url: str
    selector: str
    simulated: bool


def run_once(target: Target, n: int) -> dict[str, float]:
    """One ``mschedule run`` on the whole fleet, as a child process: its wall time, the
    master's created -> finished, and finished -> the CLI's exit."""
    env = {**os.environ, "MSCHEDULE_MASTER": target.url}
    env.pop("MSCHEDULE_TOKEN", None)
    began = time.time()
    p = subprocess.run([*cli_argv(), "run", "-t", target.selector, "--parallel", "100%", "--yes", "--json", "-c", "true"],
                       env=env, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    ended = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"mschedule run failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}")
    task = json.loads(p.stdout)
    if task["state"] != "SUCCEED" or task["target_count"] != n:
        raise RuntimeError(f"unexpected task: {task['state']} on {task['target_count']} targets")
    return {
        "wall": ended - began,
        "master": task["finished_at"] - task["created_at"],
        "gap": ended - task["finished_at"],
    }


def time_runs(target: Target, n: int, runs: int) -> dict[str, float]:
    """One warm-up (the agents' first task, the master's first request), then the medians."""
    run_once(target, n)
    got = [run_once(target, n) for _ in range(runs)]
    return {k: statistics.median(g[k] for g in got) for k in ("wall", "master", "gap")}


@contextmanager
def fleet_of(n: int, workdir: Path, broker_url: str, *, real_max: int = REAL_MAX) -> Iterator[Target]:
    """A master and ``n`` agents, real processes up to ``real_max``, simulated beyond."""
    prefix = f"cliwall{uuid.uuid4().hex[:8]}/mschedule"
    if n <= real_max:
        fleet = start_demo_fleet(workdir, broker_url, prefix, labels=({"role": "bench"},) * n,
                                 master_flags=PRODUCTION_TIMINGS)  # fmt: skip
        try:
            yield Target(fleet.url, "role=bench", simulated=False)
        finally:
            fleet.stop()
        return
    with Fleet(broker_url, prefix, workdir / "sim", n):  # every simulated agent has the label sim=1
        sim_master = DemoFleet(start_master(workdir / "master", broker_url, prefix, **PRODUCTION_TIMINGS))
        try:
            deadline = time.monotonic() + max(60.0, n / 10)
            while sim_master.online_agents() < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the master sees {sim_master.online_agents()} of {n} simulated agents online")
                time.sleep(0.5)
            yield Target(sim_master.url, "sim=1", simulated=True)
        finally:
            sim_master.stop()


def measure(sizes: list[int], runs: int, *, ansible: bool = True, real_max: int = REAL_MAX) -> list[dict]:
    """One row per N: ``n``, ``simulated``, ``load`` (1-minute load average), the medians ``wall``/``master``/``gap``, and
    ``ansible`` (its median wall, forks, and ``ratio`` = Ansible / mschedule) or None when
    Ansible is not installed or ``ansible`` is False."""
    exe = peers.find_ansible() if ansible else None
    raise_fd_limit()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mschedule-cli-wall-") as tmp:
        broker = Mosquitto(Path(tmp) / "broker", overrides={"connection_messages": "false"})
        broker.start()
        try:
            for n in sizes:
                with fleet_of(n, Path(tmp) / f"n{n}", broker.url, real_max=real_max) as target:
                    load = os.getloadavg()[0]  # the machine is shared: the load the row was measured under
                    row: dict = {"n": n, "simulated": target.simulated, "load": load, **time_runs(target, n, runs)}
                if exe is not None:
                    got = peers.time_ansible(exe, n, runs)
                    row["ansible"] = {**got, "ratio": got["wall"] / row["wall"]}
                else:
                    row["ansible"] = None
                rows.append(row)
                print_row(row)
        finally:
            broker.stop()
    return rows


def cli_start_ms(runs: int = 10) -> float:
    """The best of ``runs`` wall times of ``mschedule --help`` (interpreter start included)."""
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([*cli_argv(), "--help"], capture_output=True, check=True, timeout=60)
        best = min(best, time.perf_counter() - began)
    return best * 1000


HEADER = (
    "| N agents | `mschedule run` wall (median) | master's own (created -> finished) | finished -> CLI exit "
    "| `ansible -m raw` wall (median, forks) | Ansible / mschedule | load |\n|---|---|---|---|---|---|---|"
)


def row_line(row: dict) -> str:
    """One markdown row (README Performance takes these as printed)."""
    kind = "simulated" if row["simulated"] else "real"
    a = row.get("ansible")
    peer = f"{a['wall']:.2f} s (-f {a['forks']}) | {a['ratio']:.1f}x" if a else "not installed | -"
    return f"| {row['n']:,} ({kind}) | {row['wall']:.3f} s | {row['master']:.3f} s | {row['gap'] * 1000:.0f} ms | {peer} | {row['load']:.1f} |"


def print_row(row: dict) -> None:
    print(f"  N={row['n']}: {row_line(row)}", file=sys.stderr, flush=True)


def print_rows(rows: list[dict]) -> None:
    print(f"mschedule --help (CLI start, best of 10): {cli_start_ms():.0f} ms")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(HEADER)
    for row in rows:
        print(row_line(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cli_wall", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,10", help="agent counts, comma-separated (default 1,10)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per size; the median is shown (default 3)")
    p.add_argument(
        "--real-max",
        type=int,
        default=REAL_MAX,
        help=f"real agent processes up to this N, simulated beyond (default {REAL_MAX})",
    )
    p.add_argument("--no-ansible", action="store_true", help="leave Ansible out even when it is installed")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print_rows(measure(sizes, args.runs, ansible=not args.no_ansible, real_max=args.real_max))
    return 0


if __name__ == "__main__":
    sys.exit(main())
