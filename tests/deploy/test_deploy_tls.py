"""docs/deploy.md's TLS settings, for real: a throwaway CA and a server certificate for
127.0.0.1, every listener and both bridges of each edge on TLS, a real agent on
mqtts:// with --ca-file, and a plain-MQTT client refused on a TLS port."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from harness.agentproc import start_agent
from harness.fleet import Fleet, start_master
from harness.mqtt import Collector
from harness.require import require_tools
from harness.xdc import MASTER_USER, MONITOR_USER, OPERATOR_USER, Xdc
from mschedule_agent import protocol


def make_certificates(d: Path) -> Path:
    d.mkdir(parents=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=mschedule test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return d


@pytest.fixture
def tls_xdc(tmp_path, prefix, monkeypatch):
    require_tools("mosquitto", "openssl")
    tls = make_certificates(tmp_path / "tls")
    # The test's own clients find the CA the way OpenSSL does by default.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls / "ca.crt"))
    with Xdc(tmp_path / "xdc", prefix=prefix, dcs=("bj",), tls_dir=tls) as cluster:
        yield cluster


def test_bridges_agents_and_the_master_work_over_tls(tls_xdc, topics, tmp_path):
    xdc = tls_xdc
    assert xdc.url("bj", MONITOR_USER).startswith("mqtts://")
    state = tmp_path / "agent"
    agent_id = xdc.provision_agent("bj", state)
    xdc.wait_reloaded("bj", agent_id)
    agent = start_agent(state, xdc.url("bj", agent_id), topics.prefix, ca_file=str(tmp_path / "tls" / "ca.crt"),
                        env={"SSL_CERT_FILE": ""})
    try:
        with Collector(xdc.url("central", MASTER_USER), [topics.dc("bj").results(agent_id)]) as master:
            task = protocol.Task(id="tls-1", script=b"echo over tls")
            master.publish(topics.dc("bj").tasks(agent_id), protocol.encode(task))
            (msg,) = master.wait_for(lambda m: protocol.decode(m.payload).TYPE == "result", timeout=30)
            result = protocol.decode(msg.payload)
            assert (result.state, result.output) == ("SUCCEED", b"over tls\n")
    finally:
        agent.stop()


def test_a_plain_client_is_refused_on_a_tls_listener(tls_xdc):
    xdc = tls_xdc
    for site in ("central", "bj"):
        assert xdc.can_connect(site, MONITOR_USER), f"{site}: TLS login failed"
        assert not xdc.can_connect(site, MONITOR_USER, tls=False), f"{site}: accepted plain MQTT on its TLS listener"
    assert xdc.can_connect("central", MASTER_USER)
    assert not xdc.can_connect("central", MASTER_USER, tls=False), "the master's listener accepted plain MQTT"


def test_the_master_daemon_runs_a_task_over_tls(tls_xdc, topics, tmp_path):
    """The real master on mqtts:// (its MQTT socket driven by its asyncio loop, TLS reads
    and writes included: mschedule_agent/asyncnet.py) rolls a task out to a real agent at
    the edge and records its verdict and output; its CA comes from SSL_CERT_FILE."""
    xdc = tls_xdc
    state = tmp_path / "agent"
    agent_id = xdc.provision_agent("bj", state)
    xdc.wait_reloaded("bj", agent_id)
    fleet = Fleet(tmp_path, xdc.url("central", OPERATOR_USER), topics.prefix)
    try:
        fleet.master = start_master(tmp_path / "master", xdc.url("central", MASTER_USER), topics.prefix)
        fleet.agents.append(start_agent(state, xdc.url("bj", agent_id), topics.prefix,
                                        ca_file=str(tmp_path / "tls" / "ca.crt"), env={"SSL_CERT_FILE": ""}))  # fmt: skip
        fleet.wait_agents_known(1)
        task = fleet.http("POST", "/api/v1/tasks", {"targets": ["all"], "script_text": "echo master over tls"})
        summary = fleet.wait_task(task["id"], 60)
        assert summary["state"] == "SUCCEED", summary
        target = fleet.http("GET", f"/api/v1/tasks/{task['id']}")["targets"][agent_id]
        assert (target["state"], target["code"]) == ("SUCCEED", 0), target
        with urllib.request.urlopen(f"{fleet.master.http_url}/api/v1/tasks/{task['id']}/targets/{agent_id}/output",
                                    timeout=30) as resp:  # fmt: skip
            assert resp.read() == b"master over tls\n"
    finally:
        fleet.stop()
