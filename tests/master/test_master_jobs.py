"""Jobs (issue 12) in the master core: the sha256 check of results, the migration of a
database made before jobs, the job store's versions, and the job files of push/pull."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing

import pytest

from mschedule_agent import protocol
from mschedule_master import jobs
from mschedule_master import store as store_mod
from mschedule_master.jobstore import JobStore
from mschedule_master.models import NotFound
from mschedule_master.states import TargetState
from mschedule_master.store import Store

BACKENDS = ("sqlite", "postgresql")  # tests taking `rig` or `db` run on both stores (tests/conftest.py)

P = protocol


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the reported sha256


def test_a_result_reporting_another_scripts_sha256_is_a_failed_target_with_the_reason(rig):
    rig.register("a1")
    rig.register("a2")
    task_id = rig.submit(["a1", "a2"], script_text="echo hi", parallel=2).task_id
    good, bad = _sha(b"echo hi"), _sha(b"echo tampered")
    rig.from_agent("a1", P.Result(id=task_id, agent_id="a1", state="SUCCEED", code=0, script_sha256=good))
    rig.from_agent("a2", P.Result(id=task_id, agent_id="a2", state="SUCCEED", code=0, script_sha256=bad))
    targets = {t.agent_id: t for t in rig.store.targets(task_id)}
    assert targets["a1"].state is TargetState.SUCCEED and targets["a1"].reason == ""
    assert targets["a2"].state is TargetState.FAILED and targets["a2"].agent_state == "SUCCEED"
    assert "script mismatch" in targets["a2"].reason and bad in targets["a2"].reason and good in targets["a2"].reason
    reported = JobStore(rig.store).task_link(task_id).reported
    assert reported == {"a1": good, "a2": bad}


def test_a_result_without_a_sha256_from_an_older_agent_is_taken_as_it_says(rig):
    rig.register("a1")
    task_id = rig.submit(["a1"]).task_id
    rig.from_agent("a1", P.Result(id=task_id, agent_id="a1", state="SUCCEED", code=0))
    assert rig.store.get_target(task_id, "a1").state is TargetState.SUCCEED


# ------------------------------------------------------------------ migration


def test_a_database_from_before_jobs_opens_with_its_tasks_and_gains_the_job_tables(tmp_path, monkeypatch, rig_factory):
    path = tmp_path / "old.db"
    landed = store_mod._MIGRATIONS
    # the schema before jobs: every other landed migration (the master needs them), not jobs-1
    monkeypatch.setattr(store_mod, "_MIGRATIONS", tuple(m for m in landed if m[0] != "jobs-1"))
    old = rig_factory(path)
    old.register("a1")
    task_id = old.submit(["a1"], script_text="echo old").task_id
    old.from_agent("a1", P.Result(id=task_id, agent_id="a1", state="SUCCEED", code=0, output=b"old\n"))
    old.store.close()
    with closing(sqlite3.connect(path)) as c:
        assert "job" not in [r[1] for r in c.execute("pragma table_info(tasks)")]

    monkeypatch.setattr(store_mod, "_MIGRATIONS", landed)
    s = Store(str(path))
    try:
        task = s.get_task(task_id)
        assert task is not None and task.script == b"echo old" and task.state.value == "SUCCEED"
        assert task.targets[0].stdout == b"old\n"
        link = JobStore(s).task_link(task_id)
        assert (link.job, link.job_version, link.script_sha256) == (None, None, None)
        v, created = JobStore(s).save("j", jobs.make_content(b"true"), author="me", message="", now=1.0)
        assert created and v.version == 1
    finally:
        s.close()


# ------------------------------------------------------------------ store


def test_versions_are_immutable_and_kept_while_a_task_ran_them(rig):
    js = JobStore(rig.store)
    v1, _ = js.save("j", jobs.make_content(b"echo 1"), author="me", message="", now=1.0)
    rig.register("a1")
    task_id = rig.submit(["a1"], script_text="echo 1").task_id
    js.link_task(task_id, job="j", version=1, script_sha256=v1.script_sha256)
    with pytest.raises(rig.store.errors, match="never changes"):  # sqlite3.IntegrityError, or pgstore's DatabaseError
        rig.store._conn.execute("update job_versions set description='x' where job='j'")
    with pytest.raises(rig.store.errors, match="never deleted"):
        rig.store._conn.execute("delete from job_versions where job='j'")
    assert js.get("j", 1).content.script == b"echo 1"


def test_an_identical_save_creates_nothing_but_a_return_to_older_content_does(rig):
    js = JobStore(rig.store)
    a, b = jobs.make_content(b"a", defaults={"timeout": 5}), jobs.make_content(b"b")
    assert js.save("j", a, author="x", message="", now=1)[0].version == 1
    assert js.save("j", jobs.make_content(b"a", defaults={"timeout": 5.0}), author="x", message="", now=2)[1] is False
    assert js.save("j", b, author="x", message="", now=3)[0].version == 2
    assert js.save("j", a, author="x", message="", now=4)[0].version == 3
    with pytest.raises(NotFound, match="j@9"):
        js.get("j", 9)
    with pytest.raises(NotFound, match="'nope'"):
        js.get("nope")


def test_the_default_version_is_the_latest_unless_pinned(rig):
    js = JobStore(rig.store)
    for n in range(3):
        js.save("j", jobs.make_content(f"echo {n}".encode()), author="x", message="", now=n)
    assert js.get("j").version == 3
    js.set_default("j", 2)
    assert js.get("j").version == 2 and js.summary("j").effective_default == 2
    js.set_default("j", None)
    assert js.get("j").version == 3


# ------------------------------------------------------------------ domain


def test_a_run_takes_the_versions_defaults_and_the_overrides_win():
    content = jobs.make_content(b"echo", defaults={"targets": ["role=web"], "parallel": "50%", "timeout": 30})
    v = jobs.Version("deploy", 4, content, content.sha256, content.script_sha256, "me", "", 0.0)
    spec = jobs.build_submit(v, {"parallel": 2, "env": {"A": "1"}}, "req-1")
    assert (spec.targets, spec.parallel, spec.timeout, spec.env, spec.name) == (["role=web"], 2, 30.0, {"A": "1"}, "deploy@4")
    assert spec.script == b"echo" and spec.request_id == "req-1" and spec.job is None
    with pytest.raises(jobs.JobError) as info:
        jobs.build_submit(v, {"script_text": "rm -rf /"})
    assert info.value.field == "script_text"


def test_an_mqtt_job_submit_overrides_only_the_fields_it_changes():
    spec = P.Submit(job="deploy", parallel=3, env={"X": "y"})
    assert jobs.overrides_of(spec) == {"parallel": 3, "env": {"X": "y"}}


def test_push_reads_a_directory_and_pull_writes_it_back_identically(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "deploy.sh").write_bytes(b"#!/bin/sh\necho deploy\n")
    (src / "deploy.sh.toml").write_text(
        'description = "Roll the web tier"\ntargets = ["role=web"]\nparallel = "25%"\ntimeout = 300\n\n[env]\nRELEASE = "2026.12"\n'
    )
    (src / "uptime").write_bytes(b"uptime\n")
    (src / "README.md").write_text("not a job\n")
    found = {f.name: f.content for f in jobs.read_dir(src)}
    assert set(found) == {"deploy.sh", "uptime"}
    assert found["deploy.sh"].description == "Roll the web tier"
    assert found["deploy.sh"].defaults == {"targets": ["role=web"], "parallel": "25%", "timeout": 300.0, "env": {"RELEASE": "2026.12"}}

    out = tmp_path / "out"
    for name, content in found.items():
        jobs.write_job(out, name, content)
    again = {f.name: f.content for f in jobs.read_dir(out)}
    assert again == found
    assert {k: v.sha256 for k, v in again.items()} == {k: v.sha256 for k, v in found.items()}
    assert (out / "deploy.sh").read_bytes() == b"#!/bin/sh\necho deploy\n"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param('targets = ["all"]\nparallel = \n', 2, "unreadable", id="toml syntax"),
        pytest.param('targets = ["all"]\n\nparallel = 0\n', 3, "parallel", id="bad value"),
        pytest.param('description = "x"\ncolour = "red"\n', 2, "colour", id="unknown key"),
        pytest.param('timeout = "soon"\n', 1, "timeout", id="wrong type"),
    ],
)
def test_a_bad_defaults_file_is_an_error_naming_file_and_line(tmp_path, text, line, words):
    (tmp_path / "job.sh").write_bytes(b"true\n")
    (tmp_path / "job.sh.toml").write_text(text)
    with pytest.raises(jobs.JobFileError) as info:
        jobs.read_dir(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'job.sh.toml'}:{line}: ") and words in str(info.value)


def test_a_defaults_file_without_its_script_is_an_error(tmp_path):
    (tmp_path / "gone.sh.toml").write_text("timeout = 3\n")
    with pytest.raises(jobs.JobFileError, match="gone.sh"):
        jobs.read_dir(tmp_path)
