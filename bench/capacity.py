"""The capacity plan's figures (issue 19, docs/scale.md): the master's own cost per target
with instant protocol-level agents (bench/ingest.py's FakeAgents: one MQTT client speaking
for n agents), at 10k, 50k and 100k targets, and a Mosquitto edge holding 10k connections.

Per size, one fresh master on its own mosquitto:

* registry: n retained ``register`` statuses published -> the master counts n online
  (its /metrics gauge: the agents list itself would cost more than what is measured);
* heartbeats: n agents' retained heartbeats at the rate of one per agent per 30 s, for
  ``hb_seconds``: the master's CPU share;
* dispatch: submit ``all`` with parallel = n -> every agent received its ``task``: seconds
  (wall) and the master's CPU seconds in that span ("its own time");
* ingestion: every agent's SUCCEED ``result`` published at once -> the task's summary:
  results/s;
* the master's peak RSS over the whole run; a py-spy profile of dispatch and ingestion
  when py-spy is installed (``pip install -e '.[bench]'``).

    python -m bench.capacity                      # 10000,50000,100000 (~10 min, quiet machine)
    python -m bench.capacity --sizes 2000 --edge 1000
    python -m bench.capacity --sizes "" --edge 0 --nats 100000   # a NATS cluster's retained statuses
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.broker import Mosquitto
from mschedule_agent import protocol
from mschedule_agent.protocol import Heartbeat, Topics
from mschedule_agent.transport import MqttTransport, NetworkLoop

from .client import BenchClient, check_summary
from .fleetsim import raise_fd_limit
from .ingest import FakeAgents, wait_idle
from .master import MasterProc
from .procstat import sample
from .profile import py_spy, recording

log = logging.getLogger("bench.capacity")

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10_000, 50_000, 100_000)
HEARTBEAT_INTERVAL = 30.0  #: the plan's heartbeat interval (docs/scale.md)


class PeakRSS:
    """Samples a process's RSS every ``interval`` seconds on a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, sample(self.pid).rss)
            except OSError:
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def online_gauge(master: MasterProc) -> int:
    """Agents online, from the master's Prometheus gauge (summed over datacenters)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{master.http_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(int(float(v)) for v in re.findall(r"^mschedule_agents_online(?:\{[^}]*\})? (\S+)$", text, re.M))


def wait_gauge(master: MasterProc, n: int, timeout: float) -> float:
    """Seconds until the gauge says ``n`` online. A busy master may answer HTTP late (its
    API shares the thread that applies messages): a timed-out read is "not yet"."""
    start, seen = time.monotonic(), -1
    while time.monotonic() - start < timeout:
        if not master.proc.running():
            raise RuntimeError(f"master died:\n{master.proc.log()[-3000:]}")
        try:
            seen = online_gauge(master)
        except OSError as e:
            log.info("master's /metrics did not answer (%s); asking again", e)
            continue
        if seen >= n:
            return time.monotonic() - start
        time.sleep(0.25)
    raise TimeoutError(f"master sees {seen} of {n} online after {timeout}s")


def heartbeats(fake: FakeAgents, seconds: float, interval: float = HEARTBEAT_INTERVAL) -> int:
    """Publish the agents' retained heartbeats at n/interval per second for ``seconds``."""
    rate = len(fake.ids) / interval
    total = int(rate * seconds)
    sent, start = 0, time.monotonic()
    while sent < total:
        # the last slice is sent whatever the clock says, so a late wake-up on a loaded machine
        # cannot leave the count one short of rate x seconds
        elapsed = time.monotonic() - start
        due = total if elapsed >= seconds else min(int(rate * elapsed) + 1, total)
        now = time.time()
        while sent < due:
            agent_id = fake.ids[sent % len(fake.ids)]
            hb = Heartbeat(id=agent_id, hostname=agent_id, ip=["192.0.2.1"], ts=now, interval=interval)
            fake.transport.publish(fake.topics.heartbeat(agent_id), protocol.encode(hb), qos=0, retain=True)
            sent += 1
        if sent < total:
            time.sleep(0.02)
    return sent


