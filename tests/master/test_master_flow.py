"""Flow control under a slow broker connection (issue 24): a real master behind a TCP
proxy that lets through 600 bytes a second of what the master sends, real agents
connected straight to the broker, a window of one task copy in flight. The master's own
queue holds the last copies for longer than the delivery timeout; their clocks start
only when the broker takes them, so every target SUCCEEDs, each script once, none
judged UNREACHABLE and revised, and the task and /metrics show the throttling meanwhile."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

from harness.fleet import Fleet
from harness.procs import wait_until

#: What the proxy lets through from the master, bytes per second (a task copy is ~400).
RATE = 600
AGENTS = 8
TIMING = {"delivery_timeout": 3, "ack_grace": 0.5, "redeliver_interval": 1, "dispatch_window": 1}


class SlowProxy:
    """A loopback TCP proxy in front of ``port``: what clients send goes on at ``rate``
    bytes a second at most, what the server answers is not slowed. Every thread it starts
    ends at stop()."""

    CHUNK = 64

    def __init__(self, port: int, rate: int) -> None:
        self._port = port
        self._rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"mqtt://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> SlowProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        assert not any(t.is_alive() for t in self._threads), "a proxy thread did not end"

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._port))
            self._sockets += [client, upstream]
            self._spawn(self._pipe, client, upstream, self._rate)
            self._spawn(self._pipe, upstream, client, 0)

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int) -> None:
        src.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    break
                for i in range(0, len(data), self.CHUNK if rate else len(data)):
                    piece = data[i : i + self.CHUNK] if rate else data
                    if rate and self._stop.wait(len(piece) / rate):
                        return
                    dst.sendall(piece)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _metrics(fleet: Fleet) -> dict[str, float]:
    assert fleet.master is not None and fleet.master.http_url
    with urllib.request.urlopen(fleet.master.http_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {k: float(v) for k, _, v in (line.partition(" ") for line in lines) if k.startswith("mschedule_dispatch_")}


def test_a_slow_broker_connection_slows_the_rollout_instead_of_expiring_it(broker, prefix, tmp_path):
    ran = Path(tmp_path) / "ran"
    ran.mkdir()
    with SlowProxy(broker.port, RATE) as proxy, Fleet(
        tmp_path, proxy.url, prefix, agents=AGENTS, agent_brokers=[broker.url], master_flags=TIMING
    ) as fleet:
        fleet.broker_url = broker.url  # the test's own client goes straight to the broker
        task_id = fleet.submit(fleet.agent_ids, f'echo once >> {ran}/"$MSCHEDULE_TEST_AGENT"', parallel=AGENTS)

        def throttled() -> dict | None:
            task = fleet.http("GET", f"/api/v1/tasks/{task_id}?targets=0")
            assert task["state"] in ("WAITING", "RUNNING"), f"the task ended before its delivery showed throttled: {task}"
            delivery = task.get("delivery") or {}
            return delivery if delivery.get("throttled") else None

        delivery = wait_until(throttled, 30, interval=0.05, what="the task's delivery throttled")
        assert delivery["queued"] >= 1 and delivery["in_flight"] <= 1 and delivery["window"] == 1
        assert "master's queue" in delivery["reason"]
        gauges = _metrics(fleet)
        assert gauges["mschedule_dispatch_window"] == 1 and gauges["mschedule_dispatch_in_flight"] <= 1

        summary = fleet.wait_task(task_id, 120)
        assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": AGENTS})
        task = fleet.task(task_id)
        assert "delivery" not in task, "an ended task has nothing in delivery"
        targets = task["targets"].values()
        assert all(t["revised_at"] is None for t in targets), "no target was judged before its agent could answer"
        # the master's queue held the last copies longer than the delivery timeout allows
        held = max(t["dispatched_at"] for t in targets) - task["created_at"]
        assert held > TIMING["delivery_timeout"] + TIMING["ack_grace"], f"the queue held copies only {held:.1f} s"
        assert sorted(p.read_text() for p in ran.iterdir()) == ["once\n"] * AGENTS, "each script ran once"
