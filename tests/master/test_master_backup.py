"""``mschedule-master backup`` while a real master runs tasks, and a restore of the copy."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from contextlib import closing

from harness.fleet import Fleet, start_master

SCRIPT = "head -c 100000 /dev/zero | tr '\\0' x; echo; echo done $MSCHEDULE_TEST_AGENT"


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_a_backup_taken_under_load_restores_to_a_master_that_serves_every_kept_task(broker, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    copy = tmp_path / "backup.db"
    with Fleet(tmp_path / "live", broker.url, prefix, agents=2) as fleet:
        done = [fleet.submit(["all"], SCRIPT, parallel=2) for _ in range(5)]
        for task_id in done:
            assert fleet.wait_task(task_id)["state"] == "SUCCEED"
        argv = [sys.executable, "-m", "mschedule_master", "backup", str(copy), "--db", str(fleet.master.db)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        during = [fleet.submit(["all"], SCRIPT, parallel=2) for _ in range(10)]  # the master keeps writing
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.startswith(f"backed up {fleet.master.db} to {copy}")
        for task_id in during:
            fleet.wait_task(task_id)

    with closing(sqlite3.connect(copy)) as c:
        assert c.execute("pragma integrity_check").fetchone() == ("ok",)
        kept = {r[0]: r[1] for r in c.execute("select id, target_count from tasks")}
    assert set(done) <= set(kept) and len(kept) >= len(done)
    assert not (tmp_path / "backup.db.partial").exists()

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(copy, restored / "master.db")
    master = start_master(restored, broker.url, f"t{uuid.uuid4().hex[:10]}/mschedule")
    try:
        for task_id, n in kept.items():
            task = get(f"{master.http_url}/api/v1/tasks/{task_id}")
            assert task["id"] == task_id and task["target_count"] == n == len(task["targets"])
        for task_id in done:
            task = get(f"{master.http_url}/api/v1/tasks/{task_id}?outputs=1")
            assert task["state"] == "SUCCEED"
            outputs = sorted(t["output"][-7:] for t in task["targets"].values())
            assert outputs == ["done 0\n", "done 1\n"]
    finally:
        master.stop()


def test_backup_of_a_missing_database_says_so(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "mschedule_master",
        "backup",
        str(tmp_path / "b.db"),
        "--db",
        str(tmp_path / "none.db"),
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 1 and "no database at" in p.stderr and "Traceback" not in p.stderr


def test_a_postgresql_database_is_sent_to_its_own_tools_without_showing_its_password(capsys):
    from mschedule_master import backup

    assert backup.main(["/tmp/x.db", "--db", "postgresql://u:s3cret@db.example/ms"]) == 1
    err = capsys.readouterr().err
    assert "pg_dump" in err and "s3cret" not in err and "u:***@db.example" in err