def cpu_seconds(pid: int) -> float:
    return sample(pid).cpu


@contextmanager
def _profiled(pid: int, out: Path | None) -> Iterator[dict[str, Any]]:
    if out is None or py_spy() is None:
        yield {}
        return
    with recording(pid, out) as summary:
        yield summary


def master_row(
    broker_url: str, n: int, workdir: Path, *, hb_seconds: float, profile_dir: Path | None, master_args: list[str] | None = None
) -> dict[str, Any]:
    prefix = f"cap{uuid.uuid4().hex[:6]}/mschedule"
    row: dict[str, Any] = {"targets": n}
    with MasterProc(broker_url, prefix, workdir / f"master-{n}", extra=master_args) as master, PeakRSS(master.pid) as rss:
        with FakeAgents(broker_url, prefix, n, ack=True) as fake:
            t0 = time.monotonic()
            fake.register()
            wait_gauge(master, n, 600)
            row["registry_s"] = round(time.monotonic() - t0, 2)
            row["rss_registry_mb"] = round(sample(master.pid).rss / 2**20, 1)
            wait_idle(master.pid, timeout=120)
            c0, w0 = cpu_seconds(master.pid), time.monotonic()
            row["heartbeats_sent"] = heartbeats(fake, hb_seconds)
            row["heartbeat_cpu_share"] = round((cpu_seconds(master.pid) - c0) / (time.monotonic() - w0), 3)
            wait_idle(master.pid, timeout=120)
            with BenchClient(broker_url, prefix) as client:
                with _profiled(master.pid, profile_dir and profile_dir / f"dispatch-{n}.txt") as prof_d:
                    c0 = cpu_seconds(master.pid)
                    _request_id, at = client.submit(["all"], parallel=n)
                    fake.wait_dispatched(900)
                    row["dispatch_s"] = round(time.perf_counter() - at, 2)
                    row["dispatch_cpu_s"] = round(cpu_seconds(master.pid) - c0, 2)
                    row["task_copies"] = fake.deliveries  #: n, plus the re-deliveries that arrived meanwhile
                # The task's id from what the agents received, not from the submit_reply: past
                # ~65,000 QoS-1 messages in flight paho drops the reply (docs/scale.md).
                task_id = next(iter(fake.tasks.values()))
                row["dispatch_profile"] = {k: prof_d.get(k, [])[:8] for k in ("self_pct", "total_pct")} if prof_d else {}
                settle = wait_idle(master.pid, timeout=600)  # the agents' acks applied
                row["acks_settle_s"] = round(settle, 1)
                messages = fake.results()
                with _profiled(master.pid, profile_dir and profile_dir / f"ingest-{n}.txt") as prof_i:
                    c0, first = cpu_seconds(master.pid), time.perf_counter()
                    fake.publish_all(messages)
                    done = client.finished(task_id, 900)
                    seconds = done.at - first
                    row["ingest_cpu_s"] = round(cpu_seconds(master.pid) - c0, 2)
                row["ingest_profile"] = {k: prof_i.get(k, [])[:8] for k in ("self_pct", "total_pct")} if prof_i else {}
                row["ingest_per_s"] = round(n / seconds, 1)
                row["problems"] = check_summary(done, fake.ids)
        row["rss_peak_mb"] = round(rss.peak / 2**20, 1)
    db = workdir / f"master-{n}" / "master.db"
    row["db_mb"] = round(sum(p.stat().st_size for p in db.parent.glob("master.db*")) / 2**20, 1)
    return row


