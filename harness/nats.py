"""Start a real three-node NATS cluster (JetStream on, an MQTT 3.1.1 listener on each node)
from deploy/nats/node.conf on free loopback ports, with private store directories.

    with NatsCluster(tmp_path / "nats") as cluster:    # every node's MQTT listener answers
        cluster.urls               # ["mqtt://127.0.0.1:PORT", ...], one per node
        cluster.nodes[1].kill9()   # a node dies; its JetStream replicas live on the others
        cluster.nodes[1].start()   # back, same ports and store

Never the system nats-server on :4222: every port is picked here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from .broker import ROOT, BrokerError, free_port, listening_pid_owns
from .procs import end_process

CONF = ROOT / "deploy" / "nats" / "node.conf"
HOST = "127.0.0.1"


def nats_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server") if os.path.exists(p)), None
    )


def render(template: str, fields: dict[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced; a field left unfilled is an error."""
    out = template
    for name, value in fields.items():
        out = out.replace("{{" + name + "}}", value)
    if "{{" in out:
        raise BrokerError(f"deploy/nats/node.conf field(s) left unfilled: {out[out.index('{{'):][:40]}")
    return out


class NatsNode:
    """One nats-server process; its ports, store and log survive restarts."""

    def __init__(self, workdir: Path, name: str, ports: dict[str, int]) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.ports = ports
        self.routes: list[int] = []  #: every node's cluster port, set by the cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{name}.log"
        self.conf_path = self.workdir / f"{name}.conf"

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.ports['mqtt']}"

    def render(self) -> str:
        store = self.workdir / f"{self.name}-store"
        store.mkdir(parents=True, exist_ok=True)
        fields = {
            "name": self.name,
            "host": HOST,
            "store_dir": str(store),
            "routes": ", ".join(f"nats-route://{HOST}:{p}" for p in self.routes),
            **{f"{k}_port": str(v) for k, v in self.ports.items()},
        }
        return render(CONF.read_text(), fields)

    def start(self) -> NatsNode:
        """Start the process (the cluster waits for readiness). Raises BrokerError."""
        binary = nats_binary()
        if binary is None:
            raise BrokerError("nats-server is not installed (apt-get install nats-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def listening(self) -> bool:
        """This very process listens on its MQTT and monitoring ports (not someone else)."""
        if not self.running():
            return False
        assert self.proc is not None
        return all(listening_pid_owns(self.proc.pid, self.ports[k]) for k in ("mqtt", "http"))

    def healthy(self) -> bool:
        """The monitoring endpoint says JetStream is up on this node (a meta leader known)."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.ports['http']}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def kill9(self) -> None:
        """SIGKILL: what its store had not synced is lost; replicas on the others are not."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is not None:
            end_process(self.proc, sig, timeout)
        self.proc = None


class NatsCluster:
    """``size`` nodes routed to each other; a context manager that stops them all."""

    def __init__(self, workdir: Path | str, *, size: int = 3) -> None:
        self.workdir = Path(workdir)
        self.size = size
        self.nodes: list[NatsNode] = []

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node and wait until each one's MQTT listener serves a session.
        Ports taken by someone else meanwhile are picked afresh (three tries)."""
        for attempt in range(3):
            self._make_nodes()
            for node in self.nodes:
                node.start()
            try:
                self.wait_ready(timeout)
                return self
            except BrokerError as e:
                self.stop()
                if "address already in use" not in str(e).lower() or attempt == 2:
                    raise
        return self

    def _make_nodes(self) -> None:
        run = uuid.uuid4().hex[:6]  # a fresh store per start of the cluster object
        self.nodes = [
            NatsNode(self.workdir / f"{run}-n{i}", f"n{i}", {k: free_port() for k in ("client", "cluster", "mqtt", "http")})
            for i in range(self.size)
        ]
        routes = [n.ports["cluster"] for n in self.nodes]
        for n in self.nodes:
            n.routes = routes

    def wait_ready(self, timeout: float = 60.0, nodes: list[NatsNode] | None = None) -> None:
        """Each node (of ``nodes``) listens, reports healthy, and accepts an MQTT 3.1.1
        session (the first one creates the cluster's MQTT streams: ~1-2 s)."""
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            while not (node.listening() and node.healthy()):
                if not node.running():
                    raise BrokerError(f"nats-server {node.name} exited:\n{node.log_tail()}")
                if time.monotonic() > deadline:
                    raise BrokerError(f"nats-server {node.name} not ready within {timeout}s:\n{node.log_tail()}")
                time.sleep(0.05)
            self._probe(node, max(1.0, deadline - time.monotonic()))

    @staticmethod
    def _probe(node: NatsNode, timeout: float) -> None:
        from .mqtt import Collector

        deadline = time.monotonic() + timeout
        while True:
            try:
                with Collector(node.url, [f"mschedule-probe/{node.name}"], mqtt_version="3.1.1"):
                    return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"; the deadline ends it
                if time.monotonic() > deadline:
                    raise BrokerError(f"nats-server {node.name}: no MQTT session within {timeout:.0f}s ({e})") from e
                time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
