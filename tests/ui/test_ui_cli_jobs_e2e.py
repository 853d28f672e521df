"""The real `mschedule job ...`, `rerun` and `history` commands (child processes) against a
real master, broker and agents (issue 12)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid

from harness.demo import cli_argv


def mschedule(fleet, *args: str, timeout: float = 90, stdin: bytes | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    env = {**os.environ, "MSCHEDULE_MASTER": fleet.url, **(env or {})}
    env.pop("MSCHEDULE_TOKEN", None)
    return subprocess.run([*cli_argv(), *args], env=env, capture_output=True, timeout=timeout, input=stdin)


def ok_json(fleet, *args: str):
    p = mschedule(fleet, *args, "--json")
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return json.loads(p.stdout)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_job_save_diff_show_default_and_runs_of_two_versions_on_two_agents(ui_fleet, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:6]}.sh"
    a, b = (x.agent_id for x in ui_fleet.agents[:2])
    f = tmp_path / "job.sh"
    f.write_bytes(b"#!/bin/sh\necho v1 here\n")
    v1 = ok_json(ui_fleet, "job", "save", name, str(f), "-m", "first", "--timeout", "30", "--description", "demo")
    assert (v1["version"], v1["created"]) == (1, True)
    again = ok_json(ui_fleet, "job", "save", name, str(f))
    assert (again["version"], again["created"]) == (1, False)
    f.write_bytes(b"#!/bin/sh\necho v2 here\n")
    p = mschedule(ui_fleet, "job", "save", name, str(f), "-m", "second")
    assert p.returncode == 0 and b"version 2 saved" in p.stdout

    shown = ok_json(ui_fleet, "job", "show", f"{name}@2")
    assert shown["defaults"] == {"timeout": 30.0} and shown["description"] == "demo"  # kept from v1
    assert shown["message"] == "second" and "@" in shown["author"]
    p = mschedule(ui_fleet, "job", "diff", name, "1", "2")
    assert p.returncode == 0 and b"-echo v1 here" in p.stdout and b"+echo v2 here" in p.stdout
    assert name in [j["name"] for j in ok_json(ui_fleet, "job", "list")]

    run1 = ok_json(ui_fleet, "job", "run", f"{name}@1", "-t", a)
    run2 = ok_json(ui_fleet, "job", "run", name, "-t", b)
    assert run1["state"] == run2["state"] == "SUCCEED"
    assert run1["targets"][a]["output"] == "v1 here\n" and run2["targets"][b]["output"] == "v2 here\n"

    hist = ok_json(ui_fleet, "job", "history", name)
    assert [v["version"] for v in hist["job"]["versions"]] == [2, 1]
    assert [(r["task_id"], r["version"]) for r in hist["runs"]] == [(run2["id"], 2), (run1["id"], 1)]
    on_a = {r["task_id"]: r for r in ok_json(ui_fleet, "history", a)}
    on_b = {r["task_id"]: r for r in ok_json(ui_fleet, "history", b)}
    assert on_a[run1["id"]]["reported_sha256"] == sha(b"#!/bin/sh\necho v1 here\n") and run2["id"] not in on_a
    assert on_b[run2["id"]]["reported_sha256"] == sha(b"#!/bin/sh\necho v2 here\n")
    out = mschedule(ui_fleet, "history", a).stdout.decode()
    assert f"{name}@1" in out and run1["id"] in out

    assert ok_json(ui_fleet, "job", "default", name, "1")["default_version"] == 1
    assert ok_json(ui_fleet, "job", "show", name)["version"] == 1
    assert ok_json(ui_fleet, "job", "default", name, "latest")["default_version"] == 2

    p = mschedule(ui_fleet, "job", "show", f"{name}@9")
    assert p.returncode == 2 and f"{name}@9" in p.stderr.decode() and b"Traceback" not in p.stderr


def test_push_then_pull_round_trips_a_directory_and_a_bad_defaults_file_saves_nothing(ui_fleet, tmp_path):
    tag = uuid.uuid4().hex[:6]
    src = tmp_path / "jobs"
    src.mkdir()
    files = {
        f"deploy-{tag}.sh": b"#!/bin/sh\necho deploying\n",
        f"deploy-{tag}.sh.toml": b'description = "roll the web tier"\ntargets = ["role=web"]\nparallel = "50%"\n'
        b'\n[env]\nRELEASE = "1.2"\n',
        f"uptime-{tag}": b"uptime\n",
        "README.md": b"# our jobs\n",
    }
    for fname, data in files.items():
        (src / fname).write_bytes(data)
    pushed = ok_json(ui_fleet, "job", "push", str(src))
    assert sorted((r["job"], r["version"], r["created"]) for r in pushed) == [
        (f"deploy-{tag}.sh", 1, True), (f"uptime-{tag}", 1, True)]  # fmt: skip
    assert all(not r["created"] for r in ok_json(ui_fleet, "job", "push", str(src)))  # nothing changed

    out = tmp_path / "pulled"
    for job in (f"deploy-{tag}.sh", f"uptime-{tag}"):
        ok_json(ui_fleet, "job", "pull", job, str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(n for n in files if n != "README.md")
    for fname in ("deploy-" + tag + ".sh", "uptime-" + tag):
        assert (out / fname).read_bytes() == files[fname]
    again = ok_json(ui_fleet, "job", "push", str(out))
    assert all(not r["created"] for r in again)  # what was pulled is exactly what is stored

    task = ok_json(ui_fleet, "job", "run", f"deploy-{tag}.sh")
    assert task["state"] == "SUCCEED" and task["target_count"] == 2  # its default targets: role=web

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / f"a-{tag}.sh").write_bytes(b"true\n")
    (bad / f"b-{tag}.sh").write_bytes(b"true\n")
    (bad / f"b-{tag}.sh.toml").write_bytes(b'targets = ["all"]\nparallel = [\n')
    p = mschedule(ui_fleet, "job", "push", str(bad))
    err = p.stderr.decode()
    assert p.returncode == 2 and f"b-{tag}.sh.toml:2:" in err and "nothing saved" in err, err
    assert mschedule(ui_fleet, "job", "show", f"a-{tag}.sh").returncode == 2  # not saved either


def test_rerun_failed_runs_only_the_failed_and_not_run_targets(ui_fleet, tmp_path):
    lock = tmp_path / "first"
    p = mschedule(ui_fleet, "run", "-t", "all", "--parallel", "1", "--fail-count", "0", "--json", "-c", f"mkdir {lock}")
    assert p.returncode == 1, p.stderr
    first = json.loads(p.stdout)
    not_ok = {a for a, t in first["targets"].items() if t["state"] != "SUCCEED"}
    assert len(not_ok) == 2
    rerun = ok_json(ui_fleet, "rerun", first["id"], "--failed", "--no-wait")
    assert rerun["rerun_of"] == first["id"] and rerun["target_count"] == 2
    p = mschedule(ui_fleet, "status", rerun["id"], "--json")
    assert set(json.loads(p.stdout)["targets"]) == not_ok
    p = mschedule(ui_fleet, "rerun", "no-such-task")
    assert p.returncode == 2 and "no-such-task" in p.stderr.decode()


def test_job_run_asks_before_more_targets_than_its_limit_unless_yes_as_run_does(ui_fleet, tmp_path):
    name = f"wide-{uuid.uuid4().hex[:6]}.sh"
    f = tmp_path / "job.sh"
    f.write_bytes(b"#!/bin/sh\necho wide\n")
    ok_json(ui_fleet, "job", "save", name, str(f), "-t", "role=web")  # its default targets: 2 agents

    def runs() -> int:
        return len(ok_json(ui_fleet, "job", "history", name)["runs"])

    for how in (["--confirm-over", "1"], ["-t", "all", "--confirm-over", "2"]):  # its own targets; -t's
        p = mschedule(ui_fleet, "job", "run", name, *how, stdin=b"")  # no terminal: nobody to ask
        err = p.stderr.decode()
        assert p.returncode == 2 and "more than" in err and "add --yes" in err, (how, p.stdout, err)
    assert runs() == 0
    p = mschedule(ui_fleet, "job", "run", name, "--no-wait", stdin=b"", env={"MSCHEDULE_CONFIRM_OVER": "1"})
    assert p.returncode == 2 and b"add --yes" in p.stderr and runs() == 0
    assert ok_json(ui_fleet, "job", "run", name, "--confirm-over", "1", "--yes")["state"] == "SUCCEED"
    assert ok_json(ui_fleet, "job", "run", name, "--confirm-over", "2")["state"] == "SUCCEED"  # 2: not over
    assert runs() == 2
