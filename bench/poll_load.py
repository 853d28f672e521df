"""Result latency while clients poll a big task (issue 17): an optional bench, run alone.

    python -m bench.poll_load                       # this checkout's master
    python -m bench.poll_load --code /tmp/before    # another checkout's (e.g. `git archive main`)

A master whose database holds a finished task of ``--targets`` targets with ``--output-kib``
KiB of stdout each; ``--clients`` threads poll it as the CLI does
(``GET /api/v1/tasks/{id}?max_output=0``, back to back; ``--query targets=0`` for the
counts-only poll the CLI uses now); meanwhile one real agent runs
``--tasks`` one-target ``true`` tasks one after the other, each timed from its MQTT
submission to its retained summary. Prints JSON: that result latency (p50/p95/max ms) with
and without the pollers, and the polls' own latency and count.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import orjson

from harness.agentproc import AgentProc, agent_argv
from harness.broker import Mosquitto, free_port
from harness.fleet import MasterProc, master_argv
from harness.mqtt import Collector

#: Run with the measured code on the path: writes a finished big task into a new database.
POPULATE = r"""
import sys, time
from mschedule_agent import protocol
from mschedule_master import models
from mschedule_master.states import TargetState, TaskState
from mschedule_master.store import Store
db, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store(db)
agents = [f"poll-target-{i:05d}" for i in range(n)]
task = models.Task(id="big", name="big", script=b"true", targets_spec=["all"], timeout=0, parallel="100%",
    fail_rate=None, fail_count=-1, on_abort="kill", env={}, cwd=None, output_cap=None, delivery_timeout=60.0,
    state=TaskState.SUCCEED, reason="", created_at=time.time(), finished_at=time.time(), counts={}, target_count=n)
store.insert_task(task, agents)
out = b"x" * (kib * 1024)
with store.db() as c:
    for a in agents:
        store.record_result("big", a, protocol.Result(id="big", agent_id=a, state="SUCCEED", code=0, output=out), 2.0)
    c.execute("update targets set state=? where task_id='big'", (TargetState.SUCCEED.value,))
store.close()
"""


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)
    return {
        "n": len(values),
        "p50": round(statistics.median(values) * 1000, 1),
        "p95": round(values[min(len(values) - 1, int(len(values) * 0.95))] * 1000, 1),
        "max": round(values[-1] * 1000, 1),
    }


def _result_latencies(client: Collector, prefix: str, n: int) -> list[float]:
    out = []
    script = base64.b64encode(b"true").decode()
    for _ in range(n):
        request_id = uuid.uuid4().hex
        body = {"targets": ["all"], "script": script, "request_id": request_id}
        started = time.monotonic()
        client.publish(f"{prefix}/submit", orjson.dumps({"type": "submit", "payload": body}))
        (reply,) = client.wait_for(lambda m, r=request_id: m.topic == f"{prefix}/submit/reply/{r}", 60)
        task_id = orjson.loads(reply.payload)["payload"]["task_id"]
        client.wait_for(lambda m, t=task_id: m.topic == f"{prefix}/tasks/{t}/summary" and bool(m.payload), 60)
        out.append(time.monotonic() - started)
    return out


def _poller(url: str, stop: threading.Event, latencies: list[float], errors: list[str]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                r.read()
        except OSError as e:
            errors.append(str(e))
            stop.wait(0.1)
            continue
        latencies.append(time.monotonic() - started)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    # `python -m` puts the working directory first on sys.path: every process starts in `code`
    code = Path(args.code).resolve() if args.code else Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    probe = "import mschedule_master; print(mschedule_master.__file__)"
    code_path = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=code, capture_output=True, text=True, check=True
    )  # fmt: skip
    (workdir / "master").mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", POPULATE, str(workdir / "master" / "master.db"), str(args.targets), str(args.output_kib)],
        env=env, cwd=code, check=True, timeout=600,
    )  # fmt: skip
    prefix = f"poll{uuid.uuid4().hex[:6]}/mschedule"
    broker = Mosquitto(workdir / "broker").start()
    master = agent = None
    try:
        master = _start_master(workdir / "master", broker.url, prefix, env, code)
        agent = AgentProc(
            [sys.executable, "-m", "mschedule_agent", *agent_argv(workdir / "agent", broker.url, prefix)],
            workdir=workdir / "agent", log_path=workdir / "agent" / "agent.log", env=env, cwd=code,
        ).start()  # fmt: skip
        agent.wait_online(60)
        topics = [f"{prefix}/tasks/+/summary", f"{prefix}/submit/reply/+"]
        with Collector(broker.url, topics) as client:
            _result_latencies(client, prefix, 3)  # warm up
            quiet = _result_latencies(client, prefix, args.tasks)
            stop, polls, errors = threading.Event(), [], []
            url = f"{master.http_url}/api/v1/tasks/big?{args.query}"
            threads = [
                threading.Thread(target=_poller, args=(url, stop, polls, errors), daemon=True)
                for _ in range(args.clients)
            ]
            polling_since = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(1.0)
            loaded_started = time.monotonic()
            loaded = _result_latencies(client, prefix, args.tasks)
            seconds = time.monotonic() - loaded_started
            stop.set()
            polled_for = time.monotonic() - polling_since
            for t in threads:
                t.join(70)
        return {
            "code": args.code or "this checkout",
            "code_path": code_path.stdout.strip(),
            "targets": args.targets,
            "output_kib": args.output_kib,
            "clients": args.clients,
            "poll": f"GET /api/v1/tasks/big?{args.query}",
            "result_latency_ms_quiet": _ms(quiet),
            "result_latency_ms_polled": _ms(loaded),
            "poll_latency_ms": _ms(polls),
            "polls_per_second": round(len(polls) / polled_for, 1),
            "polled_seconds": round(seconds, 1),
            "poll_errors": len(errors),
            "poll_error_sample": errors[:1],
        }
    finally:
        if agent is not None:
            agent.stop()
        if master is not None:
            master.stop()
        broker.stop()


def _start_master(workdir: Path, broker_url: str, prefix: str, env: dict, code: Path) -> MasterProc:
    address = f"127.0.0.1:{free_port()}"
    flags = master_argv(workdir, broker_url, prefix, http=address, client_id=f"poll-{uuid.uuid4().hex[:8]}")
    master = MasterProc(
        [sys.executable, "-m", "mschedule_master", *flags], workdir=workdir, db=workdir / "master.db",
        http_url=f"http://{address}", log_path=workdir / "master.log", env=env, cwd=code,
    )  # fmt: skip
    master.start()
    master.wait_ready(60)
    return master


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.poll_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--code", help="run this checkout's mschedule (a directory with mschedule_master/) instead")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--targets", type=int, default=2000)
    p.add_argument("--output-kib", type=int, default=32)
    p.add_argument("--tasks", type=int, default=30, help="one-target tasks timed, quiet and polled")
    p.add_argument(
        "--query", default="max_output=0", help="the poll's query (targets=0: counts only, as the CLI now polls)"
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mschedule-poll-") as d:
        print(json.dumps(run(args, Path(d)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