def edge_row(n: int, workdir: Path, *, seconds: float) -> dict[str, Any]:
    """A Mosquitto (dev.conf) holding ``n`` agent-like connections: persistent sessions
    subscribed to their tasks/control topics, a retained status each, heartbeats at one per
    agent per 30 s. Its RSS and CPU share over ``seconds``."""
    prefix = f"edge{uuid.uuid4().hex[:6]}/mschedule"
    topics = Topics(prefix)
    broker = Mosquitto(workdir / f"edge-{n}", overrides={"connection_messages": "false"})
    broker.start()
    loop = NetworkLoop("edge-clients").start()
    clients: list[MqttTransport] = []
    try:
        started = time.monotonic()
        for i in range(n):
            agent_id = f"edge{i:06d}"
            t = MqttTransport(broker.url, client_id=f"mschedule-agent-{agent_id}", network=loop, keepalive=60,
                              subscriptions=[(s, 1) for s in topics.agent_subscriptions(agent_id)])  # fmt: skip
            t.start(connect_timeout=60)
            clients.append(t)
            if i % 500 == 499:
                for c in clients[-500:]:
                    c.wait_subscribed(60)
        for c in clients:
            c.wait_subscribed(60)
        connect_s = time.monotonic() - started
        for i, c in enumerate(clients):
            c.publish(topics.status(f"edge{i:06d}"), b'{"type":"register"}', retain=True)
        assert broker.proc is not None
        pid = broker.proc.pid
        rss_connected = sample(pid).rss
        c0, w0 = cpu_seconds(pid), time.monotonic()
        rate, sent = n / HEARTBEAT_INTERVAL, 0
        while (elapsed := time.monotonic() - w0) < seconds:
            while sent < int(rate * elapsed):
                i = sent % n
                clients[i].publish(topics.heartbeat(f"edge{i:06d}"), b'{"type":"heartbeat"}', qos=0, retain=True)
                sent += 1
            time.sleep(0.05)
        share = (cpu_seconds(pid) - c0) / (time.monotonic() - w0)
        return {
            "connections": n, "connect_s": round(connect_s, 1), "rss_mb": round(sample(pid).rss / 2**20, 1),
            "rss_connected_mb": round(rss_connected / 2**20, 1), "cpu_share": round(share, 3), "heartbeats_sent": sent,
        }  # fmt: skip
    finally:
        for c in clients:
            c.stop(timeout=0.2)
        loop.stop()
        broker.stop()


