"""``make demo``: a whole mschedule on this machine, then a real rollout through the CLI.

Starts mosquitto (deploy/mosquitto/dev.conf on port 18830, or a free port if that is
taken), a master (HTTP on 127.0.0.1:9900, or a free port) and three agents with
different labels, runs ``uname -a; uptime`` on all of them with ``--parallel 2``
through the ``mschedule`` CLI with live progress, prints the broker port, the dashboard
URL, each agent's id and state directory and a few commands to try, writes ``demo.env``
(``. ./demo.env`` points the README's commands at this fleet), and keeps the fleet up
until Ctrl-C; then it stops every process it started and removes ``demo.env``.

    python -m harness.demo            # keep running until Ctrl-C
    python -m harness.demo --once     # run the sample rollout and exit (status = the CLI's)

:func:`start_demo_fleet` is also what the UI's end-to-end tests start.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .agentproc import AgentProc, start_agent
from .broker import Mosquitto, free_port
from .fleet import TEST_FLAGS, MasterProc, start_master
from .procs import ROOT

DEMO_BROKER_PORT = 18830
DEMO_HTTP_PORT = 9900
DEMO_PREFIX = "mschedule"

#: The three demo agents' labels.
DEMO_AGENTS: tuple[dict[str, str], ...] = (
    {"role": "web", "zone": "bj"},
    {"role": "web", "zone": "sh"},
    {"role": "db", "zone": "bj"},
)

SAMPLE_SCRIPT = "uname -a; uptime"

#: Where the demo writes the shell lines that point the README's commands at it.
DEFAULT_ENV_FILE = ROOT / "demo.env"

#: The master's production timings (None = its own default), instead of the test ones.
PRODUCTION_TIMINGS = {name: None for name in TEST_FLAGS}


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as every server sets it:
    a port whose last connections are only in TIME_WAIT (the previous demo) is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int) -> int:
    """``preferred`` when it is free, else (or for 0) any free loopback port."""
    return preferred if preferred and port_free(preferred) else free_port()


@dataclass
class DemoFleet:
    """A master and agents started by :func:`start_demo_fleet`; ``stop()`` stops them all."""

    master: MasterProc
    agents: list[AgentProc] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.master.http_url
        return self.master.http_url

    def stop(self) -> None:
        for a in self.agents:
            a.stop()
        self.master.stop()

    def online_agents(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/agents?online=true", timeout=5) as r:
                return len(orjson.loads(r.read())["agents"])
        except OSError:
            return 0

    def wait_online(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.online_agents() >= len(self.agents):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the master did not see {len(self.agents)} agents online within {timeout}s")


def start_demo_fleet(
    workdir: Path,
    broker_url: str,
    prefix: str = DEMO_PREFIX,
    *,
    http: str | None = None,
    labels: tuple[dict[str, str], ...] = DEMO_AGENTS,
    master_flags: dict | None = None,
    agent_flags: dict | None = None,
    agent_env: dict[str, str] | None = None,
) -> DemoFleet:
    """Start a master (HTTP on ``http`` HOST:PORT, default a free loopback port) and one
    agent per entry of ``labels``; return once the master sees them all online."""
    workdir = Path(workdir)
    master = start_master(workdir / "master", broker_url, prefix, http=http or True, **(master_flags or {}))
    fleet = DemoFleet(master)
    try:
        for i, lab in enumerate(labels):
            fleet.agents.append(
                start_agent(workdir / f"agent{i}", broker_url, prefix, lab, wait=False, env=agent_env,
                            **(agent_flags or {}))  # fmt: skip
            )
        for a in fleet.agents:
            a.wait_online(30)
        fleet.wait_online(30)
    except BaseException:
        fleet.stop()
        raise
    return fleet


def cli_argv() -> list[str]:
    """How to run the CLI from this virtualenv."""
    exe = Path(sys.executable).parent / "mschedule"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mschedule_master.cli"]


def env_lines(url: str, broker_port: int, agents: list[AgentProc]) -> str:
    """What ``. ./demo.env`` sets: the README's later sections use these names."""
    ids = " ".join(a.agent_id for a in agents)
    return "\n".join([
        "# written by `make demo` (harness/demo.py) for the README's commands; removed when it stops",
        f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"   # mschedule, mschedule-master, ...",
        f"export MSCHEDULE_MASTER={url}",
        f"export MQTT_HOST=127.0.0.1 MQTT_PORT={broker_port}",
        f"export AGENT={agents[0].agent_id}   # the first agent ({_labels(DEMO_AGENTS[0])})",
        f"export AGENT_STATE={shlex.quote(str(agents[0].workdir))}   # its --state-dir",
        f"export AGENTS='{ids}'",
        "",
    ])  # fmt: skip


def _labels(labels: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in labels.items())


