"""Start a real ``mschedule-master`` process (and optionally N agents) for tests, the
demo and benchmarks.

    from harness.fleet import start_master, Fleet

    master = start_master(tmp_path / "master", broker.url, prefix)   # waits for "master ready"
    try:
        master.http_url            # e.g. http://127.0.0.1:40123  (None with http="off")
        master.db                  # the SQLite file
    finally:
        master.stop()              # SIGTERM; master.kill9() simulates a crash

    with Fleet(tmp_path, broker.url, prefix, agents=3) as fleet:   # master + 3 agents, all online
        # scripts see $MSCHEDULE_TEST_AGENT = the agent's index in fleet.agents
        fleet.master, fleet.agents, fleet.agent_ids
        task_id = fleet.submit(["all"], "echo hi")                  # over MQTT; returns the task id
        summary = fleet.wait_task(task_id)                          # the retained summary (a dict)

Starting a master again on the same ``workdir`` restarts the same master (same db, same
client id). Extra keyword arguments become flags: ``lost_grace=2`` -> ``--lost-grace 2``.
"""

from __future__ import annotations

import base64
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path

import orjson

from .broker import free_port
from .procs import Proc, flag_argv

#: Test-friendly master timings (seconds), overridable through ``**flags``.
TEST_FLAGS = {"delivery_timeout": 10, "redeliver_interval": 1, "ack_grace": 1, "lost_grace": 5, "kill_resend": 1}


#: Each Fleet agent (and so each script it runs) sees its index 0..N-1 in this variable.
AGENT_INDEX_ENV = "MSCHEDULE_TEST_AGENT"


#: What a master logs once it runs: as the leader (or the only master), or as an HA standby.
READY = "master ready"
STANDBY = "standby: serving the API"


