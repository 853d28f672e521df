"""``python -m bench.ha``: highly available masters on PostgreSQL (issue 18).

* **failover**: three masters on a private PostgreSQL (harness/postgres.py, fsync on, as
  deployed), two real agents running a rollout; the leader is killed with -9 and the time
  until a standby is ready as the new leader (it holds the lead, restored the rollouts, is
  connected with the leaders' MQTT session) is taken; the killed master is restarted as a
  standby and the next run kills the new leader. Median of ``--runs`` (5).
* **single-target latency**: one real agent, a ``true`` task submitted over MQTT, until its
  retained summary arrives (as bench scenario 1), on an SQLite master and on a PostgreSQL
  leader, ``--tasks`` (100) each, one after the other.

Prints a table, writes ``bench/results/ha.json``. Report the load (``uptime``) with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness.agentproc import start_agent
from harness.broker import Mosquitto
from harness.fleet import READY, start_master
from harness.ha import HaFleet
from harness.postgres import Postgres
from harness.procs import wait_until

from .client import BenchClient
from .stats import percentile

RESULTS = Path(__file__).resolve().parent / "results"


def failover(broker: Mosquitto, pg: Postgres, workdir: Path, runs: int) -> list[float]:
    prefix = f"ha{uuid.uuid4().hex[:6]}/mschedule"
    seconds: list[float] = []
    with HaFleet(workdir / "failover", broker.url, prefix, pg.create_database(), masters=3, agents=2) as ha:
        for _ in range(runs):
            old = ha.leader()
            task_id = ha.submit(old, ["all"], "sleep 1", parallel=1)
            ha.wait_state(task_id, "RUNNING", timeout=30)
            offset = {id(m): len(m.log()) for m in ha.masters}
            killed_at = time.monotonic()
            old.kill9()
            new = ha.leader(timeout=30, exclude=(old,))
            wait_until(lambda: READY in new.log()[offset[id(new)]:], timeout=30, interval=0.01, what="the new leader")  # noqa: B023
            seconds.append(time.monotonic() - killed_at)
            ha.wait_state(task_id, "SUCCEED", timeout=60)
            i = ha.masters.index(old)
            ha.masters[i] = ha.start_master(i)  # back as a standby
    return seconds


def latency(broker: Mosquitto, workdir: Path, db: str | None, tasks: int) -> list[float]:
    """Seconds from submit to summary of ``tasks`` single-target tasks (bench scenario 1's way)."""
    prefix = f"lat{uuid.uuid4().hex[:6]}/mschedule"
    master = start_master(workdir / "master", broker.url, prefix, db=db)
    master.ready_texts = (READY,)
    agent = None
    try:
        master.wait_ready(30)
        agent = start_agent(workdir / "agent", broker.url, prefix, wait=True)
        out: list[float] = []
        with BenchClient(broker.url, prefix) as client:
            wait_until(lambda: _runs(client, agent.agent_id), timeout=30, interval=0.5, what="the master to see the agent")
            for _ in range(5):  # warm up
                client.run([agent.agent_id], timeout=30)
            for _ in range(tasks):
                _done, rtt = client.run([agent.agent_id], timeout=30)
                out.append(rtt)
        return out
    finally:
        if agent is not None:
            agent.stop()
        master.stop()


def _runs(client: BenchClient, agent_id: str) -> bool:
    try:
        client.run([agent_id], timeout=5)
        return True
    except (TimeoutError, RuntimeError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ha", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="failovers (median reported)")
    p.add_argument("--tasks", type=int, default=100, help="single-target tasks per store")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mschedule-bench-ha-"))
    broker = Mosquitto(workdir / "broker", overrides={"connection_messages": "false"})
    pg = Postgres(durable=True)
    try:
        broker.start()
        pg.start()
        load_before = os.getloadavg()
        fo = failover(broker, pg, workdir, args.runs)
        print(f"failover runs (s): {', '.join(f'{x:.2f}' for x in fo)}", flush=True)
        lite = latency(broker, workdir / "sqlite", None, args.tasks)
        post = latency(broker, workdir / "pg", pg.create_database(), args.tasks)
        load_after = os.getloadavg()
    finally:
        pg.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def ms(xs: list[float], q: float) -> float:
        return round(percentile([x * 1000 for x in xs], q), 2)

    doc = {
        "failover_s": [round(x, 3) for x in fo], "failover_median_s": round(statistics.median(fo), 3),
        "latency_ms": {"sqlite": {"p50": ms(lite, 50), "p99": ms(lite, 99), "n": len(lite)},
                       "postgresql": {"p50": ms(post, 50), "p99": ms(post, 99), "n": len(post)}},
        "loadavg_before": load_before, "loadavg_after": load_after,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ha.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("| figure | SQLite | PostgreSQL |\n| --- | --- | --- |")
    print(f"| failover, kill -9 of the leader -> new leader ready (median of {len(fo)}) | - | "
          f"{doc['failover_median_s']} s (runs: {', '.join(f'{x:.2f}' for x in fo)}) |")  # fmt: skip
    print(f"| single target `true`, submit -> summary, p50 / p99 ({args.tasks} tasks) | "
          f"{ms(lite, 50)} / {ms(lite, 99)} ms | {ms(post, 50)} / {ms(post, 99)} ms |")  # fmt: skip
    print(f"load average before {load_before}, after {load_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
