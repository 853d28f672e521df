"""docs/deploy.md, run as written: every ``# step:`` block is executed with ``sh -eu`` in
a scratch directory per host, with the page's variables pointing there and at
loopback ports; the brokers start from the configs the steps rendered, the master and one
agent per datacenter with the page's systemd-free ``# run:`` lines, and the operator's
``mosquitto_rr`` rollout (on the group master.toml defines) must succeed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness.broker import ROOT, Mosquitto, free_port
from harness.procs import Proc, wait_until
from harness.require import require_tools

DOC = ROOT / "docs" / "deploy.md"
PREFIX = "mschedule"  # the page uses the default prefix; these brokers are the test's own


OPT = str(Path(sys.executable).parent.parent)  # the virtualenv the page's step 1 makes
DCS = "bj sh"


def steps() -> dict[str, str]:
    text = DOC.read_text()
    found = re.findall(r"```sh\n# step: ([\w-]+)\n(.*?)```", text, re.S)
    return dict(found)


def run_lines() -> dict[str, str]:
    """The ``# run:`` lines: long-running commands (the systemd-free way)."""
    return dict(re.findall(r"```sh\n# run: ([\w-]+)\n(.*?)\n```", DOC.read_text(), re.S))


def start_run_line(name: str, cwd: Path, **env: str) -> Proc:
    cwd.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, "REPO": str(ROOT), "OPT": OPT, "DCS": DCS, **env}
    return Proc(["sh", "-eu", "-c", run_lines()[name]], log_path=cwd / f"{name}.log", env=full, cwd=cwd).start()


def run_step(name: str, cwd: Path, **env: str) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, "REPO": str(ROOT), "OPT": OPT, "DCS": DCS, **env}
    p = subprocess.run(["sh", "-eu", "-c", steps()[name]], cwd=cwd, env=full, capture_output=True, text=True,
                       timeout=150)
    assert p.returncode == 0, f"step {name} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_page_marks_every_step_the_deployment_needs():
    assert list(steps()) == ["central", "central-permissions", "central-credentials", "edge", "edge-permissions",
                             "agent-id", "agent-user", "master-config", "check-bridges", "operator"]
    assert list(run_lines()) == ["master", "agent"]


def test_the_page_names_no_datacenter_outside_its_variables():
    """bj and sh are the example's values of DCS and DC, not written into the steps."""
    for name, block in steps().items():
        assert not re.search(r"(?<![\w.$-])(bj|sh)(?![\w.-])", block), name


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
    http = f"127.0.0.1:{free_port()}"
    etc = {h: hosts[h] / "etc" for h in ("central", "bj", "sh")}
    data = {h: hosts[h] / "data" for h in ("central", "bj", "sh")}
    running: list = []
    try:
        # 2. central
        central_env = {"ETC": str(etc["central"]), "DATA": str(data["central"]), "CENTRAL": central_addr,
                       "CENTRAL_MASTER": master_addr}  # fmt: skip
        run_step("central", hosts["central"], **central_env)
        run_step("central-permissions", hosts["central"], **central_env)
        run_step("central-credentials", hosts["central"], **central_env)
        conf = (etc["central"] / "mosquitto.conf").read_text()
        assert re.search(rf"^listener {central_port}$", conf, re.M) and f"persistence_location {data['central']}/" in conf
        assert f"listener {master_addr.split(':')[1]} 127.0.0.1" in (etc["central"] / "conf.d/master.conf").read_text()
        central = Mosquitto(hosts["central"], conf=etc["central"] / "mosquitto.conf", port=central_port, name="central")
        running.append(central.start())
        # 3. edges, each with the bridge credential "copied" from central
        edges = {}
        for dc in ("bj", "sh"):
            hosts[dc].mkdir(parents=True, exist_ok=True)
            shutil.copy(hosts["central"] / f"bridge-{dc}.credentials", hosts[dc] / "bridge.credentials")
            edge_port = free_port()
            edge_env = {"ETC": str(etc[dc]), "DATA": str(data[dc]), "DC": dc, "CENTRAL": central_addr,
                        "EDGE": f"127.0.0.1:{edge_port}"}  # fmt: skip
            run_step("edge", hosts[dc], **edge_env)
            run_step("edge-permissions", hosts[dc], **edge_env)
            assert re.search(rf"^listener {edge_port}$", (etc[dc] / "mosquitto.conf").read_text(), re.M)
            edges[dc] = Mosquitto(hosts[dc], conf=etc[dc] / "mosquitto.conf", port=edge_port, name=dc)
            running.append(edges[dc].start())
        # 6. both bridges up, checked as the page does
        out = run_step("check-bridges", hosts["central"], ETC=str(etc["central"]), CENTRAL=central_addr)
        assert sorted(out.split("\n")[:2]) == [
            "$SYS/broker/connection/mschedule-bridge-bj/state 1",
            "$SYS/broker/connection/mschedule-bridge-sh/state 1",
        ], out
        # 5. the master: its config made as the page says, started without systemd
        shutil.copy(hosts["central"] / "master.env", hosts["master"].mkdir(parents=True) or hosts["master"])
        master_etc = hosts["master"] / "etc-mschedule"
        run_step("master-config", hosts["master"], MSCHEDULE_ETC=str(master_etc), MASTER_HTTP=http)
        master = start_run_line("master", hosts["master"], MSCHEDULE_ETC=str(master_etc),
                                MASTER_STATE=str(hosts["master"]))  # fmt: skip
        running.append(master)
        master.http_url = f"http://{http}"
        # 4. one agent per datacenter, started without systemd
        agent_ids = {}
        for dc in ("bj", "sh"):
            state = hosts[f"agent-{dc}"] / "state"
            agent_id = run_step("agent-id", hosts[f"agent-{dc}"], AGENT_STATE=str(state)).strip()
            assert re.fullmatch(r"[0-9a-f]{32}", agent_id)
            run_step("agent-user", hosts[dc], ETC=str(etc[dc]), AGENT_ID=agent_id, EDGE=f"127.0.0.1:{edges[dc].port}")
            edges[dc].proc.send_signal(1)  # systemctl reload mschedule-broker
            agent_etc = hosts[f"agent-{dc}"] / "etc-mschedule"
            agent_etc.mkdir()
            shutil.copy(hosts[dc] / f"agent-{agent_id}.env", agent_etc / "agent.env")  # "copy it to the agent"
            # The reload is asynchronous: the agent retries until the edge knows its user.
            running.append(start_run_line("agent", hosts[f"agent-{dc}"], MSCHEDULE_ETC=str(agent_etc),
                                          AGENT_STATE=str(state)))  # fmt: skip
            agent_ids[dc] = agent_id
        wait_until(lambda: _online_dcs(master) == {agent_ids["bj"]: "bj", agent_ids["sh"]: "sh"}, 60,
                   what="the master seeing both agents online with their datacenters")
        # 7. a rollout by the operator with mosquitto_rr and mosquitto_sub, on master.toml's group @bj
        out = run_step("operator", tmp_path / "operator", ETC=str(etc["central"]), CENTRAL=central_addr, DC="bj")
        summary = out.splitlines()[-1]
        assert '"state":"SUCCEED"' in summary, out
        assert agent_ids["bj"] in summary and agent_ids["sh"] not in summary, "@bj picked bj's agent only"
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