class MasterProc(Proc):
    def __init__(self, argv, *, workdir: Path, db: Path | str, http_url: str | None, **kw) -> None:
        super().__init__(argv, **kw)
        self.workdir = Path(workdir)
        self.db = db if isinstance(db, str) and "://" in db else Path(db)  #: an SQLite path, or a PostgreSQL URL
        self.http_url = http_url
        self.ready_texts: tuple[str, ...] = (READY,)

    def wait_ready(self, timeout: float = 30.0, *, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(t in self.log()[after:] for t in self.ready_texts):
                return
            if not self.running():
                break
            time.sleep(0.05)
        raise TimeoutError(f"master not ready within {timeout}s:\n{self.log()[after:][-3000:]}")

    def restart(self, timeout: float = 30.0) -> MasterProc:
        """Start it again (after stop() or kill9()) and wait until it is ready."""
        offset = len(self.log())
        self.start()
        self.wait_ready(timeout, after=offset)
        return self


def master_argv(
    workdir: Path, broker_url: str, prefix: str, *, http: str, client_id: str, db: str | None = None, **flags
) -> list[str]:
    argv = ["--broker", broker_url, "--db", db or str(workdir / "master.db"), "--topic-prefix", prefix]
    argv += ["--http", http, "--client-id", client_id]
    return argv + flag_argv({**TEST_FLAGS, **flags})


def start_master(
    workdir: Path | str,
    broker_url: str,
    prefix: str,
    *,
    http: bool | str = True,
    client_id: str | None = None,
    wait: bool = True,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    db: str | None = None,
    **flags,
) -> MasterProc:
    """Start ``python -m mschedule_master`` with its database in ``workdir``. ``http``:
    True = a free loopback port, False = off, or "HOST:PORT". Log: ``workdir/master.log``.
    ``db``: a ``postgresql://`` URL instead (HA masters: ready once leading or standing by)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    client_id = client_id or f"mschedule-master-{uuid.uuid4().hex[:8]}"
    for attempt in range(3):
        address = f"127.0.0.1:{free_port()}" if http is True else "off" if http is False else http
        argv = [sys.executable, "-m", "mschedule_master", *master_argv(workdir, broker_url, prefix, http=address, client_id=client_id, db=db, **flags)]
        http_url = None if address == "off" else f"http://{address}"
        proc = MasterProc(argv, workdir=workdir, db=db or workdir / "master.db", http_url=http_url, log_path=workdir / "master.log", env=env)
        if db is not None:
            proc.ready_texts = (READY, STANDBY)
        offset = len(proc.log())
        proc.start()
        if not wait:
            return proc
        try:
            proc.wait_ready(timeout, after=offset)
            return proc
        except TimeoutError:
            lost_port = http is True and not proc.running() and "address already in use" in proc.log()[offset:].lower()
            proc.stop()
            if not lost_port or attempt == 2:
                raise
        except BaseException:
            proc.stop()
            raise
    raise AssertionError("unreachable")


def runs(log: Path) -> list[str]:
    """The agents (their ``$MSCHEDULE_TEST_AGENT``) that appended to ``log``, one line per
    run, sorted: a test's script writes there to prove each target ran exactly once."""
    return sorted(log.read_text().split()) if log.exists() else []


def nonzero_counts(task: dict) -> dict[str, int]:
    """A task's or summary's ``counts`` without the states no target is in."""
    return {k: v for k, v in task["counts"].items() if v}


class Fleet:
    """A master and ``agents`` agents on one broker and prefix; a context manager that
    stops them all. ``agent_flags`` go to every agent, ``master_flags`` to the master.
    ``agent_brokers``: agent i connects to ``agent_brokers[i % len]`` instead (the nodes of
    a clustered broker; an entry may list several, comma-separated, as --broker takes them); ``mqtt_version="3.1.1"`` goes to the master, agents and client."""

    def __init__(
        self,
        workdir: Path | str,
        broker_url: str,
        prefix: str,
        *,
        agents: int = 0,
        labels: dict[str, str] | None = None,
        agent_flags: dict | None = None,
        master_flags: dict | None = None,
        agent_brokers: list[str] | None = None,
        mqtt_version: str = "5",
    ) -> None:
        self.workdir = Path(workdir)
        self.broker_url = broker_url
        self.prefix = prefix
        self.n_agents = agents
        self.labels = labels
        self.agent_brokers = list(agent_brokers or [broker_url])
        self.mqtt_version = mqtt_version
        version = {} if mqtt_version == "5" else {"mqtt_version": mqtt_version}
        self.agent_flags = {**version, **(agent_flags or {})}
        self.master_flags = {**version, **(master_flags or {})}
        self.master: MasterProc | None = None
        self.agents: list = []
        self._client = None

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from .agentproc import start_agent

        self.master = start_master(self.workdir / "master", self.broker_url, self.prefix, **self.master_flags)
        for i in range(self.n_agents):
            self.agents.append(
                start_agent(
                    self.workdir / f"agent{i}", self.agent_brokers[i % len(self.agent_brokers)], self.prefix,
                    self.labels, wait=False,
                    env={AGENT_INDEX_ENV: str(i)}, **self.agent_flags,
                )  # fmt: skip
            )
        for a in self.agents:
            a.wait_online(30)
        self.wait_agents_known(len(self.agents))

    def stop(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None
        for a in self.agents:
            a.stop()
        if self.master is not None:
            self.master.stop()

    @property
    def agent_ids(self) -> list[str]:
        return [a.agent_id for a in self.agents]

    # ------------------------------------------------------------------ MQTT helpers
    @property
    def client(self):
        """A :class:`harness.mqtt.Collector` on this prefix's task, reply and agent topics."""
        if self._client is None:
            from .mqtt import Collector

            p = self.prefix
            self._client = Collector(
                self.broker_url, [f"{p}/tasks/+/summary", f"{p}/tasks/+/progress", f"{p}/submit/reply/+"],
                mqtt_version=self.mqtt_version,
            ).__enter__()
        return self._client

    def submit(self, targets: list[str], script: str, *, timeout: float = 30.0, **fields) -> str:
        """Submit over MQTT (as mosquitto_pub would); return the task id or raise RuntimeError."""
        request_id = uuid.uuid4().hex
        payload = {"targets": targets, "script": base64.b64encode(script.encode()).decode(), "request_id": request_id}
        payload.update(fields)
        client = self.client
        client.publish(f"{self.prefix}/submit", orjson.dumps({"type": "submit", "payload": payload}))
        topic = f"{self.prefix}/submit/reply/{request_id}"
        (msg,) = client.wait_for(lambda m: m.topic == topic, timeout)
        reply = orjson.loads(msg.payload)["payload"]
        if not reply["ok"]:
            raise RuntimeError(f"submission refused: {reply['error']} (field {reply['field']})")
        return reply["task_id"]

    def wait_task(self, task_id: str, timeout: float = 60.0) -> dict:
        """Wait for the task's summary (published when it ends); return its payload."""
        topic = f"{self.prefix}/tasks/{task_id}/summary"
        (msg,) = self.client.wait_for(lambda m: m.topic == topic, timeout)[:1]
        return orjson.loads(msg.payload)["payload"]

    def http(self, method: str, path: str, body: dict | None = None) -> dict:
        """Call the master's HTTP API (``path`` like ``/api/v1/tasks``); return the JSON."""
        import urllib.request

        assert self.master is not None and self.master.http_url, "the master runs without HTTP"
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(self.master.http_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for name, value in self._auth().items():
            req.add_header(name, value)
        with urllib.request.urlopen(req, timeout=10) as r:
            return orjson.loads(r.read())

    def _auth(self) -> dict[str, str]:
        """The Authorization header of a master started with ``master_flags={"token": ...}``."""
        token = self.master_flags.get("token")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def task(self, task_id: str) -> dict:
        """The task with its targets (and their output), as the HTTP API shows it."""
        return self.http("GET", f"/api/v1/tasks/{task_id}?outputs=1")

    def kill(self, task_id: str) -> dict:
        return self.http("POST", f"/api/v1/tasks/{task_id}/kill")

    def wait_progress(self, task_id: str, pred, timeout: float = 30.0) -> dict:
        """Wait for a progress message on the task whose payload satisfies ``pred``."""
        topic = f"{self.prefix}/tasks/{task_id}/progress"
        (msg,) = self.client.wait_for(lambda m: m.topic == topic and pred(orjson.loads(m.payload)["payload"]), timeout)[:1]
        return orjson.loads(msg.payload)["payload"]

    def wait_agents_known(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the master has ``n`` agents online (through its HTTP API, else its db)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._online_count() >= n:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the master did not see {n} agents online within {timeout}s")

    def _online_count(self) -> int:
        import sqlite3
        import urllib.request

        assert self.master is not None
        if self.master.http_url:
            try:
                req = urllib.request.Request(f"{self.master.http_url}/api/v1/agents?online=true", headers=self._auth())
                with urllib.request.urlopen(req, timeout=5) as r:
                    return len(orjson.loads(r.read())["agents"])
            except OSError:
                return 0
        try:
            with closing(sqlite3.connect(f"file:{self.master.db}?mode=ro", uri=True, timeout=5)) as c, c:
                return c.execute("select count(*) from agents where online=1").fetchone()[0]
        except sqlite3.Error:
            return 0

