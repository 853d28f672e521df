"""Failures around the master, with real processes: a target offline past the delivery
timeout, an agent killed -9 mid-run, the master killed -9 mid-rollout, and a second
master refused."""

from __future__ import annotations

import os
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

from harness.fleet import Fleet, start_master
from harness.procs import wait_until


def _events(db: Path, kind: str) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c, c:
        return c.execute("select task_id, agent_id, data from events where kind=?", (kind,)).fetchall()


def _agent_online(fleet: Fleet, agent_id: str) -> bool:
    return fleet.http("GET", f"/api/v1/agents/{agent_id}")["online"]


def test_an_offline_target_becomes_unreachable_and_never_runs_when_it_returns(broker, prefix, tmp_path):
    marker = tmp_path / "ran"
    flags = {"delivery_timeout": 2, "ack_grace": 0.5, "redeliver_interval": 0.5}
    with Fleet(tmp_path, broker.url, prefix, agents=1, master_flags=flags) as fleet:
        agent = fleet.agents[0]
        agent_id = agent.agent_id
        agent.stop()
        wait_until(lambda: not _agent_online(fleet, agent_id), 15, what="agent offline at the master")
        task_id = fleet.submit([agent_id], f"touch {marker}")
        summary = fleet.wait_task(task_id, 30)
        assert (summary["state"], summary["counts"]) == ("FAILED", {"UNREACHABLE": 1})
        assert "delivery_timeout" in fleet.task(task_id)["targets"][agent_id]["reason"]

        offset = len(agent.log())
        agent.start()
        agent.wait_online(20, after=offset)
        wait_until(lambda: _agent_online(fleet, agent_id), 15, what="agent online at the master")
        # Its copy waited in the master's queue for it to come online and was never sent
        # (flow control: the broker only gets copies for connected agents); now that the
        # target is final none is sent, and the agent never runs the script.
        target = fleet.task(task_id)["targets"][agent_id]
        assert (target["state"], target["acked"]) == ("UNREACHABLE", False)
        assert "never sent" in target["reason"]
        assert not marker.exists()
        assert not _events(fleet.master.db, "late_reject")


def test_an_agent_killed_mid_run_becomes_lost_and_its_late_report_revises_the_verdict(broker, prefix, tmp_path):
    pidfile = tmp_path / "script.pid"
    with Fleet(tmp_path, broker.url, prefix, agents=1, master_flags={"lost_grace": 2}) as fleet:
        agent = fleet.agents[0]
        agent_id = agent.agent_id
        task_id = fleet.submit([agent_id], f"echo $$ > {pidfile}; exec sleep 60")
        fleet.wait_progress(task_id, lambda p: p.get("target_state") == "RUNNING")
        try:
            agent.kill9()
            summary = fleet.wait_task(task_id, 30)
            assert (summary["state"], summary["counts"]) == ("FAILED", {"LOST": 1})
            offset = len(agent.log())
            agent.start()
            agent.wait_online(20, after=offset)
            # The restarted agent reports the interrupted run: LOST was provisional, the
            # agent's report replaces it, and the finished task says it was revised.
            wait_until(lambda: _events(fleet.master.db, "revised"), 20, what="the INTERRUPTED report")
            target = fleet.task(task_id)["targets"][agent_id]
            assert (target["state"], target["revised_from"]) == ("INTERRUPTED", "LOST")
            task = fleet.task(task_id)
            assert (task["state"], task["counts"]) == ("FAILED", {"INTERRUPTED": 1})
            assert task["revised_at"] is not None
        finally:
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


def test_master_killed_mid_rollout_resumes_and_every_target_runs_exactly_once(broker, prefix, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    script = f'echo run >> {markers}/$MSCHEDULE_TEST_AGENT; sleep 0.3'
    with Fleet(tmp_path, broker.url, prefix, agents=10) as fleet:
        task_id = fleet.submit(["all"], script, parallel=3)
        fleet.wait_progress(task_id, lambda p: p["counts"].get("SUCCEED", 0) >= 3)
        fleet.master.kill9()
        # The targets it had dispatched finish while it is dead (a restart takes > 1 s):
        # their results wait in its persistent session.
        fleet.master.restart()
        summary = fleet.wait_task(task_id, 60)
        assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 10})
        runs = {p.name: p.read_text().splitlines() for p in markers.iterdir()}
        assert runs == {str(i): ["run"] for i in range(10)}
        task = fleet.task(task_id)
        assert all(t["state"] == "SUCCEED" and t["code"] == 0 for t in task["targets"].values())
        assert "restored 1 unfinished task" in fleet.master.log()


