"""Start a real ``mschedule-agent`` process for tests, the demo and benchmarks.

    from harness.agentproc import start_agent
    agent = start_agent(tmp_path / "a1", broker.url, prefix, labels={"role": "web"})
    try:
        agent.agent_id            # the uuid it registered under
        ...
    finally:
        agent.stop()              # SIGTERM: clean offline; agent.kill9() simulates a crash

Extra keyword arguments become flags: ``max_tasks=2`` -> ``--max-tasks 2`` (keep
``log_level`` at INFO or DEBUG: the wait looks for an INFO line). ``workdir``
is the agent's state directory (its id, ledger and log live there): starting an agent
again on the same ``workdir`` restarts the same agent (same id, same ledger).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from .procs import Proc, flag_argv

#: The line the agent logs after its first successful connect: "agent <id> online".
ONLINE = re.compile(r"agent [0-9a-f]{32} online")

#: Test-friendly defaults (seconds), overridable through ``**flags``.
TEST_FLAGS = {"heartbeat": 1, "will_delay": 1, "resend": 1}


class AgentProc(Proc):
    """A :class:`~harness.procs.Proc` that knows its agent's state directory and id."""

    def __init__(self, argv, *, workdir: Path, **kw) -> None:
        super().__init__(argv, **kw)
        self.workdir = Path(workdir)

    @property
    def agent_id(self) -> str:
        return (self.workdir / "agent-id").read_text().strip()

    def wait_online(self, timeout: float = 20.0, *, after: int = 0) -> None:
        """Wait until the log (from byte ``after``) says "agent <id> online"."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ONLINE.search(self.log()[after:]):
                return
            if not self.running():
                break
            time.sleep(0.05)
        raise TimeoutError(f"agent did not come online within {timeout}s:\n{self.log()[after:][-3000:]}")


def agent_argv(workdir: Path, broker_url: str, prefix: str, labels: dict[str, str] | None = None, **flags) -> list[str]:
    """The command-line flags for an agent (``**flags``: name=value, None to omit)."""
    argv = ["--broker", broker_url, "--state-dir", str(workdir), "--topic-prefix", prefix]
    for k, v in (labels or {}).items():
        argv += ["--label", f"{k}={v}"]
    return argv + flag_argv({**TEST_FLAGS, **flags})


def start_agent(
    workdir: Path | str,
    broker_url: str,
    prefix: str,
    labels: dict[str, str] | None = None,
    *,
    wait: bool = True,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    **flags,
) -> AgentProc:
    """Start ``python -m mschedule_agent`` with its state in ``workdir``; unless
    ``wait=False``, return once it is online (raises TimeoutError, after stopping it,
    if it is not within ``timeout``). Its log is ``workdir/agent.log``, appended
    across restarts."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mschedule_agent", *agent_argv(workdir, broker_url, prefix, labels, **flags)]
    proc = AgentProc(argv, workdir=workdir, log_path=workdir / "agent.log", env=env)
    offset = len(proc.log())
    proc.start()
    if wait:
        try:
            proc.wait_online(timeout, after=offset)
        except BaseException:
            proc.stop()
            raise
    return proc