def nats_row(n: int, workdir: Path, *, seconds: float) -> dict[str, Any]:
    """A three-node NATS cluster (harness/nats.py) holding ``n`` agents' retained statuses,
    published over MQTT 3.1.1 by one client on node 0, then their retained heartbeats at
    one per agent per 30 s for ``seconds``: the publish time, each node's RSS and CPU share."""
    from harness.nats import NatsCluster

    topics = Topics(f"nats{uuid.uuid4().hex[:6]}/mschedule")
    with NatsCluster(workdir / f"nats-{n}") as cluster:
        pids = [node.proc.pid for node in cluster.nodes if node.proc is not None]
        rss_empty = [sample(pid).rss for pid in pids]
        client = MqttTransport(cluster.urls[0], client_id=f"bench-nats-{uuid.uuid4().hex[:6]}", clean_start=True,
                               manual_ack=False, mqtt_version="3.1.1")  # fmt: skip
        client.start(connect_timeout=30)
        try:
            started = time.monotonic()
            acked = 0
            for lo in range(0, n, FakeAgents.WINDOW):  # paho has 65535 packet ids
                topics_ = [topics.status(f"a{i:06d}") for i in range(lo, min(n, lo + FakeAgents.WINDOW))]
                pubs = [client.publish(t, b'{"type":"register"}', retain=True) for t in topics_]
                acked += sum(p.wait(120) for p in pubs)
            publish_s = time.monotonic() - started
            c0, w0 = [cpu_seconds(pid) for pid in pids], time.monotonic()
            rate, sent = n / HEARTBEAT_INTERVAL, 0
            while (elapsed := time.monotonic() - w0) < seconds:
                while sent < int(rate * elapsed):
                    i = sent % n
                    client.publish(topics.heartbeat(f"a{i:06d}"), b'{"type":"heartbeat"}', qos=0, retain=True)
                    sent += 1
                time.sleep(0.05)
            wall = time.monotonic() - w0
            shares = [round((cpu_seconds(pid) - c) / wall, 3) for pid, c in zip(pids, c0, strict=True)]
            return {
                "retained": n, "acked": acked, "publish_s": round(publish_s, 1), "heartbeats_sent": sent,
                "rss_empty_mb": [round(r / 2**20, 1) for r in rss_empty],
                "rss_mb": [round(sample(pid).rss / 2**20, 1) for pid in pids], "cpu_share": shares,
            }  # fmt: skip
        finally:
            client.stop(timeout=1.0)


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Capacity rows ({results['started_at']}; load average before {results['load_before']}, "
        f"after {results['load_after']}; {os.cpu_count()} cores, shared)",
        "",
        "| targets | registry s | RSS after registry MB | heartbeats (n/30 s) CPU | dispatch s | dispatch CPU s "
        "| ingestion results/s | ingest CPU s | peak RSS MB | db MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['targets']:,} | {r['registry_s']} | {r['rss_registry_mb']} | {r['heartbeat_cpu_share']:.0%} "
            f"| {r['dispatch_s']} | {r['dispatch_cpu_s']} | {r['ingest_per_s']:,.0f} | {r['ingest_cpu_s']} "
            f"| {r['rss_peak_mb']} | {r.get('db_mb', '')} |"
        )
    for e in results.get("edges", []):
        lines.append(
            f"\nMosquitto edge, {e['connections']:,} connections: RSS {e['rss_mb']} MB "
            f"({e['rss_connected_mb']} MB before the retained statuses), CPU {e['cpu_share']:.1%} of a core "
            f"with heartbeats every 30 s; connected in {e['connect_s']} s"
        )
    for e in results.get("nats", []):
        lines.append(
            f"\nNATS cluster (3 nodes), {e['retained']:,} retained statuses: published and acked in {e['publish_s']} s "
            f"over MQTT 3.1.1; node RSS {e['rss_mb']} MB (empty {e['rss_empty_mb']} MB); CPU shares {e['cpu_share']} "
            f"with heartbeats every 30 s"
        )
    for r in results["rows"]:
        for phase in ("dispatch", "ingest"):
            top = r.get(f"{phase}_profile", {}).get("self_pct")
            if top:
                shares = "; ".join(f"{name} {pct}%" for name, pct in top[:6])
                lines.append(f"\n{phase} profile at {r['targets']:,}, self time: {shares}")
        if r["problems"]:
            lines.append(f"\nPROBLEMS at {r['targets']:,}: {r['problems']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="targets per row, comma-separated")
    p.add_argument("--edge", type=int, default=10_000, help="connections on the Mosquitto edge row (0: none)")
    p.add_argument("--nats", type=int, default=0, help="retained statuses on a three-node NATS cluster row (0: none)")
    p.add_argument("--hb-seconds", type=float, default=10.0, help="seconds of heartbeats measured per row")
    p.add_argument("--profile", action="store_true", help="py-spy the master's dispatch and ingestion")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--delivery-timeout", type=float, help="the master's --delivery-timeout (default: its own, 60 s)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (databases, logs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mschedule_agent.transport").setLevel(logging.WARNING)  # one line per edge connection
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="mschedule-capacity-"))
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": uptime(), "rows": [], "edges": [],
    }  # fmt: skip
    broker = Mosquitto(workdir / "broker", overrides={"connection_messages": "false"})
    broker.start()
    try:
        for n in (int(s) for s in args.sizes.split(",") if s):
            log.info("capacity row: %d targets", n)
            extra = ["--delivery-timeout", str(args.delivery_timeout)] if args.delivery_timeout else None
            row = master_row(broker.url, n, workdir, hb_seconds=args.hb_seconds, master_args=extra,
                             profile_dir=args.out / "profiles" if args.profile else None)  # fmt: skip
            results["rows"].append(row)
            log.info("row: %s", {k: v for k, v in row.items() if not k.endswith("profile")})
        broker.stop()
        if args.edge:
            results["edges"].append(edge_row(args.edge, workdir, seconds=30.0))
        if args.nats:
            results["nats"] = [nats_row(args.nats, workdir, seconds=30.0)]
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_after"] = uptime()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "capacity.md").write_text(text + "\n")
    print(text)
    return 0 if all(not r["problems"] for r in results["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