def write_env_file(path: Path, text: str) -> None:
    """Written whole or not at all (a rename), readable by its owner only: it names the
    fleet's ports and state (no secrets, but nobody else's business either)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def source_line(env_file: Path) -> str:
    """How to load ``env_file`` in a shell: ``. ./demo.env`` when it is in the current
    directory (or below), else by its absolute path."""
    path = env_file.absolute()
    if path.is_relative_to(Path.cwd()):
        return f". ./{shlex.quote(str(path.relative_to(Path.cwd())))}"
    return f". {shlex.quote(str(path))}"


def try_these(url: str, broker_port: int, prefix: str, env_file: Path | None = None) -> str:
    cli = " ".join(shlex.quote(p) for p in cli_argv())
    if cli.startswith(str(Path.cwd())):
        cli = os.path.relpath(cli)
    payload = {"targets": ["role=db"], "script_text": "echo hello from MQTT"}
    submit = orjson.dumps({"type": "submit", "payload": payload}).decode()
    rr = f"mosquitto_rr -p {broker_port} -t {prefix}/submit -e {prefix}/submit/reply/demo -W 10 -m '{submit}'"
    grab_id = r"""sed -n 's/.*"task_id":"\([0-9a-f]*\)".*/\1/p'"""
    env = (
        f"""
  The README's commands, against this demo, in another shell:
    {source_line(env_file)}    # sets PATH, MSCHEDULE_MASTER, MQTT_HOST, MQTT_PORT, AGENT, AGENT_STATE, AGENTS
"""
        if env_file is not None
        else ""
    )
    return f"""
  Dashboard:  {url}/
  API:        {url}/api/v1/openapi.json
  Broker:     mqtt://127.0.0.1:{broker_port}
{env}
  Try:
    export MSCHEDULE_MASTER={url}
    {cli} agents
    {cli} run -t role=web -c 'hostname; df -h /'
    {cli} run -t all --fail-count 0 -c 'echo deploying; exit 3'    # the first failure stops the rollout
    {cli} tasks
    {cli} status TASK_ID
    curl -s {url}/task/targets

  Submit over MQTT, as any tool can (the reply names the task; its summary is retained):
    TASK=$({rr} | tee /dev/stderr | {grab_id})
    mosquitto_sub -p {broker_port} -t "{prefix}/tasks/$TASK/summary" -C 1 -W 60
"""


def run_sample(url: str) -> int:
    """The sample rollout through the real CLI, on this terminal (live progress)."""
    argv = [*cli_argv(), "--master", url, "run", "-t", "all", "--parallel", "2", "--show-output", "-c", SAMPLE_SCRIPT]
    print(f"$ mschedule run -t all --parallel 2 --show-output -c '{SAMPLE_SCRIPT}'", flush=True)
    return subprocess.run(argv, env={**os.environ, "MSCHEDULE_MASTER": url}, timeout=300).returncode


def wait_for_stop(procs: list) -> int:
    """Until Ctrl-C / SIGTERM (KeyboardInterrupt: 0), or until a process of the fleet dies (1)."""
    while True:
        time.sleep(1.0)
        dead = [p for p in procs if not p.running()]
        if dead:
            say(f"demo: {len(dead)} process(es) exited unexpectedly; see {dead[0].log_path}")
            return 1


def say(text: str) -> None:
    """Print, but never let a closed stdout (``| head``) stop the cleanup."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--once", action="store_true", help="run the sample rollout, then stop everything and exit")
    p.add_argument("--http-port", type=int, default=DEMO_HTTP_PORT)
    p.add_argument("--broker-port", type=int, default=DEMO_BROKER_PORT)
    p.add_argument("--workdir", type=Path, help="state, databases and logs (default: a new temp dir)")
    p.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE,
                   help="where to write the shell lines for the README's commands (default ./demo.env)")
    args = p.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mschedule-demo-"))
    # Ctrl-C and SIGTERM both unwind through the `finally` below, at any point, even
    # when started in the background (where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    broker = Mosquitto(workdir / "broker", port=pick_port(args.broker_port), name="broker")
    fleet: DemoFleet | None = None
    status = 1
    env_written = False
    try:
        print(f"demo: starting mosquitto on 127.0.0.1:{broker.port} (deploy/mosquitto/dev.conf)", flush=True)
        broker.start()
        http = f"127.0.0.1:{pick_port(args.http_port)}"
        print(f"demo: starting mschedule-master (HTTP {http}) and {len(DEMO_AGENTS)} agents", flush=True)
        fleet = start_demo_fleet(workdir, broker.url, DEMO_PREFIX, http=http, master_flags=PRODUCTION_TIMINGS,
                                 agent_flags={"heartbeat": 2, "will_delay": 5})  # fmt: skip
        for a, lab in zip(fleet.agents, DEMO_AGENTS, strict=False):
            print(f"  agent {a.agent_id}  {_labels(lab)}  state {a.workdir}", flush=True)
        write_env_file(args.env_file, env_lines(fleet.url, broker.port, fleet.agents))
        env_written = True
        print(flush=True)
        status = run_sample(fleet.url)
        print(try_these(fleet.url, broker.port, DEMO_PREFIX, args.env_file), flush=True)
        if args.once:
            return status
        print("demo: the fleet stays up; press Ctrl-C to stop it.", flush=True)
        status = wait_for_stop([broker, fleet.master, *fleet.agents])
        return status
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        say(f"demo: failed: {e}\n  logs: {workdir}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave processes behind
            signal.signal(sig, signal.SIG_IGN)
        say("\ndemo: stopping agents, master and broker…")
        if fleet is not None:
            fleet.stop()
        broker.stop()
        if env_written:
            args.env_file.unlink(missing_ok=True)  # it would point at a fleet that is gone
        if args.workdir is None and status == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        say(f"demo: stopped.{'' if status == 0 else f' Logs kept in {workdir}'}")


if __name__ == "__main__":
    sys.exit(main())
