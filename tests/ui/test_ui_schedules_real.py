"""Schedules (issue 15) against a real master, broker and agents: the API, the real
`mschedule schedule ...` commands (child processes), and the daemon's own timer firing
an every-minute schedule on real time."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from harness.demo import cli_argv


def call(fleet, method: str, path: str, doc=None) -> tuple[int, dict]:
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(fleet.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def mschedule(fleet, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MSCHEDULE_MASTER": fleet.url}
    env.pop("MSCHEDULE_TOKEN", None)
    return subprocess.run([*cli_argv(), *args], env=env, capture_output=True, timeout=60)


def ok_json(fleet, *args: str):
    p = mschedule(fleet, *args, "--json")
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return json.loads(p.stdout)


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def job(fleet, script: str = "#!/bin/sh\necho scheduled\n", targets=("role=db",)) -> str:
    name = unique("job")
    body = {"script_text": script, "defaults": {"targets": list(targets)}}
    status, _ = call(fleet, "POST", f"/api/v1/jobs/{name}/versions", body)
    assert status == 201
    return name


def test_the_api_adds_previews_pauses_resumes_and_removes_a_schedule(ui_fleet):
    j = job(ui_fleet)
    name = unique("nightly")
    body = {"name": name, "job": f"{j}@1", "cron": "30 2 * * *", "tz": "Europe/Berlin", "overlap": "queue(2)",
            "misfire": "catch_up(3, 6h)", "overrides": {"timeout": 60}}  # fmt: skip
    status, doc = call(ui_fleet, "POST", "/api/v1/schedules", body)
    assert status == 201, doc
    assert (doc["job"], doc["version"], doc["overlap"], doc["misfire"]) == (j, 1, "queue(2)", "catch_up(3, 6h)")
    assert doc["next_fire"] > time.time() and not doc["paused"]
    status, again = call(ui_fleet, "POST", "/api/v1/schedules", body)
    assert status == 400 and again["field"] == "name" and "already exists" in again["error"]

    status, nxt = call(ui_fleet, "GET", f"/api/v1/schedules/{name}/next?n=3")
    times = nxt["next"]
    assert status == 200 and len(times) == 3 and times[0] == doc["next_fire"]
    assert {t % 3600 for t in times} == {1800} and all(b - a in (86400, 82800, 90000) for a, b in zip(times, times[1:], strict=False))

    status, paused = call(ui_fleet, "POST", f"/api/v1/schedules/{name}/pause", {})
    assert status == 200 and paused["paused"] and paused["next_fire"] is None
    status, resumed = call(ui_fleet, "POST", f"/api/v1/schedules/{name}/resume", {})
    assert status == 200 and not resumed["paused"] and resumed["since"] >= doc["since"]
    status, one = call(ui_fleet, "GET", f"/api/v1/schedules/{name}")
    assert status == 200 and one["next"][:3] == times and one["runs"] == [] and one["counts"] == {}
    assert name in [s["name"] for s in call(ui_fleet, "GET", "/api/v1/schedules")[1]["schedules"]]

    assert call(ui_fleet, "DELETE", f"/api/v1/schedules/{name}")[0] == 200
    status, gone = call(ui_fleet, "GET", f"/api/v1/schedules/{name}")
    assert status == 404 and gone["field"] == "schedule"


def test_the_api_refuses_bad_schedules_naming_the_field(ui_fleet):
    j = job(ui_fleet)
    cases = [
        ({"cron": "61 * * * *"}, 400, "cron", "Bad minute"),
        ({"cron": "* * * *"}, 400, "cron", "5 fields"),
        ({"tz": "Mars/Olympus"}, 400, "tz", "unknown time zone"),
        ({"overlap": "allow"}, 400, "overlap", "allow(N)"),
        ({"misfire": "catch_up(3)"}, 400, "misfire", "catch_up(N, DEADLINE)"),
        ({"job": f"{j}@x"}, 400, "version", "version must be"),
        ({"job": "no-such-job"}, 404, "job", "not found"),
        ({"job": f"{j}@7"}, 404, "job version", "not found"),
        ({"overrides": {"parallel": "x"}}, 400, "overrides.parallel", "parallel"),
        ({"colour": "red"}, 400, "colour", "unknown field"),
    ]
    for change, status, field, words in cases:
        body = {"name": unique("bad"), "job": j, "cron": "* * * * *", **change}
        got, doc = call(ui_fleet, "POST", "/api/v1/schedules", body)
        assert (got, doc["field"]) == (status, field) and words in doc["error"], (change, doc)


def test_the_cli_adds_lists_shows_previews_pauses_and_removes(ui_fleet):
    j = job(ui_fleet)
    name = unique("cli")
    added = ok_json(ui_fleet, "schedule", "add", name, "--job", j, "--cron", "@hourly", "--misfire", "skip",
                    "--overlap", "allow(2)", "-t", "role=web", "--timeout", "30")  # fmt: skip
    assert added["overrides"] == {"targets": ["role=web"], "timeout": 30.0} and added["version"] == "@default"
    p = mschedule(ui_fleet, "schedule", "list")
    assert p.returncode == 0 and name.encode() in p.stdout and b"allow(2)" in p.stdout
    nxt = ok_json(ui_fleet, "schedule", "next", name, "-n", "4")
    assert len(nxt) == 4 and all(t % 3600 == 0 for t in nxt)
    p = mschedule(ui_fleet, "schedule", "next", name, "-n", "2")
    assert p.returncode == 0 and p.stdout.count(b"UTC") == 2
    p = mschedule(ui_fleet, "schedule", "show", name)
    assert p.returncode == 0 and b"last runs" in p.stdout and f"{j}@default ".encode() in p.stdout
    assert ok_json(ui_fleet, "schedule", "pause", name)["paused"]
    p = mschedule(ui_fleet, "schedule", "resume", name)
    assert p.returncode == 0 and b"resumed" in p.stdout and b"next fire time" in p.stdout
    p = mschedule(ui_fleet, "schedule", "rm", name)
    assert p.returncode == 0 and b"removed" in p.stdout
    p = mschedule(ui_fleet, "schedule", "show", name)
    assert p.returncode == 2 and b"not found" in p.stderr and b"Traceback" not in p.stderr


def test_the_cli_refuses_a_bad_policy_with_a_clear_message(ui_fleet):
    j = job(ui_fleet)
    p = mschedule(ui_fleet, "schedule", "add", unique("bad"), "--job", j, "--cron", "* * * * *", "--overlap", "never")
    assert p.returncode == 2 and b"overlap must be one of skip, queue, queue(N), allow(N)" in p.stderr
    assert b"Traceback" not in p.stderr


def test_the_masters_own_timer_fires_an_every_minute_schedule_on_real_time(ui_fleet):
    j = job(ui_fleet, "#!/bin/sh\necho fired by the clock\n")
    name = unique("minutely")
    status, doc = call(ui_fleet, "POST", "/api/v1/schedules", {"name": name, "job": j, "cron": "* * * * *"})
    assert status == 201
    deadline = time.monotonic() + (doc["next_fire"] - time.time()) + 30
    runs: list = []
    while time.monotonic() < deadline:
        runs = call(ui_fleet, "GET", f"/api/v1/schedules/{name}/runs")[1]["runs"]
        if runs and runs[-1]["task_state"] in ("SUCCEED", "FAILED"):
            break
        time.sleep(0.5)
    call(ui_fleet, "POST", f"/api/v1/schedules/{name}/pause", {})
    assert runs and (runs[-1]["fire_time"], runs[-1]["outcome"]) == (doc["next_fire"], "fired"), runs
    task = call(ui_fleet, "GET", f"/api/v1/tasks/{runs[-1]['task_id']}?outputs=1")[1]
    assert task["state"] == "SUCCEED" and task["job"] == j and task["submitted_by"] == f"schedule:{name}"
    assert [t["output"] for t in task["targets"].values()] == ["fired by the clock\n"]
