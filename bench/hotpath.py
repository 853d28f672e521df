"""The master's hot path alone (issues 22 and 24), cheaper than ``python -m bench``: with
instant protocol-level agents (bench/ingest.py's FakeAgents) on one mosquitto,

* fan-out: the master's share of a fan-out to ``--fanout`` agents (scenario 2's "master's
  share (instant agents)"), ``--repeat`` times, median, and the master's CPU seconds;
* ingestion: ``--results`` SUCCEED results published at once -> the task's summary
  (scenario 5's "master result ingestion"), results/s and the master's CPU seconds;
* heartbeats: ``--hb-agents`` registered agents heartbeating every ``--hb-interval`` s for
  ``--hb-seconds``: the master's CPU share (scenario 4's first phase, without the fleet).

    python -m bench.hotpath                       # ~1-2 minutes
    python -m bench.hotpath --profile             # py-spy each phase (pip install -e '.[bench]')
    python -m bench.hotpath --skip hb --repeat 1
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.broker import Mosquitto
from mschedule_master.config import DEFAULT_FLUSH_INTERVAL

from .capacity import cpu_seconds, heartbeats, uptime
from .client import BenchClient, check_summary
from .ingest import FakeAgents, wait_idle
from .master import MasterProc
from .profile import py_spy, recording

log = logging.getLogger("bench.hotpath")

RESULTS = Path(__file__).resolve().parent / "results"


def fanout(url: str, workdir: Path, n: int, repeat: int, profile: Path | None, broker_pid: int = 0) -> dict[str, Any]:
    prefix = f"hp-fan-{uuid.uuid4().hex[:6]}/mschedule"
    seconds, cpu, problems, dispatched, own, broker = [], [], [], [], [], []
    with MasterProc(url, prefix, workdir / "fanout") as master, FakeAgents(url, prefix, n, respond=True) as fake:
        fake.register()
        master.wait_online(n, 120)
        wait_idle(master.pid, timeout=60)
        with BenchClient(url, prefix) as client:
            for i in range(repeat):
                fake.tasks.clear()
                c0, p0, b0 = cpu_seconds(master.pid), time.process_time(), cpu_seconds(broker_pid) if broker_pid else 0.0
                last = profile is not None and i == repeat - 1
                with _profiled(master.pid, profile / f"fanout-{n}.txt" if last and profile else None) as prof:
                    request_id, at = client.submit(fake.ids, parallel=n)
                    done = client.finished(client.reply(request_id, 120).task_id, 120)
                    s = done.at - at
                    dispatched.append(fake.last_task_at - at)
                cpu.append(cpu_seconds(master.pid) - c0)
                own.append(time.process_time() - p0)
                broker.append((cpu_seconds(broker_pid) - b0) if broker_pid else 0.0)
                seconds.append(s)
                problems += check_summary(done, fake.ids)
                wait_idle(master.pid, timeout=60)
    return {"agents": n, "seconds": [round(s, 3) for s in seconds], "median_s": round(statistics.median(seconds), 3),
            "cpu_s": [round(c, 3) for c in cpu],
            "last_task_s": [round(d, 3) for d in dispatched], "agents_cpu_s": [round(c, 3) for c in own],
            "broker_cpu_s": [round(c, 3) for c in broker], "problems": problems, "profile": _top(prof)}  # fmt: skip


def ingestion(url: str, workdir: Path, n: int, profile: Path | None, broker_pid: int = 0) -> dict[str, Any]:
    prefix = f"hp-ing-{uuid.uuid4().hex[:6]}/mschedule"
    with MasterProc(url, prefix, workdir / "ingest") as master, FakeAgents(url, prefix, n, ack=True) as fake:
        fake.register()
        registered = time.monotonic()
        master.wait_online(n, 120)
        with BenchClient(url, prefix) as client:
            request_id, _ = client.submit(fake.ids, parallel=n)
            reply = client.reply(request_id, 60)
            fake.wait_dispatched(120)
            messages = fake.results()
            # The master saves the agents it learnt of at its next flush (every 5 s): saving
            # these n just registered is no part of ingesting results (0.3 s of CPU at 20,000,
            # which fell inside the measured span in some runs and not in others).
            time.sleep(max(0.0, DEFAULT_FLUSH_INTERVAL + 0.5 - (time.monotonic() - registered)))
            wait_idle(master.pid, timeout=60)
            with _profiled(master.pid, profile and profile / f"ingest-{n}.txt") as prof:
                b0, p0 = cpu_seconds(broker_pid) if broker_pid else 0.0, time.process_time()
                c0, first = cpu_seconds(master.pid), time.perf_counter()
                published = fake.publish_all(messages)
                done = client.finished(reply.task_id, 300)
                cpu = cpu_seconds(master.pid) - c0
                own, broker = time.process_time() - p0, (cpu_seconds(broker_pid) - b0) if broker_pid else 0.0
            seconds = done.at - first
            problems = check_summary(done, fake.ids)
    return {"results": n, "seconds": round(seconds, 3), "per_s": round(n / seconds, 1), "cpu_s": round(cpu, 2),
            "per_cpu_s": round(n / cpu, 1) if cpu > 0 else None,  # None: below /proc's 10 ms clock (a tiny run)
            "publisher_s": round(published, 3), "agents_cpu_s": round(own, 2),
            "broker_cpu_s": round(broker, 2), "problems": problems, "profile": _top(prof)}  # fmt: skip


def heartbeat_share(url: str, workdir: Path, n: int, interval: float, seconds: float, profile: Path | None) -> dict[str, Any]:
    prefix = f"hp-hb-{uuid.uuid4().hex[:6]}/mschedule"
    with MasterProc(url, prefix, workdir / "hb") as master, FakeAgents(url, prefix, n) as fake:
        fake.register()
        master.wait_online(n, 300)
        wait_idle(master.pid, timeout=120)
        with _profiled(master.pid, profile and profile / f"heartbeats-{n}.txt") as prof:
            c0, w0 = cpu_seconds(master.pid), time.monotonic()
            sent = heartbeats(fake, seconds, interval)
            share = (cpu_seconds(master.pid) - c0) / (time.monotonic() - w0)
    return {"agents": n, "interval_s": interval, "sent": sent, "cpu_share": round(share, 3), "profile": _top(prof)}


@contextmanager
def _profiled(pid: int, out: Path | None) -> Iterator[dict[str, Any]]:
    """py-spy ``pid`` while the block runs. The master's MQTT I/O runs on its loop's thread
    (no paho thread to tell apart any more), and py-spy's ``--gil`` recorded no sample
    of it: every busy thread is sampled."""
    if out is None or py_spy() is None:
        yield {}
        return
    with recording(pid, out) as summary:
        yield summary


def _top(prof: dict[str, Any]) -> dict[str, Any]:
    return {k: prof.get(k, [])[:12] for k in ("self_pct", "total_pct")} if prof else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.splitlines()[0])
    p.add_argument("--fanout", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--results", type=int, default=20000)
    p.add_argument("--hb-agents", type=int, default=10000)
    p.add_argument("--hb-interval", type=float, default=5.0)
    p.add_argument("--hb-seconds", type=float, default=20.0)
    p.add_argument("--skip", action="append", default=[], choices=["fanout", "ingest", "hb"])
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="mschedule-hotpath-"))
    prof = args.out / "profiles" if args.profile else None
    out: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": uptime()}
    broker = Mosquitto(workdir / "broker", overrides={"connection_messages": "false"})
    broker.start()
    try:
        if "fanout" not in args.skip:
            assert broker.proc is not None
            out["fanout"] = fanout(broker.url, workdir, args.fanout, args.repeat, prof, broker.proc.pid or 0)
            log.info("fanout: %s", {k: v for k, v in out["fanout"].items() if k != "profile"})
        if "ingest" not in args.skip:
            assert broker.proc is not None
            out["ingest"] = ingestion(broker.url, workdir, args.results, prof, broker.proc.pid or 0)
            log.info("ingest: %s", {k: v for k, v in out["ingest"].items() if k != "profile"})
        if "hb" not in args.skip:
            out["hb"] = heartbeat_share(broker.url, workdir, args.hb_agents, args.hb_interval, args.hb_seconds, prof)
            log.info("heartbeats: %s", {k: v for k, v in out["hb"].items() if k != "profile"})
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_after"] = uptime()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hotpath.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "profile"} if isinstance(v, dict) else v)
                      for k, v in out.items()}, indent=1))  # fmt: skip
    return 0 if not any(out.get(k, {}).get("problems") for k in ("fanout", "ingest")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
