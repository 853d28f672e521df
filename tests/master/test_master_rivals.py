"""The master always comes back (issue 10): a retained "online" status proves nothing until
its master answers a fresh nonce; exit statuses tell a supervisor what to retry; secrets
stay out of the logs. Real broker, real daemons."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import orjson

from harness.agentproc import start_agent
from harness.broker import free_port
from harness.fleet import start_master
from harness.mqtt import Collector
from harness.procs import ROOT, wait_until
from mschedule_agent import protocol
from mschedule_agent.protocol import MasterStatus


def _stale_online(broker_url: str, prefix: str) -> str:
    """Leave a retained "online" status of a master that does not exist (as a broker
    restored from an old snapshot does); returns its instance."""
    instance = uuid.uuid4().hex
    status = MasterStatus("online", instance, "mschedule-master-gone", 4242, "gone-host", time.time() - 3600)
    with Collector(broker_url, []) as c:
        c.publish(f"{prefix}/master/status", protocol.encode(status), qos=1, retain=True)
    return instance


def _retained_instance(broker_url: str, prefix: str) -> str:
    with Collector(broker_url, [f"{prefix}/master/status"]) as c:
        (msg,) = c.wait_for(lambda m: m.retain, 10)
    return orjson.loads(msg.payload)["payload"]["instance"]


def test_a_stale_retained_online_status_does_not_stop_a_master_from_starting(broker, prefix, tmp_path):
    stale = _stale_online(broker.url, prefix)
    master = start_master(tmp_path / "m", broker.url, prefix)
    try:
        assert "did not answer a challenge" in master.log()
        assert master.running()
        wait_until(lambda: _retained_instance(broker.url, prefix) != stale, 10, what="its own status")
    finally:
        assert master.stop() == 0


def test_a_running_master_that_sees_a_stale_online_status_keeps_running_and_restores_its_own(broker, prefix, tmp_path):
    master = start_master(tmp_path / "m", broker.url, prefix)
    try:
        mine = _retained_instance(broker.url, prefix)
        offset = len(master.log())
        _stale_online(broker.url, prefix)
        wait_until(lambda: "did not answer a challenge" in master.log()[offset:], 20, what="the stale status judged")
        assert master.running()
        wait_until(lambda: _retained_instance(broker.url, prefix) == mine, 10, what="its own status again")
    finally:
        assert master.stop() == 0


def test_a_live_master_answers_the_challenge_and_a_second_one_is_refused_with_2(broker, prefix, tmp_path):
    first = start_master(tmp_path / "m1", broker.url, prefix)
    try:
        second = start_master(tmp_path / "m2", broker.url, prefix, wait=False)
        try:
            wait_until(lambda: not second.running(), 30, what="the second master to exit")
            assert second.proc.returncode == 2
            assert "answered a challenge; refusing to start" in second.log()
        finally:
            second.stop()
        time.sleep(1)
        assert first.running() and "yielding" not in first.log()
    finally:
        assert first.stop() == 0


def _run_master(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mschedule_master", *argv], capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_non_loopback_http_without_a_token_exits_2_before_touching_the_broker_or_the_database(tmp_path):
    db = tmp_path / "m.db"
    started = time.monotonic()
    p = _run_master("--broker", f"mqtt://127.0.0.1:{free_port()}", "--db", str(db), "--http", "0.0.0.0:0")
    assert p.returncode == 2, p.stderr
    assert "without a token" in p.stderr and "Traceback" not in p.stderr
    assert not db.exists() and not (tmp_path / "m.db.lock").exists()
    assert time.monotonic() - started < 15


def test_a_bad_broker_url_exits_2_without_showing_its_password(tmp_path):
    p = _run_master("--broker", "mqtt://me:s3cret-pw@host:notaport", "--db", str(tmp_path / "m.db"), "--http", "off")
    assert p.returncode == 2
    assert "bad port" in p.stderr and "s3cret-pw" not in p.stderr + p.stdout
    assert not (tmp_path / "m.db").exists()


def test_neither_daemon_logs_the_broker_password_or_the_token(broker, prefix, tmp_path):
    url = broker.url.replace("mqtt://", "mqtt://someone:s3cret-pw@")
    master = start_master(tmp_path / "m", url, prefix, env={"MSCHEDULE_TOKEN": "t0ken-s3cret"})
    agent = start_agent(tmp_path / "a", url, prefix)
    try:
        agent.stop()
        master.stop()
        for log in (master.log(), agent.log()):
            assert "s3cret-pw" not in log and "t0ken-s3cret" not in log
            assert "someone@127.0.0.1" in log  # the URL is there, without its password
    finally:
        agent.stop()
        master.stop()


def test_the_cli_never_shows_a_password_given_in_the_master_url(tmp_path):
    env = {**os.environ, "MSCHEDULE_TOKEN": "t0ken-s3cret"}
    p = subprocess.run(
        [sys.executable, "-m", "mschedule_master.cli", "--master", f"http://me:s3cret-pw@127.0.0.1:{free_port()}", "tasks"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=env,
    )  # fmt: skip
    assert p.returncode == 3
    assert "cannot reach the master at http://me:***@127.0.0.1" in p.stderr
    assert "s3cret" not in p.stderr + p.stdout


def test_a_request_id_reused_with_a_different_request_gets_409_over_http(broker, prefix, tmp_path):
    import urllib.error

    from harness.fleet import Fleet

    with Fleet(tmp_path, broker.url, prefix, agents=1) as fleet:
        body = {"targets": ["all"], "script_text": "true", "request_id": "same-id"}
        first = fleet.http("POST", "/api/v1/tasks", body)
        assert fleet.http("POST", "/api/v1/tasks", body)["id"] == first["id"]
        try:
            fleet.http("POST", "/api/v1/tasks", {**body, "script_text": "rm -rf /tmp/nothing"})
            raise AssertionError("a different request under the same request_id was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 409
            doc = orjson.loads(e.read())
            assert doc["field"] == "request_id" and first["id"] in doc["error"]
        assert len(fleet.http("GET", "/api/v1/tasks")["tasks"]) == 1


def test_of_two_live_masters_the_older_yields_with_2_and_the_newer_runs_on(broker, prefix, tmp_path):
    import signal

    older = start_master(tmp_path / "m1", broker.url, prefix)
    newer = None
    try:
        os.killpg(older.pid, signal.SIGSTOP)  # frozen: it cannot answer the newer one's challenge
        try:
            newer = start_master(tmp_path / "m2", broker.url, prefix)
            assert "did not answer a challenge" in newer.log()
        finally:
            os.killpg(older.pid, signal.SIGCONT)
        wait_until(lambda: not older.running(), 30, what="the older master to yield")
        assert older.proc.returncode == 2 and "yielding to it" in older.log()
        time.sleep(1)
        assert newer.running() and "yielding" not in newer.log()
    finally:
        older.stop()
        if newer is not None:
            assert newer.stop() == 0
