"""Highly available masters for tests and benchmarks: N ``mschedule-master`` processes on
one private PostgreSQL database (harness/postgres.py) and one broker, plus agents.

    with HaFleet(tmp_path, broker.url, prefix, postgres.create_database(), masters=3, agents=4) as ha:
        leader = ha.leader()               # the MasterProc whose /readyz says it leads
        task_id = ha.submit(ha.standbys()[0], ["all"], "echo hi")   # through a standby's HTTP API
        ha.wait_state(task_id, "SUCCEED")

All masters share the MQTT client id (the leader's session is the leadership's), as they
would in production; each has its own HTTP port and log in ``workdir/masterN``.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from .agentproc import start_agent
from .fleet import AGENT_INDEX_ENV, READY, MasterProc, start_master

#: HA test timings: a short lease keeps failover tests quick (docs/deploy.md: production uses 5 s).
HA_FLAGS = {"lease": 3}


class HaFleet:
    def __init__(
        self, workdir: Path | str, broker_url: str, prefix: str, db: str, *, masters: int = 3, agents: int = 0,
        master_flags: dict[str, Any] | None = None, agent_flags: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.workdir = Path(workdir)
        self.broker_url = broker_url
        self.prefix = prefix
        self.db = db
        self.n_masters = masters
        self.n_agents = agents
        self.master_flags = {**HA_FLAGS, **(master_flags or {})}
        self.agent_flags = dict(agent_flags or {})
        self.client_id = f"mschedule-master-{prefix.split('/')[0]}"
        self.masters: list[MasterProc] = []
        self.agents: list[Any] = []

    def __enter__(self) -> HaFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for i in range(self.n_masters):
            self.masters.append(self.start_master(i))
            if i == 0:  # the first one leads before the others start
                self.masters[0].ready_texts = (READY,)
                self.masters[0].wait_ready(30)
        for i in range(self.n_agents):
            self.agents.append(
                start_agent(
                    self.workdir / f"agent{i}", self.broker_url, self.prefix, wait=False,
                    env={AGENT_INDEX_ENV: str(i)}, **self.agent_flags,
                )  # fmt: skip
            )
        for a in self.agents:
            a.wait_online(30)
        self.wait_agents_known(len(self.agents))

    def start_master(self, i: int) -> MasterProc:
        return start_master(
            self.workdir / f"master{i}", self.broker_url, self.prefix, db=self.db, client_id=self.client_id,
            **self.master_flags,
        )  # fmt: skip

    def stop(self) -> None:
        for a in self.agents:
            a.stop()
        for m in self.masters:
            m.stop()

    # ------------------------------------------------------------------ who leads
    def readyz(self, m: MasterProc) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{m.http_url}/readyz", timeout=3) as r:
                return orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            return orjson.loads(e.read())
        except OSError:
            return None

    def role(self, m: MasterProc) -> str | None:
        if not m.running():
            return None
        body = self.readyz(m)
        return None if body is None else body.get("leadership", {}).get("role")

    def leader(self, timeout: float = 30.0, *, exclude: tuple[MasterProc, ...] = ()) -> MasterProc:
        """The one running master that says it leads (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leading = [m for m in self.masters if m not in exclude and self.role(m) == "leader"]
            if len(leading) == 1:
                return leading[0]
            time.sleep(0.1)
        raise TimeoutError(f"no single leader within {timeout}s")

    def standbys(self) -> list[MasterProc]:
        return [m for m in self.masters if self.role(m) == "standby"]

    # ------------------------------------------------------------------ API
    def http(self, m: MasterProc, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(f"{m.http_url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path} on {m.http_url}: {e.code} {e.read()[:500]!r}") from None

    def submit(self, m: MasterProc, targets: list[str], script: str, **fields: Any) -> str:
        task = self.http(m, "POST", "/api/v1/tasks", {"targets": targets, "script_text": script, **fields})
        return task["id"]

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The task as any running master's API shows it (they all read the one database)."""
        for m in self.masters:
            if m.running():
                try:
                    return self.http(m, "GET", f"/api/v1/tasks/{task_id}")
                except (OSError, RuntimeError):
                    continue
        return None

    def wait_state(self, task_id: str, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.task(task_id)
            if last is not None and last["state"] in states:
                return last
            time.sleep(0.2)
        raise TimeoutError(f"task {task_id} not in {states} within {timeout}s (last: {last and last['state']})")

    def wait_agents_known(self, n: int, timeout: float = 30.0) -> None:
        """Until every running master knows ``n`` agents online (standbys: as the leader saved them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(len(self.http(m, "GET", "/api/v1/agents?online=true")["agents"]) >= n
                       for m in self.masters if m.running()):  # fmt: skip
                    return
            except (OSError, RuntimeError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the masters did not all see {n} agents online within {timeout}s")
