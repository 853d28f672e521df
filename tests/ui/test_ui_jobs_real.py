"""Jobs (issue 12) against a real master, broker and three agents: versions, runs of
versions on different agents with the sha256 each agent reports, re-runs of failed
targets, concurrent saves, and a job run over MQTT with mosquitto_rr."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from harness.api import call


def wait_final(fleet, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = json.loads(call(fleet, "GET", f"/api/v1/tasks/{task_id}?outputs=1")[2])
        if task["state"] in ("SUCCEED", "FAILED", "KILLED"):
            return task
        time.sleep(0.1)
    raise TimeoutError(f"task {task_id} did not end: {task}")


@pytest.fixture(scope="module")
def jobs_fleet(broker, tmp_path_factory):
    from harness.demo import start_demo_fleet

    prefix = f"jobs{uuid.uuid4().hex[:8]}/mschedule"
    fleet = start_demo_fleet(tmp_path_factory.mktemp("jobs-fleet"), broker.url, prefix)
    fleet.prefix = prefix
    fleet.broker_url = broker.url
    try:
        yield fleet
    finally:
        fleet.stop()


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def api(fleet, method: str, path: str, doc=None) -> tuple[int, dict]:
    status, _, body = call(fleet, method, path, None if doc is None else json.dumps(doc).encode())
    return status, json.loads(body)


def save(fleet, name: str, script: str, **fields) -> tuple[int, dict]:
    return api(fleet, "POST", f"/api/v1/jobs/{name}/versions", {"script_text": script, **fields})


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_save_makes_v1_an_identical_save_nothing_and_an_edit_v2_with_a_diff(jobs_fleet):
    name = unique("report.sh")
    status, v1 = save(jobs_fleet, name, "echo one\n", description="report", defaults={"targets": ["all"]}, message="first")
    assert (status, v1["version"], v1["created"]) == (201, 1, True)
    assert v1["script_sha256"] == sha("echo one\n") and v1["author"].startswith("http:")

    status, again = save(jobs_fleet, name, "echo one\n", description="report", defaults={"targets": ["all"]})
    assert (status, again["version"], again["created"]) == (200, 1, False)

    status, v2 = save(jobs_fleet, name, "echo two\n", description="report", defaults={"targets": ["all"], "parallel": 2},
                      author="alice", message="second")  # fmt: skip
    assert (status, v2["version"], v2["created"], v2["author"]) == (201, 2, True, "alice")
    assert v2["content_sha256"] != v1["content_sha256"]

    status, d = api(jobs_fleet, "GET", f"/api/v1/jobs/{name}/diff?from=1&to=2")
    assert status == 200
    assert "-echo one" in d["diff"] and "+echo two" in d["diff"] and "+parallel = 2" in d["diff"]

    status, job = api(jobs_fleet, "GET", f"/api/v1/jobs/{name}")
    assert status == 200 and [v["version"] for v in job["versions"]] == [2, 1]
    assert [v["message"] for v in job["versions"]] == ["second", "first"]
    assert job["default_version"] == 2 and not job["pinned"]
    status, got = api(jobs_fleet, "GET", f"/api/v1/jobs/{name}/versions/1")
    assert status == 200 and got["script"] == "echo one\n"
    assert name in [j["name"] for j in api(jobs_fleet, "GET", "/api/v1/jobs")[1]["jobs"]]

    status, pinned = api(jobs_fleet, "POST", f"/api/v1/jobs/{name}/default", {"version": 1})
    assert status == 200 and pinned["default_version"] == 1 and pinned["pinned"]
    assert api(jobs_fleet, "GET", f"/api/v1/jobs/{name}/versions/default")[1]["version"] == 1


def test_unknown_jobs_and_versions_are_404_naming_them_and_bad_defaults_save_nothing(jobs_fleet):
    status, err = api(jobs_fleet, "GET", "/api/v1/jobs/no-such-job/versions/1")
    assert status == 404 and "no-such-job" in err["error"] and err["field"] == "job"
    name = unique("j")
    save(jobs_fleet, name, "true\n")
    status, err = api(jobs_fleet, "GET", f"/api/v1/jobs/{name}/versions/7")
    assert status == 404 and f"{name}@7" in err["error"]
    status, err = api(jobs_fleet, "POST", f"/api/v1/jobs/{name}/run", {"version": 9, "targets": ["all"]})
    assert status == 404 and f"{name}@9" in err["error"]

    status, err = save(jobs_fleet, name, "echo x\n", defaults={"parallel": 0})
    assert status == 400 and err["field"] == "parallel"
    status, err = save(jobs_fleet, name, "echo x\n", defaults={"colour": "red"})
    assert status == 400 and err["field"] == "colour"
    status, err = save(jobs_fleet, "../etc", "echo x\n")
    assert status in (400, 404)
    assert api(jobs_fleet, "GET", f"/api/v1/jobs/{name}")[1]["latest"] == 1  # nothing saved

    status, err = api(jobs_fleet, "POST", f"/api/v1/jobs/{name}/run", {})
    assert status == 400 and err["field"] == "targets"  # no default targets and none given


def test_versions_run_on_different_agents_and_history_shows_which_ran_where(jobs_fleet):
    name = unique("where.sh")
    one, two = "#!/bin/sh\necho version one\n", "#!/bin/sh\necho version two\n"
    save(jobs_fleet, name, one, defaults={"timeout": 30})
    save(jobs_fleet, name, two, defaults={"timeout": 30})
    a, b = (agent.agent_id for agent in jobs_fleet.agents[:2])

    status, t1 = api(jobs_fleet, "POST", f"/api/v1/jobs/{name}/run", {"version": 1, "targets": [a], "author": "bob"})
    assert status == 201 and (t1["job"], t1["job_version"], t1["script_sha256"]) == (name, 1, sha(one))
    status, t2 = api(jobs_fleet, "POST", f"/api/v1/jobs/{name}/run", {"targets": [b]})  # the default: v2
    assert status == 201 and t2["job_version"] == 2 and t2["name"] == f"{name}@2"
    done1, done2 = wait_final(jobs_fleet, t1["id"]), wait_final(jobs_fleet, t2["id"])
    assert done1["state"] == done2["state"] == "SUCCEED"
    assert done1["targets"][a]["output"] == "version one\n"
    assert done1["reported_sha256"] == {a: sha(one)} and done2["reported_sha256"] == {b: sha(two)}

    hist_a = api(jobs_fleet, "GET", f"/api/v1/agents/{a}/history")[1]["history"]
    hist_b = api(jobs_fleet, "GET", f"/api/v1/agents/{b}/history")[1]["history"]
    row_a = next(r for r in hist_a if r["task_id"] == t1["id"])
    row_b = next(r for r in hist_b if r["task_id"] == t2["id"])
    assert (row_a["job"], row_a["version"], row_a["state"], row_a["reported_sha256"]) == (name, 1, "SUCCEED", sha(one))
    assert (row_b["job"], row_b["version"], row_b["state"], row_b["reported_sha256"]) == (name, 2, "SUCCEED", sha(two))
    assert t2["id"] not in [r["task_id"] for r in hist_a]

    runs = api(jobs_fleet, "GET", f"/api/v1/jobs/{name}/runs")[1]["runs"]
    assert [(r["task_id"], r["version"], r["state"]) for r in runs] == [(t2["id"], 2, "SUCCEED"), (t1["id"], 1, "SUCCEED")]
    assert runs[1]["submitted_by"] == "bob" and runs[1]["counts"] == {"SUCCEED": 1}
    fp = api(jobs_fleet, "GET", f"/api/v1/jobs/{name}/versions/1/footprint")[1]
    assert fp["succeeded"] == [a] and fp["failed"] == []
    status, err = api(jobs_fleet, "GET", "/api/v1/agents/no-such-agent/history")
    assert status == 404


def test_rerun_of_failed_targets_runs_on_exactly_those(jobs_fleet, tmp_path):
    # parallel 1, abort at the first failure: the first target succeeds (it makes the
    # directory), the second fails, the third is never run (CANCELLED).
    lock = tmp_path / "first"
    name = unique("flaky.sh")
    save(jobs_fleet, name, f"mkdir {lock}\n", defaults={"targets": ["all"], "parallel": 1, "fail_count": 0})
    status, task = api(jobs_fleet, "POST", f"/api/v1/jobs/{name}/run", {})
    assert status == 201
    first = wait_final(jobs_fleet, task["id"])
    states = {a: t["state"] for a, t in first["targets"].items()}
    assert sorted(states.values()) == ["CANCELLED", "FAILED", "SUCCEED"], states
    not_ok = {a for a, s in states.items() if s != "SUCCEED"}

    status, again = api(jobs_fleet, "POST", f"/api/v1/tasks/{task['id']}/rerun", {"failed": True})
    assert status == 201, again
    assert again["rerun_of"] == task["id"] and again["job"] == name and again["job_version"] == 1
    rerun = wait_final(jobs_fleet, again["id"])
    assert set(rerun["targets"]) == not_ok

    status, whole = api(jobs_fleet, "POST", f"/api/v1/tasks/{task['id']}/rerun", {})
    assert status == 201 and whole["target_count"] == 3
    wait_final(jobs_fleet, whole["id"])
    status, err = api(jobs_fleet, "POST", "/api/v1/tasks/nope/rerun", {"failed": True})
    assert status == 404 and err["field"] == "task"


def test_concurrent_saves_of_one_job_lose_no_edit(jobs_fleet):
    name = unique("race")
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def writer(who: str) -> None:
        start.wait(10)
        for i in range(10):
            r = save(jobs_fleet, name, f"echo {who} {i}\n", author=who)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=writer, args=(w,)) for w in ("ann", "ben")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(status == 201 for status, _ in results), results
    assert sorted(doc["version"] for _, doc in results) == list(range(1, 21))
    job = api(jobs_fleet, "GET", f"/api/v1/jobs/{name}")[1]
    scripts = set()
    for v in job["versions"]:
        scripts.add(api(jobs_fleet, "GET", f"/api/v1/jobs/{name}/versions/{v['version']}")[1]["script"])
    assert scripts == {f"echo {w} {i}\n" for w in ("ann", "ben") for i in range(10)}


@pytest.mark.skipif(shutil.which("mosquitto_rr") is None, reason="mosquitto-clients not installed")
def test_a_submit_over_mqtt_can_name_a_job_and_version(jobs_fleet):
    name = unique("mqtt.sh")
    save(jobs_fleet, name, "echo from v1\n", defaults={"targets": ["role=db"]})
    save(jobs_fleet, name, "echo from v2\n", defaults={"targets": ["role=db"]})
    u = urlsplit(jobs_fleet.broker_url)
    hp = ["-h", u.hostname, "-p", str(u.port)]
    prefix = jobs_fleet.prefix
    answers = []
    for payload in ({"job": name, "version": 1}, {"job": name, "version": 5}, {"job": "no-such"}):
        rr = subprocess.run(
            ["mosquitto_rr", *hp, "-t", f"{prefix}/submit", "-e", f"{prefix}/submit/reply/jobs",
             "-m", json.dumps({"type": "submit", "payload": payload}), "-W", "30"],
            capture_output=True, text=True, timeout=40, check=True,
        )  # fmt: skip
        answers.append(json.loads(rr.stdout)["payload"])
    ok, bad_version, bad_job = answers
    assert ok["ok"], ok
    assert not bad_version["ok"] and f"{name}@5" in bad_version["error"] and bad_version["field"] == "job"
    assert not bad_job["ok"] and "no-such" in bad_job["error"]
    task = wait_final(jobs_fleet, ok["task_id"])
    (target,) = task["targets"].values()
    assert task["job_version"] == 1 and target["output"] == "from v1\n"
    assert task["reported_sha256"] == {target["agent_id"]: sha("echo from v1\n")}


def test_a_task_that_is_no_job_still_records_the_sha256_sent_and_reported(jobs_fleet):
    agent = jobs_fleet.agents[2].agent_id
    script = base64.b64encode(b"echo plain").decode()
    status, task = api(jobs_fleet, "POST", "/api/v1/tasks", {"targets": [agent], "script": script})
    assert status == 201
    done = wait_final(jobs_fleet, task["id"])
    assert done["job"] is None and done["script_sha256"] == sha("echo plain")
    assert done["reported_sha256"] == {agent: sha("echo plain")}
