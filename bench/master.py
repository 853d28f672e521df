"""The master under test: a real ``mschedule-master`` process against the bench's broker,
plus a tiny HTTP client (stdlib) to ask it how many agents it sees online."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from harness.broker import free_port
from harness.procs import Proc


class MasterProc:
    """Starts ``python -m mschedule_master`` with a fresh database; a context manager."""

    def __init__(self, url: str, prefix: str, workdir: Path, *, log_level: str = "WARNING", extra: list[str] | None = None):
        self.http_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc.python(
            "mschedule_master",
            "--broker", url,
            "--db", str(workdir / "master.db"),
            "--topic-prefix", prefix,
            "--http", f"127.0.0.1:{self.http_port}",
            "--client-id", f"mschedule-master-{prefix.replace('/', '-')}",
            "--log-level", log_level,
            *(extra or []),
            log_path=workdir / "master.log",
        )

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> MasterProc:
        self.proc.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.running():
                raise RuntimeError(f"master exited at start:\n{self.proc.log()[-3000:]}")
            try:
                self.get("/api/v1/agents?online=true")
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"master HTTP API not up within {timeout}s:\n{self.proc.log()[-3000:]}")

    def stop(self) -> None:
        self.proc.stop()

    def __enter__(self) -> MasterProc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def online_count(self) -> int:
        return len(self.get("/api/v1/agents?online=true")["agents"])

    def wait_online(self, n: int, timeout: float, *, poll=None) -> float:
        """Wait until the master sees ``n`` agents online; returns seconds waited."""
        start = time.monotonic()
        deadline = start + timeout
        seen = 0
        while time.monotonic() < deadline:
            if not self.proc.running():
                raise RuntimeError(f"master died:\n{self.proc.log()[-3000:]}")
            seen = self.online_count()
            if seen >= n:
                return time.monotonic() - start
            if poll is not None:
                poll()
            time.sleep(0.5)
        raise TimeoutError(f"master sees {seen} of {n} agents online after {timeout}s")
