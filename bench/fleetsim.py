"""The fleet simulator: thousands of REAL agents packed into a few worker processes.

Each simulated agent is the agent's own core class (``mschedule_agent.agent.Agent``) with
its own identity file, SQLite ledger, state directory and persistent MQTT session, exactly
as the daemon builds it: it receives real ``task`` messages, writes its ledger, forks the
script, publishes ``ack``/``started``/``result``, re-sends until ``result_ack``, heartbeats.
The only thing shared is plumbing: every agent of a worker process talks MQTT through ONE
:class:`~mschedule_agent.transport.NetworkLoop` thread, and the worker's main thread calls
every agent's ``tick(now)``.

The controller (:class:`Fleet`, in the benchmark process) starts the workers as child
processes and talks to each over its stdin/stdout, one JSON object per line:

    controller -> worker   {"cmd": "stats"} | {"cmd": "stop"}
    worker -> controller   {"event": "ready", "ids": [...], "seconds": s}
                           {"event": "stats", "agents": n, "connected": n, "runs": n, "rss": bytes}
                           {"event": "stopped"}

Run a worker by hand: ``python -m bench.fleetsim --broker URL --prefix P --state-dir D --count N``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.procs import ROOT

log = logging.getLogger(__name__)

#: The worker ticks every agent once per TICK seconds, in SLICES slices spread over it.
TICK = 0.5
SLICES = 5
#: Agents connect in batches of CONNECT_BATCH, each batch waiting for its CONNACKs.
CONNECT_BATCH = 250
CONNECT_TIMEOUT = 120.0


def raise_fd_limit(want: int = 65536) -> int:
    """Raise this process's open-file limit (soft, and hard when allowed); returns the soft limit.
    Children (mosquitto, workers) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ============================================================================ worker side


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    broker: str
    prefix: str
    state_dir: Path
    count: int
    first: int = 0  #: index of the first agent (names the state directories)
    heartbeat: float = 5.0
    max_tasks: int = 1
    resend: float = 5.0
    labels: tuple[tuple[str, str], ...] = ()


class Worker:
    """One worker process: ``count`` real agents on one NetworkLoop, ticked from one thread."""

    def __init__(self, args: WorkerArgs) -> None:
        from mschedule_agent.transport import NetworkLoop

        self.args = args
        self.network = NetworkLoop(name="fleetsim-net")
        self.agents: list = []
        self.ids: list[str] = []
        self._stop = threading.Event()

    # ----------------------------------------------------------------- building
    def build(self) -> None:
        from bench import simagent

        for i in range(self.args.first, self.args.first + self.args.count):
            agent = simagent.build(
                state_dir=self.args.state_dir / f"agent-{i:05d}",
                broker=self.args.broker,
                prefix=self.args.prefix,
                heartbeat=self.args.heartbeat,
                max_tasks=self.args.max_tasks,
                resend=self.args.resend,
                labels={"sim": "1", "simindex": str(i), **dict(self.args.labels)},
                network=self.network,
            )
            self.agents.append(agent)
            self.ids.append(simagent.agent_id(agent))

    def connect(self) -> None:
        from bench import simagent

        deadline = time.monotonic() + CONNECT_TIMEOUT
        for start in range(0, len(self.agents), CONNECT_BATCH):
            batch = self.agents[start : start + CONNECT_BATCH]
            for agent in batch:
                simagent.start(agent)
            for agent in batch:
                if not simagent.wait_connected(agent, max(0.1, deadline - time.monotonic())):
                    raise TimeoutError(f"agent {simagent.agent_id(agent)} did not connect")

    # ----------------------------------------------------------------- running
    def tick_forever(self, commands) -> None:
        """Tick the agents in slices until a stop command; ``commands`` is polled between slices."""
        from bench import simagent

        n = len(self.agents)
        per_slice = max(1, -(-n // SLICES))
        pause = TICK / SLICES
        i = 0
        while not self._stop.is_set():
            began = time.monotonic()
            now = time.time()
            for agent in self.agents[i : i + per_slice]:
                try:
                    simagent.tick(agent, now)
                except Exception:
                    log.exception("agent tick failed; carrying on")
            i = i + per_slice if i + per_slice < n else 0
            commands(max(0.0, pause - (time.monotonic() - began)))

    def stats(self) -> dict:
        from bench import simagent
        from bench.procstat import rss_bytes

        return {
            "event": "stats",
            "agents": len(self.agents),
            "connected": sum(1 for a in self.agents if simagent.is_connected(a)),
            "runs": sum(simagent.runs(a) for a in self.agents),
            "rss": rss_bytes(os.getpid()),
            "threads": threading.active_count(),
        }

    def shutdown(self) -> None:
        from bench import simagent

        self._stop.set()

        def stop_one(agent) -> None:
            try:
                simagent.stop(agent)
            except Exception:
                log.exception("agent stop failed")

        # Each clean stop waits for its offline's PUBACK and its DISCONNECT: overlap them.
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(stop_one, self.agents))
        self.network.stop()


def _emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleetsim", description="One fleet-simulator worker process.")
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--count", required=True, type=int)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--max-tasks", type=int, default=1)
    p.add_argument("--resend", type=float, default=5.0)
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--log-level", default="WARNING")
    ns = p.parse_args(argv)
    logging.basicConfig(level=ns.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    args = WorkerArgs(
        broker=ns.broker, prefix=ns.prefix, state_dir=ns.state_dir, count=ns.count, first=ns.first,
        heartbeat=ns.heartbeat, max_tasks=ns.max_tasks, resend=ns.resend,
        labels=tuple(tuple(lbl.split("=", 1)) for lbl in ns.label),  # type: ignore[misc]
    )
    worker = Worker(args)
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    started = time.monotonic()
    worker.network.start()
    worker.build()
    worker.connect()
    _emit({"event": "ready", "ids": worker.ids, "seconds": round(time.monotonic() - started, 3)})

    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)

    def commands(timeout: float) -> None:
        for _key, _mask in sel.select(timeout):
            line = sys.stdin.readline()
            if not line:  # the controller went away
                worker._stop.set()
                return
            try:
                cmd = json.loads(line).get("cmd")
            except (ValueError, AttributeError):
                continue
            if cmd == "stats":
                _emit(worker.stats())
            elif cmd == "stop":
                worker._stop.set()

    try:
        worker.tick_forever(commands)
    finally:
        worker.shutdown()
        _emit({"event": "stopped"})
    return 0


