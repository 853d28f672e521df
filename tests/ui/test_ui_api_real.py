"""The HTTP API of a real master (real store, engine, broker and agents): the routes and
error paths that depend on the real Service, not on the in-memory one."""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from harness.api import call
from mschedule_master import api


def submit(fleet, **fields) -> dict:
    status, _, body = call(fleet, "POST", "/api/v1/tasks", json.dumps(fields).encode())
    assert status == 201, body
    return json.loads(body)


def wait_final(fleet, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = json.loads(call(fleet, "GET", f"/api/v1/tasks/{task_id}?outputs=1")[2])
        if task["state"] in ("SUCCEED", "FAILED", "KILLED"):
            return task
        time.sleep(0.1)
    raise TimeoutError(f"task {task_id} did not end: {task}")


def test_design_document_routes(ui_fleet):
    status, _, body = call(ui_fleet, "GET", "/task/targets")
    assert status == 200 and sorted(json.loads(body)) == sorted(a.agent_id for a in ui_fleet.agents)
    doc = {"script": base64.b64encode(b"echo legacy").decode(), "timeout": 30, "parallel": 1, "fail_rate": 0,
           "fail_count": -1, "targets": [ui_fleet.agents[0].agent_id]}  # fmt: skip
    status, headers, body = call(ui_fleet, "POST", "/task", json.dumps(doc).encode())
    assert status == 201 and headers["Location"] == f"/api/v1/tasks/{body.decode()}"
    task = wait_final(ui_fleet, body.decode())
    assert task["state"] == "SUCCEED"
    (target,) = task["targets"].values()
    assert target["output"] == "legacy\n" and target["hostname"]


def test_task_detail_output_route_and_binary_output(ui_fleet):
    task = submit(ui_fleet, targets=["role=db"], script_text="printf 'bin\\377\\000'; echo oops >&2; exit 4")
    task = wait_final(ui_fleet, task["id"])
    assert task["state"] == "FAILED" and task["counts"] == {"FAILED": 1}
    agent_id, target = next(iter(task["targets"].items()))
    assert target["code"] == 4 and target["output_encoding"] == "base64"
    assert base64.b64decode(target["output"]) == b"bin\xff\x00" and target["stderr"] == "oops\n"
    assert target["started_at"] <= target["finished_at"] and target["duration"] >= 0
    base = f"/api/v1/tasks/{task['id']}/targets/{agent_id}/output"
    status, headers, body = call(ui_fleet, "GET", base)
    assert status == 200 and body == b"bin\xff\x00" and headers["X-Mschedule-Exit-Code"] == "4"
    assert call(ui_fleet, "GET", base + "?stream=stderr")[2] == b"oops\n"
    status, _, body = call(ui_fleet, "GET", f"/api/v1/tasks/{task['id']}/targets/nosuch/output")
    assert status == 404 and json.loads(body)["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("GET", "/api/v1/tasks/nosuch", None, 404, "task"),
        ("POST", "/api/v1/tasks/nosuch/kill", None, 404, "task"),
        ("GET", "/api/v1/agents/nosuch", None, 404, "agent"),
        ("POST", "/api/v1/tasks", b"{not json", 400, "body"),
        ("POST", "/api/v1/tasks", b'{"script_text": "x", "targets": ["role=nosuch"]}', 400, "targets"),
        ("POST", "/api/v1/tasks", b'{"script_text": "x", "targets": ["all"], "parallel": "0%"}', 400, "parallel"),
        ("POST", "/api/v1/tasks", b'{"script_text": "x", "targets": ["all"], "fail_rate": -2}', 400, "fail_rate"),
        ("POST", "/task", b'{"script": "not base64!", "targets": ["all"]}', 400, "script"),
        ("GET", "/api/v1/tasks?state=BOGUS", None, 400, "state"),
    ],
)
def test_error_paths_against_the_real_service(ui_fleet, method, path, body, status, field):
    got, _, raw = call(ui_fleet, method, path, body)
    doc = json.loads(raw)
    assert (got, doc["field"]) == (status, field), doc


def test_body_too_large_is_refused_before_reading_it_all(ui_fleet):
    url = urllib.parse.urlsplit(ui_fleet.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        size = api.MAX_BODY_BYTES + 1
        conn.putrequest("POST", "/api/v1/tasks")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        try:
            conn.send(b"x" * size)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before taking it all
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["field"] == "body"
    finally:
        conn.close()


def test_event_stream_reports_a_real_task(ui_fleet):
    url = urllib.parse.urlsplit(ui_fleet.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", "/api/v1/events")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline() == b"retry: 2000\n" and resp.readline() == b"event: hello\n"
        task = submit(ui_fleet, targets=["role=db"], script_text="true")
        kinds, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            line = resp.readline().decode()
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                if ev.get("task_id") == task["id"]:
                    kinds.append((ev["kind"], ev["data"].get("state")))
                    if ev["kind"] == "task" and ev["data"].get("state") == "SUCCEED":
                        break
        assert ("task", "SUCCEED") in kinds and any(k == "target" for k, _ in kinds), kinds
    finally:
        conn.close()


def test_tasks_listing_is_newest_first_without_scripts(ui_fleet):
    ids = [submit(ui_fleet, targets=["role=db"], script_text=f"echo {i}", name=f"list-{i}")["id"] for i in range(3)]
    for i in ids:
        wait_final(ui_fleet, i)
    page = json.loads(call(ui_fleet, "GET", "/api/v1/tasks?limit=3")[2])
    assert [t["id"] for t in page["tasks"]] == ids[::-1]
    assert all("script" not in t and "targets" not in t for t in page["tasks"])
    assert page["next_offset"] == 3
    page2 = json.loads(call(ui_fleet, "GET", "/api/v1/tasks?limit=2&offset=1")[2])
    assert [t["id"] for t in page2["tasks"]] == [ids[1], ids[0]]
