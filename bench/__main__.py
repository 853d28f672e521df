"""``python -m bench`` (``make bench``): baselines, then the scenarios of issue 7, then
``bench/results/latest.json`` and ``latest.md``.

    python -m bench                  # everything, full sizes (~10 minutes)
    python -m bench --quick          # small sizes (~1-2 minutes)
    python -m bench --scenario 2 -s 4
    python -m bench --profile        # also py-spy the master and a fleet worker
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from harness.broker import Mosquitto

from . import baselines, report
from .fleetsim import raise_fd_limit
from .scenarios import SCENARIOS, Context

log = logging.getLogger("bench")

RESULTS = Path(__file__).resolve().parent / "results"


def _mosquitto_version() -> str:
    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "mosquitto"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="mschedule benchmarks (issue 7).")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in a minute or two")
    p.add_argument("-s", "--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)")
    p.add_argument("--profile", action="store_true", help="record py-spy profiles of the master and a fleet worker")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"where latest.json/latest.md go (default {RESULTS})")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    p.add_argument("--readme", action="store_true", help="also put the table into README.md's Performance section")
    p.add_argument("--cli-wall", metavar="SIZES", help="also time `mschedule run` on N agents (real up to 100, simulated "
                   "above), e.g. 1,10,100,1000, and Ansible -m raw on the same N when installed (bench/cli_wall.py)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="mschedule-bench-"))
    command = "python -m bench" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    results = {
        "command": command,
        "started_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "mosquitto": _mosquitto_version(),
            "kernel": platform.release(),
        },
        "quick": args.quick,
    }
    outcomes: list[report.Outcome] = []
    broker = Mosquitto(workdir / "broker", overrides={"connection_messages": "false"})
    try:
        broker.start()
        log.info("broker on %s; work directory %s", broker.url, workdir)
        results["baselines"] = baselines.measure(broker.url, "bench-baseline", quick=args.quick)
        log.info("baselines: %s", results["baselines"])
        ctx = Context(broker=broker, workdir=workdir, quick=args.quick, baselines=results["baselines"], profile=args.profile,
                      profile_dir=args.out / "profiles")
        for sid in args.scenario or sorted(SCENARIOS):
            began = time.monotonic()
            log.info("scenario %s ...", sid)
            try:
                outcome = SCENARIOS[sid](ctx)
            except Exception as e:
                log.error("scenario %s failed", sid, exc_info=True)
                outcome = report.Outcome(sid, SCENARIOS[sid].__doc__.splitlines()[0], error=f"{type(e).__name__}: {e}")
                outcome.metrics["traceback"] = traceback.format_exc()[-3000:]
            outcome.metrics["wall_s"] = round(time.monotonic() - began, 1)
            outcomes.append(outcome)
            log.info("scenario %s: ok=%s checks=%s problems=%s", sid, outcome.ok,
                     [(c.figure, c.value, c.ok) for c in outcome.checks], outcome.problems[:3])
            report.write(results, outcomes, args.out)  # keep what we have if a later one hangs
    finally:
        broker.stop()
        if args.keep:
            log.info("work directory kept: %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.cli_wall:
        from . import cli_wall

        results["cli_wall"] = cli_wall.measure([int(n) for n in args.cli_wall.split(",")], runs=3)
    json_path, md_path = report.write(results, outcomes, args.out)
    print(md_path.read_text())
    if args.cli_wall:
        cli_wall.print_rows(results["cli_wall"])
    print(f"written: {json_path} {md_path}")
    if args.readme:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        print("README.md updated" if report.update_readme(readme, md_path.read_text()) else "README.md has no bench markers")
    print(report.verdict(outcomes))
    return report.exit_status(outcomes)


if __name__ == "__main__":
    sys.exit(main())
