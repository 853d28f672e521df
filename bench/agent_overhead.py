"""Agent overhead (issue 3): idle RSS and CPU of a real ``mschedule-agent`` process, and
the cost of running ``true`` through it beyond a bare subprocess spawn.

    python -m bench.agent_overhead            # ~20 s idle + 300 sequential tasks
    python -m bench.agent_overhead --idle 5 --tasks 50

Figures printed (and returned by :func:`measure`):
* idle: RSS (VmRSS, and VmHWM) and CPU % over the idle window, default settings
  (heartbeat 5 s), after the first connect;
* ``true`` overhead: for each task, the time from the agent's ``ack`` to its ``result``
  as seen by a client on the same broker, minus the median time of a bare
  ``subprocess.Popen(["/bin/sh", path]).wait()`` of the same script file in this process.
  The difference is the agent's own work: two durable ledger commits (RUNNING, DONE),
  the private temp file, the run thread, output capture, ``started`` and ``result``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from harness.agentproc import start_agent
from harness.broker import Mosquitto
from mschedule_agent.protocol import Result, ResultAck, Task, Topics, decode, encode
from mschedule_agent.transport import Incoming, MqttTransport


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # KiB
    return out


def _smaps(pid: int) -> dict[str, int]:
    """Pss and private (USS) memory in KiB: RSS counts shared libraries (libssl, libpython)
    in full, though every process on the machine shares them."""
    out = {"Pss": 0, "Private": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                out["Pss"] = int(value.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                out["Private"] += int(value.split()[0])
    except OSError:
        pass
    return out


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle(pid: int, seconds: float) -> dict[str, float]:
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    cpu1, t1 = _cpu_seconds(pid), time.monotonic()
    st = _proc_status(pid)
    sm = _smaps(pid)
    return {
        "pss_mb": round(sm["Pss"] / 1024, 1),
        "private_mb": round(sm["Private"] / 1024, 1),
        "seconds": round(t1 - t0, 1),
        "rss_mb": round(st["VmRSS"] / 1024, 1),
        "hwm_mb": round(st["VmHWM"] / 1024, 1),
        "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
    }


def bare_spawn_ms(count: int) -> float:
    """Median fork+exec+wait of ``/bin/sh <file>`` holding ``true``, pipes captured."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "script"
        path.write_bytes(b"true")
        times = []
        for _ in range(count):
            t = time.perf_counter()
            p = subprocess.Popen(["/bin/sh", str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
            p.communicate()
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


class _Client:
    def __init__(self, url: str, topics: Topics, agent_id: str) -> None:
        self.topics, self.agent_id = topics, agent_id
        self.times: dict[tuple[str, str], float] = {}
        self.cond = threading.Condition()
        self.t = MqttTransport(url, client_id=f"bench-agent-{uuid.uuid4().hex[:8]}",
                               subscriptions=[(topics.results(agent_id), 1)], on_message=self._on,
                               clean_start=True, session_expiry=0, manual_ack=False)  # fmt: skip

    def _on(self, m: Incoming) -> None:
        now = time.perf_counter()
        msg = decode(m.payload)
        with self.cond:
            self.times.setdefault((type(msg).__name__, msg.id), now)
            self.cond.notify_all()
        if isinstance(msg, Result):
            self.t.publish(self.topics.control(self.agent_id), encode(ResultAck(id=msg.id, agent_id=self.agent_id)))

    def run(self, task_id: str, timeout: float = 30) -> tuple[float, float]:
        sent = time.perf_counter()
        self.t.publish(self.topics.tasks(self.agent_id), encode(Task(id=task_id, script=b"true")))
        with self.cond:
            if not self.cond.wait_for(lambda: ("Result", task_id) in self.times, timeout):
                raise TimeoutError(f"no result for {task_id}")
            return self.times[("Ack", task_id)] - sent, self.times[("Result", task_id)] - self.times[("Ack", task_id)]


def measure(url: str, workdir: Path, *, idle_s: float = 20, tasks: int = 300) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    agent = start_agent(workdir / "agent", url, prefix, heartbeat=5, resend=5, will_delay=10)
    try:
        out = {"idle": idle(agent.pid, idle_s)}
        client = _Client(url, Topics(prefix), agent.agent_id)
        client.t.start(connect_timeout=10)
        client.t.wait_connected(10)
        client.t.wait_subscribed(10)  # SUBACK before the first task
        try:
            for i in range(10):
                client.run(f"warm-{i}")
            acks, runs = [], []
            for i in range(tasks):
                a, r = client.run(f"true-{i}")
                acks.append(a)
                runs.append(r)
        finally:
            client.t.stop()
        bare = bare_spawn_ms(max(50, tasks))
        med = statistics.median(runs) * 1000
        out["true"] = {
            "tasks": tasks,
            "publish_to_ack_ms_p50": round(statistics.median(acks) * 1000, 2),
            "ack_to_result_ms_p50": round(med, 2),
            "ack_to_result_ms_p90": round(statistics.quantiles(runs, n=10)[-1] * 1000, 2),
            "bare_spawn_ms_p50": round(bare, 2),
            "overhead_ms_p50": round(med - bare, 2),
            "agent_hwm_mb_after": round(_proc_status(agent.pid)["VmHWM"] / 1024, 1),
        }
        return out
    finally:
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.agent_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=float, default=20, help="idle measurement window in seconds (default 20)")
    p.add_argument("--tasks", type=int, default=300, help="sequential `true` tasks (default 300)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mschedule-agent-bench-") as d:
        broker = Mosquitto(Path(d) / "broker", overrides={"connection_messages": "false"})
        broker.start()
        try:
            res = measure(broker.url, Path(d), idle_s=args.idle, tasks=args.tasks)
        finally:
            broker.stop()
    i, t = res["idle"], res["true"]
    print(f"agent idle over {i['seconds']} s: RSS {i['rss_mb']} MB (peak {i['hwm_mb']} MB, PSS {i['pss_mb']} MB, "
          f"private {i['private_mb']} MB), CPU {i['cpu_percent']} %")
    print(f"`true` x{t['tasks']}: publish->ack p50 {t['publish_to_ack_ms_p50']} ms; ack->result p50 "
          f"{t['ack_to_result_ms_p50']} ms (p90 {t['ack_to_result_ms_p90']} ms); bare spawn p50 "
          f"{t['bare_spawn_ms_p50']} ms; agent overhead p50 {t['overhead_ms_p50']} ms; agent peak RSS "
          f"{t['agent_hwm_mb_after']} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
