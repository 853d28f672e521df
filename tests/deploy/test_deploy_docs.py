"""docs/deploy.md, run as written: every ``# step:`` block is executed with ``sh -eu`` in
a scratch directory per host, with the page's variables pointing there and at
loopback ports; the brokers, the master and one agent per datacenter then start from
what the steps produced, and the operator's ``mosquitto_rr`` rollout must succeed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from harness.agentproc import start_agent
from harness.broker import ROOT, Mosquitto, free_port
from harness.fleet import start_master
from harness.procs import wait_until
from harness.require import require_tools

DOC = ROOT / "docs" / "deploy.md"
PREFIX = "mschedule"  # the page uses the default prefix; these brokers are the test's own


def steps() -> dict[str, str]:
    text = DOC.read_text()
    found = re.findall(r"```sh\n# step: ([\w-]+)\n(.*?)```", text, re.S)
    return dict(found)


def run_step(name: str, cwd: Path, **env: str) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, "REPO": str(ROOT), **env}
    p = subprocess.run(["sh", "-eu", "-c", steps()[name]], cwd=cwd, env=full, capture_output=True, text=True,
                       timeout=150)
    assert p.returncode == 0, f"step {name} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_page_marks_every_step_the_deployment_needs():
    assert list(steps()) == ["central", "central-credentials", "edge", "agent-id", "agent-user", "check-bridges",
                             "operator"]


def test_the_documented_steps_deploy_a_central_site_and_two_datacenters(tmp_path):
    require_tools("mosquitto", "mosquitto_rr", "mosquitto_sub", "mosquitto_pub")
    for attempt in range(3):
        try:
            return deploy_as_documented(tmp_path / f"attempt{attempt}")
        except Exception:
            # A free port taken by another process before mosquitto bound it: try again
            # on fresh ports. Any other failure is the test's verdict.
            logs = "".join(p.read_text(errors="replace") for p in (tmp_path / f"attempt{attempt}").glob("*/*.log"))
            if "Address already in use" not in logs or attempt == 2:
                raise


def deploy_as_documented(tmp_path: Path) -> None:
    hosts = {name: tmp_path / name for name in ("central", "bj", "sh", "agent-bj", "agent-sh", "master")}
    central_port = free_port()
    central_addr = f"127.0.0.1:{central_port}"
    master_addr = f"127.0.0.1:{free_port()}"
    etc = {h: hosts[h] / "etc" for h in ("central", "bj", "sh")}
    running: list = []
    try:
        # 2. central
        run_step("central", hosts["central"], ETC=str(etc["central"]), CENTRAL_MASTER=master_addr)
        run_step("central-credentials", hosts["central"], ETC=str(etc["central"]), CENTRAL_MASTER=master_addr)
        central = Mosquitto(hosts["central"], conf=etc["central"] / "mosquitto.conf", port=central_port, name="central")
        running.append(central.start())
        # 3. edges, each with the bridge credential "copied" from central
        edges = {}
        for dc in ("bj", "sh"):
            hosts[dc].mkdir(parents=True, exist_ok=True)
            shutil.copy(hosts["central"] / f"bridge-{dc}.credentials", hosts[dc] / "bridge.credentials")
            run_step("edge", hosts[dc], ETC=str(etc[dc]), DC=dc, CENTRAL=central_addr)
            edges[dc] = Mosquitto(hosts[dc], conf=etc[dc] / "mosquitto.conf", name=dc)
            running.append(edges[dc].start())
        # 6. both bridges up, checked as the page does
        out = run_step("check-bridges", hosts["central"], ETC=str(etc["central"]), CENTRAL=central_addr)
        assert sorted(out.split("\n")[:2]) == [
            "$SYS/broker/connection/mschedule-bridge-bj/state 1",
            "$SYS/broker/connection/mschedule-bridge-sh/state 1",
        ], out
        # 5. the master, with the credential the page gave it
        master_url = env_file(hosts["central"] / "master.env")["MSCHEDULE_MASTER_BROKER"]
        master = start_master(hosts["master"], master_url, PREFIX)
        running.append(master)
        # 4. one agent per datacenter
        agent_ids = {}
        for dc in ("bj", "sh"):
            state = hosts[f"agent-{dc}"] / "state"
            agent_id = run_step("agent-id", hosts[f"agent-{dc}"], AGENT_STATE=str(state)).strip()
            assert re.fullmatch(r"[0-9a-f]{32}", agent_id)
            run_step("agent-user", hosts[dc], ETC=str(etc[dc]), AGENT_ID=agent_id, EDGE=f"127.0.0.1:{edges[dc].port}")
            edges[dc].proc.send_signal(1)  # systemctl reload mschedule-broker
            url = env_file(hosts[dc] / f"agent-{agent_id}.env")["MSCHEDULE_AGENT_BROKER"]
            # The reload is asynchronous: the agent retries until the edge knows its user.
            running.append(start_agent(state, url, PREFIX, timeout=60))
            agent_ids[dc] = agent_id
        wait_until(lambda: _online_dcs(master) == {agent_ids["bj"]: "bj", agent_ids["sh"]: "sh"}, 30,
                   what="the master seeing both agents online with their datacenters")
        # 7. a rollout by the operator with mosquitto_rr and mosquitto_sub
        out = run_step("operator", tmp_path / "operator", ETC=str(etc["central"]), CENTRAL=central_addr)
        summary = out.splitlines()[-1]
        assert '"state":"SUCCEED"' in summary, out
        assert agent_ids["bj"] in summary and agent_ids["sh"] not in summary, "dc=bj picked bj's agent only"
    finally:
        for proc in reversed(running):
            proc.stop()


def _online_dcs(master) -> dict[str, str]:
    import urllib.request

    import orjson

    try:
        with urllib.request.urlopen(f"{master.http_url}/api/v1/agents", timeout=5) as r:
            agents = orjson.loads(r.read())["agents"]
    except OSError:
        return {}
    return {a["id"]: a["dc"] for a in agents if a["online"]}