def test_a_second_master_on_the_same_database_or_client_id_refuses_to_start(broker, prefix, tmp_path):
    first = start_master(tmp_path / "m1", broker.url, prefix, client_id="mschedule-master-dup")
    try:
        same_db = start_master(tmp_path / "m1", broker.url, prefix, wait=False)
        try:
            wait_until(lambda: not same_db.running(), 20, what="the second master to exit")
            assert same_db.proc.returncode == 2
            assert "owns the database" in same_db.log()
        finally:
            same_db.stop()
        same_id = start_master(tmp_path / "m2", broker.url, prefix, client_id="mschedule-master-dup", wait=False)
        try:
            wait_until(lambda: not same_id.running(), 20, what="the third master to exit")
            assert same_id.proc.returncode == 2
            assert "another mschedule-master" in same_id.log()
        finally:
            same_id.stop()
        assert first.running()
    finally:
        first.stop()


def test_sigterm_stops_the_master_cleanly_and_it_says_it_is_offline(broker, prefix, tmp_path):
    from harness.mqtt import Collector

    master = start_master(tmp_path / "m", broker.url, prefix)
    assert master.stop() == 0
    assert "shutting down" in master.log()
    with Collector(broker.url, [f"{prefix}/master/status"]) as c:
        (msg,) = c.wait_for(lambda m: m.retain, 10)
        assert b'"offline"' in msg.payload


def test_sigterm_stops_a_master_that_cannot_reach_its_broker(prefix, tmp_path):
    from harness.broker import free_port

    master = start_master(tmp_path / "m", f"mqtt://127.0.0.1:{free_port()}", prefix, wait=False)
    try:
        wait_until(lambda: "cannot reach broker" in master.log(), 20, what="a connection attempt")
    finally:
        assert master.stop(timeout=5) == 0


def test_a_broker_killed_mid_rollout_loses_nothing_and_runs_nothing_twice(own_broker, prefix, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    script = f'echo run >> {markers}/$MSCHEDULE_TEST_AGENT; sleep 0.3'
    with Fleet(tmp_path, own_broker.url, prefix, agents=5) as fleet:
        task_id = fleet.submit(["all"], script, parallel=2)
        fleet.wait_progress(task_id, lambda p: p["counts"].get("SUCCEED", 0) >= 1)
        own_broker.kill()  # sessions, queues and retained messages since the last snapshot: gone
        own_broker.start()
        summary = fleet.wait_task(task_id, 90)
        assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 5})
        runs = {p.name: p.read_text().splitlines() for p in markers.iterdir()}
        assert runs == {str(i): ["run"] for i in range(5)}


def test_an_agent_killed_mid_run_and_back_in_time_reports_it_interrupted(broker, prefix, tmp_path):
    pidfile = tmp_path / "script.pid"
    with Fleet(tmp_path, broker.url, prefix, agents=1, master_flags={"lost_grace": 60}) as fleet:
        agent = fleet.agents[0]
        agent_id = agent.agent_id
        task_id = fleet.submit([agent_id], f"echo $$ > {pidfile}; exec sleep 60")
        fleet.wait_progress(task_id, lambda p: p.get("target_state") == "RUNNING")
        try:
            agent.kill9()
            offset = len(agent.log())
            agent.start()
            agent.wait_online(20, after=offset)
            summary = fleet.wait_task(task_id, 30)
            assert (summary["state"], summary["counts"]) == ("FAILED", {"INTERRUPTED": 1})
        finally:
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


def test_a_frozen_agent_goes_offline_when_its_heartbeats_stop_and_returns_when_they_resume(broker, prefix, tmp_path):
    with Fleet(tmp_path, broker.url, prefix, agents=1) as fleet:
        agent = fleet.agents[0]
        agent_id = agent.agent_id
        os.kill(agent.pid, signal.SIGSTOP)  # its connection stays open: no will, just silence
        try:
            wait_until(lambda: not _agent_online(fleet, agent_id), 20, what="the silent agent marked offline")
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        wait_until(lambda: _agent_online(fleet, agent_id), 20, what="the agent back online")
