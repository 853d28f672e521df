"""HA masters on one PostgreSQL (issue 18): one leads, the others stand by, serve the API
and take submissions that the leader runs."""

from __future__ import annotations

import re
import urllib.request

import pytest

from harness.ha import HaFleet


@pytest.fixture
def ha(tmp_path, broker, prefix, postgres):
    with HaFleet(tmp_path, broker.url, prefix, postgres.create_database(), masters=2, agents=2) as fleet:
        yield fleet


def test_one_master_leads_and_a_standby_takes_a_submission_that_runs_once(ha, tmp_path):
    leader = ha.leader()
    (standby,) = ha.standbys()
    assert leader is ha.masters[0] and standby is ha.masters[1]
    lead = ha.readyz(standby)["leadership"]
    leading = ha.readyz(leader)["leadership"]
    assert lead["role"] == "standby" and lead["epoch"] == leading["epoch"] and lead["leader"] == leading["instance"]
    marker = tmp_path / "ran"
    task_id = ha.submit(standby, ["all"], f"echo $MSCHEDULE_TEST_AGENT >> {marker}")
    task = ha.wait_state(task_id, "SUCCEED", timeout=30)
    assert task["counts"] == {"SUCCEED": 2}
    assert sorted(marker.read_text().split()) == ["0", "1"]  # each agent once
    assert "from a standby: started" in leader.log()
    with urllib.request.urlopen(f"{standby.http_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    gauges = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("mschedule_master_lea"))
    assert float(gauges["mschedule_master_leader"]) == 0 and float(gauges["mschedule_master_leadership_epoch"]) == leading["epoch"]
    with urllib.request.urlopen(f"{leader.http_url}/metrics", timeout=5) as r:
        assert "mschedule_master_leader 1.0" in r.read().decode()


def test_a_leader_cut_from_postgresql_steps_down_and_a_standby_leads(ha, tmp_path):
    import psycopg

    from harness.procs import wait_until

    old = ha.leader()
    (standby,) = ha.standbys()
    instance = ha.readyz(old)["leadership"]["instance"]
    with psycopg.connect(ha.db, autocommit=True) as admin:  # the database drops the leader's lock session
        (n,) = admin.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = %s",
            (f"mschedule-master-lead {instance[:12]}",),
        ).fetchone()
    assert n == 1
    wait_until(lambda: not old.running(), timeout=15, what="the cut-off leader to step down")
    # It notices on its lock connection, or (on a loaded machine, when the standby was
    # quicker) at its next write, by the epoch the standby's takeover raised: both step down.
    assert old.proc.returncode == 1
    assert re.search(r"stepping down: (the lock connection failed|leadership lost: .* the database is at epoch)",
                     old.log()), old.log()[-2000:]  # fmt: skip
    assert ha.leader(timeout=15) is standby
    marker = tmp_path / "after"
    task_id = ha.submit(standby, ["all"], f"echo x >> {marker}")
    assert ha.wait_state(task_id, "SUCCEED", timeout=30)["counts"] == {"SUCCEED": 2}
    assert marker.read_text().split() == ["x", "x"]
