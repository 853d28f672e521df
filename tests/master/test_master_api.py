"""The HTTP API over the real MasterService (a real store, engine and registry on the
in-memory transport), served as the daemon serves it: the agent filters, the event stream's
ids, Last-Event-ID and ended/unknown tasks, kill of an ended task, and the targets preview.
The same routes against the in-memory double: tests/ui/test_ui_api.py."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from harness.api import LiveApi, call, serve_in_thread
from mschedule_agent import protocol as P


@pytest.fixture
def live(tmp_path, rig_factory) -> Iterator[tuple[Any, LiveApi]]:
    rig = rig_factory(tmp_path / "master.db")
    gen = serve_in_thread(rig.service)
    api = next(gen)
    try:
        api.call(lambda: rig.register("a-web1", hostname="web-1", role="web", zone="bj"))
        api.call(lambda: rig.register("a-web2", hostname="web-2", role="web", zone="sh"))
        api.call(lambda: rig.register("a-db1", hostname="db-1", role="db", zone="bj"))
        api.call(lambda: rig.register("a-db2", hostname="db-2", role="db", zone="sh"))
        api.call(lambda: rig.feed(rig.incoming(rig.topics.status("a-db2"), P.Offline(id="a-db2", reason="shutdown"))))
        yield rig, api
    finally:
        gen.close()
        rig.store.close()


def get(api: LiveApi, path: str) -> tuple[int, Any]:
    status, _, body = call(api, "GET", path)
    return status, json.loads(body)


def post(api: LiveApi, path: str, doc: Any = None) -> tuple[int, Any]:
    status, _, body = call(api, "POST", path, json.dumps(doc).encode() if doc is not None else None)
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("", ["a-db1", "a-db2", "a-web1", "a-web2"]),
        ("?online=true", ["a-db1", "a-web1", "a-web2"]),
        ("?online=false", ["a-db2"]),
        ("?label=role=db", ["a-db1", "a-db2"]),
        ("?label=zone=sh&online=true", ["a-web2"]),
        ("?hostname=web-*", ["a-web1", "a-web2"]),
        ("?hostname=db-?&label=zone=bj", ["a-db1"]),
        ("?label=role=nosuch", []),
    ],
)
def test_the_real_services_agent_filters(live, query, ids):
    _, api = live
    status, doc = get(api, f"/api/v1/agents{query}")
    assert status == 200 and [a["id"] for a in doc["agents"]] == ids


def test_targets_resolve_previews_what_a_task_would_run_on_and_runs_nothing(live):
    rig, api = live
    status, doc = post(api, "/api/v1/targets/resolve", {"targets": ["role=web", "db-1"]})
    assert status == 200, doc
    assert (doc["count"], [a["hostname"] for a in doc["agents"]]) == (3, ["db-1", "web-1", "web-2"])
    assert doc["targets"] == ["role=web", "db-1"] and rig.service.tasks() == []
    status, doc = post(api, "/api/v1/targets/resolve", {"targets": ["role=nosuch"]})
    assert (status, doc["field"]) == (400, "targets") and "role=nosuch" in doc["error"]
    for bad in ({}, {"targets": []}, {"targets": "all"}, {"targets": ["all"], "parallel": 2}, ["all"]):
        status, doc = post(api, "/api/v1/targets/resolve", bad)
        assert status == 400, (bad, doc)


def test_kill_of_an_ended_task_is_a_conflict_and_kill_needs_no_body(live):
    rig, api = live
    status, task = post(api, "/api/v1/tasks", {"targets": ["db-1"], "script_text": "sleep 9"})
    assert status == 201
    tid = task["id"]
    api.call(lambda: rig.from_agent("a-db1", P.Started(id=tid, agent_id="a-db1", started_at=rig.clock())))
    status, killed = post(api, f"/api/v1/tasks/{tid}/kill")  # no body, no Content-Type
    assert status == 202 and killed["id"] == tid
    api.call(lambda: rig.from_agent("a-db1", P.Result(id=tid, agent_id="a-db1", state="KILLED", code=143, signal=15)))
    assert get(api, f"/api/v1/tasks/{task['id']}")[1]["state"] == "KILLED"
    status, doc = post(api, f"/api/v1/tasks/{task['id']}/kill")
    assert (status, doc["field"]) == (409, "task") and "already ended (KILLED)" in doc["error"]
    assert post(api, "/api/v1/tasks/nosuch/kill")[0] == 404


class Stream:
    """``GET /api/v1/events`` read event by event (``(id, kind, data)``)."""

    def __init__(self, api: LiveApi, query: str = "", last_event_id: str | None = None) -> None:
        url = urllib.parse.urlsplit(api.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.conn.request("GET", f"/api/v1/events{query}", headers=headers)
        self.resp = self.conn.getresponse()

    def next(self) -> tuple[str | None, str, dict[str, Any]]:
        event_id, kind, data = None, "message", ""
        for _ in range(1000):
            line = self.resp.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if not line and data:
                return event_id, kind, json.loads(data)
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        raise AssertionError("no event in 1000 lines")

    def close(self) -> None:
        self.conn.close()


def test_an_event_stream_of_an_unknown_task_is_a_404(live):
    _, api = live
    s = Stream(api, "?task=nosuch")
    try:
        assert s.resp.status == 404 and json.loads(s.resp.read())["field"] == "task"
    finally:
        s.close()


def test_a_subscriber_to_an_ended_task_gets_its_final_state_at_once(live):
    rig, api = live
    _, task = post(api, "/api/v1/tasks", {"targets": ["db-1"], "script_text": "exit 3"})
    api.call(lambda: rig.from_agent("a-db1", P.Result(id=task["id"], agent_id="a-db1", state="FAILED", code=3)))
    s = Stream(api, f"?task={task['id']}")
    try:
        assert s.next()[1] == "hello"
        _, kind, ev = s.next()
        assert (kind, ev["task_id"], ev["data"]["state"], ev["data"]["final"]) == ("task", task["id"], "FAILED", True)
        assert ev["data"]["counts"] == {"FAILED": 1}
    finally:
        s.close()


def test_a_reconnect_with_last_event_id_loses_nothing(live):
    rig, api = live
    _, task = post(api, "/api/v1/tasks", {"targets": ["role=web"], "script_text": "true", "parallel": 2})
    tid = task["id"]
    s = Stream(api, f"?task={tid}")
    try:
        assert s.next()[1] == "hello"
        api.call(lambda: rig.from_agent("a-web1", P.Started(id=tid, agent_id="a-web1", started_at=rig.clock())))
        first_id, kind, _ = s.next()
        assert first_id and kind in ("target", "task")
    finally:
        s.close()  # gone, and meanwhile the task goes on
    api.call(lambda: rig.from_agent("a-web1", P.Result(id=tid, agent_id="a-web1", state="SUCCEED", code=0)))
    api.call(lambda: rig.from_agent("a-web2", P.Result(id=tid, agent_id="a-web2", state="SUCCEED", code=0)))
    again = Stream(api, f"?task={tid}", last_event_id=first_id)
    try:
        assert again.next()[1] == "hello"
        seen, ids = [], [first_id]
        for _ in range(50):
            event_id, kind, ev = again.next()
            if event_id is None:  # the ended task's final state, after the missed events
                break
            ids.append(event_id)
            seen.append((kind, ev["data"].get("agent_id"), ev["data"].get("state")))
        assert ("target", "a-web1", "SUCCEED") in seen and ("target", "a-web2", "SUCCEED") in seen, seen
        assert ("task", None, "SUCCEED") in seen, seen
        numbers = [int(i.rsplit("-", 1)[1]) for i in ids]
        assert numbers == sorted(set(numbers)), ids  # in order, none twice
        assert (kind, ev["data"]["state"], ev["data"]["final"]) == ("task", "SUCCEED", True)
    finally:
        again.close()


def test_a_last_event_id_the_master_cannot_replay_gets_a_resync(live):
    _, api = live
    s = Stream(api, "", last_event_id="0123456789ab-5")  # another run's id (a master restart)
    try:
        assert s.next()[1] == "hello"
        assert s.next()[1] == "resync"
    finally:
        s.close()


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"parallel": 0}, "parallel", "parallel must be an integer >= 1 or 'N%'"),
        ({"fail_count": -2}, "fail_count", "fail_count must be >= -1 (-1 = no limit)"),
        ({"timeout": -1}, "timeout", "timeout must be >= 0 (0 = no limit)"),
    ],
)
def test_a_refused_submit_names_its_field_once(live, fields, field, message):
    """The page shows the message under the form: "parallel must be ...", not "parallel: parallel must be ..."."""
    _, api = live
    status, doc = post(api, "/api/v1/tasks", {"targets": ["db-1"], "script_text": "true", **fields})
    assert (status, doc["field"], doc["error"]) == (400, field, message)