# ============================================================================ controller side


class _WorkerProc:
    def __init__(self, argv: list[str], log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with open(log_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True, text=True, bufsize=1,
            )
        self.ids: list[str] = []
        self.ready_seconds: float | None = None

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
        self.proc.stdin.flush()

    def read(self, event: str, timeout: float) -> dict:
        """The next line with ``event``; raises on timeout or if the worker died."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"worker {self.proc.pid}: no {event!r} within {timeout}s{self.tail()}")
                if not sel.select(min(remaining, 1.0)):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"worker {self.proc.pid} exited with {self.proc.returncode}{self.tail()}")
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"worker {self.proc.pid} closed its output{self.tail()}")
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == event:
                    return doc
        finally:
            sel.close()

    def tail(self, n: int = 20) -> str:
        try:
            return "\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send("stop")
                self.read("stopped", timeout)
                self.proc.wait(10)
            except (OSError, TimeoutError, RuntimeError, subprocess.TimeoutExpired, ValueError):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


class Fleet:
    """``n`` simulated agents over ``workers`` processes. A context manager: ``start()``
    returns once every agent is connected (and registered); ``stop()`` shuts them down
    cleanly. ``ids`` lists the agent ids in creation order."""

    def __init__(
        self,
        broker_url: str,
        prefix: str,
        workdir: Path,
        n: int,
        *,
        workers: int | None = None,
        heartbeat: float = 5.0,
        resend: float = 5.0,
        max_tasks: int = 1,
        log_level: str = "WARNING",
    ) -> None:
        self.broker_url = broker_url
        self.prefix = prefix
        self.workdir = Path(workdir)
        self.n = n
        self.workers = workers or default_workers(n)
        self.heartbeat = heartbeat
        self.resend = resend
        self.max_tasks = max_tasks
        self.log_level = log_level
        self.procs: list[_WorkerProc] = []
        self.ids: list[str] = []
        self.start_seconds: float | None = None

    def start(self, timeout: float = 600.0) -> Fleet:
        raise_fd_limit()
        began = time.monotonic()
        per = [self.n // self.workers + (1 if w < self.n % self.workers else 0) for w in range(self.workers)]
        first = 0
        try:
            for w, count in enumerate(per):
                argv = [
                    sys.executable, "-m", "bench.fleetsim",
                    "--broker", self.broker_url, "--prefix", self.prefix,
                    "--state-dir", str(self.workdir / "agents"), "--count", str(count), "--first", str(first),
                    "--heartbeat", str(self.heartbeat), "--resend", str(self.resend),
                    "--max-tasks", str(self.max_tasks), "--log-level", self.log_level,
                ]
                self.procs.append(_WorkerProc(argv, self.workdir / f"worker-{w}.log"))
                first += count
            for p in self.procs:
                doc = p.read("ready", timeout)
                p.ids, p.ready_seconds = doc["ids"], doc["seconds"]
                self.ids.extend(p.ids)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    def stats(self, timeout: float = 30.0) -> dict:
        """Totals over the workers: agents, connected, runs (scripts started), rss, threads."""
        for p in self.procs:
            p.send("stats")
        docs = [p.read("stats", timeout) for p in self.procs]
        total = {k: sum(d[k] for d in docs) for k in ("agents", "connected", "runs", "rss", "threads")}
        total["workers"] = len(docs)
        return total

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs = []

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def default_workers(n: int) -> int:
    """2 workers up to 2,000 agents (this machine has 2 cores), 4 beyond (file limits, memory)."""
    return 1 if n <= 10 else (2 if n <= 2000 else 4)


if __name__ == "__main__":
    sys.exit(worker_main())
