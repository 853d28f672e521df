"""The HTTP API against a real in-memory Service: every route, every error path."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from mschedule_master import api, openapi, sse
from mschedule_master.states import TargetState

TOKEN = "s3cret-token"


@contextlib.asynccontextmanager
async def client(service, token=None):
    async with TestClient(TestServer(api.create_app(service, token=token))) as c:
        yield c


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def post_json(c, path, doc, **kw):
    body = io.BytesIO(json.dumps(doc).encode())
    return await c.post(path, data=body, headers={"Content-Type": "application/json"}, **kw)


async def new_task(c, targets=("web1",)) -> str:
    r = await post_json(c, "/api/v1/tasks", {"script_text": "x", "targets": list(targets)})
    return (await r.json())["id"]


# ----------------------------------------------------------------- the design document's routes


def test_legacy_targets_lists_every_agent_id(fake_service):
    async def go():
        async with client(fake_service) as c:
            r = await c.get("/task/targets")
            assert r.status == 200
            assert sorted(await r.json()) == ["db1", "web1", "web2"]

    run(go())


def test_legacy_submit_takes_base64_script_and_answers_201_with_task_id(fake_service):
    async def go():
        async with client(fake_service) as c:
            body = {"script": b64("echo hello"), "timeout": 30, "parallel": 1, "fail_rate": 0, "fail_count": -1,
                    "targets": ["web1", "web2"]}  # fmt: skip
            r = await post_json(c, "/task", body)
            assert r.status == 201
            task_id = await r.text()
            assert task_id in fake_service.task_by_id
            assert fake_service.task_by_id[task_id].script == b"echo hello"
            assert r.headers["Location"] == f"/api/v1/tasks/{task_id}"

    run(go())


# ----------------------------------------------------------------- submit


def test_submit_creates_task_and_returns_it(fake_service):
    async def go():
        async with client(fake_service) as c:
            r = await post_json(c, "/api/v1/tasks", {"script_text": "uname -a", "targets": ["role=web"],
                                                     "parallel": "50%", "fail_count": 1})  # fmt: skip
            assert r.status == 201, await r.text()
            doc = await r.json()
            assert doc["state"] == "WAITING"
            assert doc["parallel"] == "50%" and doc["fail_count"] == 1
            assert sorted(doc["targets"]) == ["web1", "web2"]
            assert doc["script"] == "uname -a" and doc["script_encoding"] == "utf-8"
            assert r.headers["Location"] == f"/api/v1/tasks/{doc['id']}"

    run(go())


BAD_SUBMITS = [
    ("not json", b"{nope", "body"),
    ("empty body", b"", "body"),
    ("json array", b"[1, 2]", "payload"),
    ("deeply nested", b"[" * 200_000 + b"]" * 200_000, "body"),
    ("not utf-8", b'{"script_text": "\xff", "targets": ["web1"]}', "body"),
    ("json string", b'"just a string"', "payload"),
    ("null targets", b'{"script_text": "x", "targets": null}', "targets"),
    ("targets not a list", b'{"script_text": "x", "targets": "web1"}', "targets"),
    ("env not strings", b'{"script_text": "x", "targets": ["web1"], "env": {"A": 1}}', "env.A"),
    ("unknown field", b'{"script_text": "x", "targets": ["web1"], "bogus": 1}', "bogus"),
    ("missing targets", b'{"script_text": "x"}', "targets"),
    ("empty targets", b'{"script_text": "x", "targets": []}', "targets"),
    ("no script", b'{"targets": ["web1"]}', "script"),
    ("both scripts", json.dumps({"script": b64("x"), "script_text": "x", "targets": ["web1"]}).encode(), "script"),
    ("bad base64", b'{"script": "%%%", "targets": ["web1"]}', "script"),
    ("parallel zero", b'{"script_text": "x", "targets": ["web1"], "parallel": 0}', "parallel"),
    ("parallel words", b'{"script_text": "x", "targets": ["web1"], "parallel": "lots"}', "parallel"),
    ("parallel 150%", b'{"script_text": "x", "targets": ["web1"], "parallel": "150%"}', "parallel"),
    ("fail_rate 2", b'{"script_text": "x", "targets": ["web1"], "fail_rate": 2}', "fail_rate"),
    ("fail_count -5", b'{"script_text": "x", "targets": ["web1"], "fail_count": -5}', "fail_count"),
    ("fail_count text", b'{"script_text": "x", "targets": ["web1"], "fail_count": "3"}', "fail_count"),
    ("timeout negative", b'{"script_text": "x", "targets": ["web1"], "timeout": -1}', "timeout"),
    ("on_abort bogus", b'{"script_text": "x", "targets": ["web1"], "on_abort": "panic"}', "on_abort"),
    ("unknown target", b'{"script_text": "x", "targets": ["nosuch"]}', "targets"),
]


@pytest.mark.parametrize("path", ["/api/v1/tasks", "/task"])
@pytest.mark.parametrize(("case", "body", "field"), BAD_SUBMITS, ids=[c[0] for c in BAD_SUBMITS])
def test_bad_submission_is_a_400_naming_the_field(fake_service, path, case, body, field):
    async def go():
        async with client(fake_service) as c:
            r = await c.post(path, data=body, headers={"Content-Type": "application/json"})
            assert r.status == 400, await r.text()
            doc = await r.json()
            assert doc["field"] == field
            assert isinstance(doc["error"], str) and doc["error"]
            assert fake_service.task_by_id == {}

    run(go())


def test_body_over_the_limit_is_a_413(fake_service):
    async def go():
        async with client(fake_service) as c:
            big = b'{"script_text": "' + b"x" * (api.MAX_BODY_BYTES + 10) + b'", "targets": ["web1"]}'
            r = await c.post("/api/v1/tasks", data=io.BytesIO(big), headers={"Content-Type": "application/json"})
            assert r.status == 413
            assert (await r.json())["field"] == "body"

    run(go())


def test_script_at_the_protocol_limit_fits_the_body_limit(fake_service):
    async def go():
        async with client(fake_service) as c:
            script = base64.b64encode(b"#" * api.MAX_SCRIPT_BYTES).decode()
            r = await post_json(c, "/api/v1/tasks", {"script": script, "targets": ["web1"]})
            assert r.status == 201, (await r.text())[:200]

    run(go())


# ----------------------------------------------------------------- agents


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["db1", "web1", "web2"]),
        ("?online=true", ["web1", "web2"]),
        ("?online=false", ["db1"]),
        ("?label=role=db", ["db1"]),
        ("?label=dc=bj&online=1", ["web1"]),
        ("?hostname=web*", ["web1", "web2"]),
    ],
)
def test_agents_filters(fake_service, query, expected):
    async def go():
        async with client(fake_service) as c:
            r = await c.get("/api/v1/agents" + query)
            assert r.status == 200
            agents = (await r.json())["agents"]
            assert sorted(a["id"] for a in agents) == expected

    run(go())


@pytest.mark.parametrize(("query", "field"), [("?online=maybe", "online"), ("?label=roleweb", "label")])
def test_agents_bad_filter_is_a_400(fake_service, query, field):
    async def go():
        async with client(fake_service) as c:
            r = await c.get("/api/v1/agents" + query)
            assert r.status == 400
            assert (await r.json())["field"] == field

    run(go())


def test_one_agent_and_unknown_agent(fake_service):
    async def go():
        async with client(fake_service) as c:
            r = await c.get("/api/v1/agents/web1")
            doc = await r.json()
            assert r.status == 200 and doc["hostname"] == "web1.example" and doc["labels"]["role"] == "web"
            assert doc["online"] is True and doc["last_heartbeat"] == 1999.0
            r = await c.get("/api/v1/agents/nosuch")
            assert r.status == 404
            assert (await r.json())["field"] == "agent"

    run(go())


# ----------------------------------------------------------------- tasks


def test_tasks_are_paged_newest_first_and_filtered_by_state(fake_service):
    clock = iter(range(100, 200))
    fake_service.clock = lambda: float(next(clock))

    async def go():
        async with client(fake_service) as c:
            ids = []
            for _ in range(3):
                r = await post_json(c, "/api/v1/tasks", {"script_text": "true", "targets": ["web1"]})
                ids.append((await r.json())["id"])
            fake_service.finish_all(ids[1])
            page = await (await c.get("/api/v1/tasks?limit=2")).json()
            assert [t["id"] for t in page["tasks"]] == [ids[2], ids[1]]
            assert page["next_offset"] == 2 and "targets" not in page["tasks"][0]
            page = await (await c.get("/api/v1/tasks?limit=2&offset=2")).json()
            assert [t["id"] for t in page["tasks"]] == [ids[0]] and page["next_offset"] is None
            page = await (await c.get("/api/v1/tasks?state=succeed")).json()
            assert [t["id"] for t in page["tasks"]] == [ids[1]]

    run(go())


@pytest.mark.parametrize(
    ("query", "field"),
    [("?state=DONE", "state"), ("?limit=0", "limit"), ("?limit=501", "limit"), ("?limit=x", "limit"),
     ("?offset=-1", "offset")],
)
def test_tasks_bad_query_is_a_400(fake_service, query, field):
    async def go():
        async with client(fake_service) as c:
            r = await c.get("/api/v1/tasks" + query)
            assert r.status == 400
            assert (await r.json())["field"] == field

    run(go())


def test_task_detail_has_targets_keyed_by_agent_with_output(fake_service):
    async def go():
        async with client(fake_service) as c:
            r = await post_json(c, "/api/v1/tasks", {"script_text": "x", "targets": ["web1", "web2"], "timeout": 9})
            task_id = (await r.json())["id"]
            fake_service.set_target(task_id, "web1", TargetState.SUCCEED, code=0, stdout="héllo\n".encode(),
                                    stdout_bytes=7, started_at=10.0, finished_at=12.5)  # fmt: skip
            fake_service.set_target(task_id, "web2", TargetState.FAILED, code=3, stdout=b"\xff\xfe",
                                    stderr=b"boom\n", stdout_bytes=2, stderr_bytes=5)  # fmt: skip
            doc = await (await c.get(f"/api/v1/tasks/{task_id}?outputs=1")).json()
            assert doc["timeout"] == 9 and doc["counts"] == {"SUCCEED": 1, "FAILED": 1}
            web1, web2 = doc["targets"]["web1"], doc["targets"]["web2"]
            assert web1["state"] == "SUCCEED" and web1["code"] == 0 and web1["duration"] == 2.5
            assert web1["output"] == "héllo\n" and web1["output_encoding"] == "utf-8"
            assert web2["code"] == 3 and web2["output_encoding"] == "base64"
            assert base64.b64decode(web2["output"]) == b"\xff\xfe" and web2["stderr"] == "boom\n"
            r = await c.get("/api/v1/tasks/nosuch")
            assert r.status == 404 and (await r.json())["field"] == "task"

    run(go())


def test_output_route_serves_raw_bytes_per_stream(fake_service):
    async def go():
        async with client(fake_service) as c:
            task_id = await new_task(c)
            fake_service.set_target(task_id, "web1", TargetState.FAILED, code=2, stdout=b"\x00\xffbin",
                                    stderr=b"err", stdout_bytes=5, stderr_bytes=3)  # fmt: skip
            base = f"/api/v1/tasks/{task_id}/targets/web1/output"
            r = await c.get(base)
            assert r.status == 200 and await r.read() == b"\x00\xffbin"
            assert r.headers["X-Mschedule-Exit-Code"] == "2" and r.headers["X-Mschedule-State"] == "FAILED"
            r = await c.get(base + "?stream=stderr")
            assert await r.read() == b"err"
            r = await c.get(base + "?stream=both")
            assert r.status == 400 and (await r.json())["field"] == "stream"
            r = await c.get(f"/api/v1/tasks/{task_id}/targets/nosuch/output")
            assert r.status == 404
            r = await c.get("/api/v1/tasks/nosuch/targets/web1/output")
            assert r.status == 404

    run(go())


def test_kill_kills_and_unknown_task_is_404(fake_service):
    async def go():
        async with client(fake_service) as c:
            task_id = await new_task(c)
            fake_service.set_target(task_id, "web1", TargetState.RUNNING)
            r = await c.post(f"/api/v1/tasks/{task_id}/kill", json={})
            assert r.status == 202
            doc = await r.json()
            assert doc["state"] == "KILLED" and doc["targets"]["web1"]["state"] == "KILLED"
            assert fake_service.killed == [task_id]
            r = await c.post("/api/v1/tasks/nosuch/kill", json={})
            assert r.status == 404

    run(go())


def test_wrong_method_and_unknown_path_answer_json(fake_service):
    async def go():
        async with client(fake_service) as c:
            r = await c.delete("/api/v1/tasks")
            assert r.status == 405 and "error" in await r.json()
            r = await c.get("/api/v1/nothing")
            assert r.status == 404 and "error" in await r.json()

    run(go())


def test_service_bug_is_a_json_500_not_a_crash(fake_service):
    def broken(**kw):
        raise RuntimeError("bug")

    fake_service.agents = broken

    async def go():
        async with client(fake_service) as c:
            r = await c.get("/api/v1/agents")
            assert r.status == 500 and "internal error" in (await r.json())["error"]
            assert (await c.get("/api/v1/agents/web1")).status == 200  # still serving

    run(go())


# ----------------------------------------------------------------- events


async def read_event(resp, kind: str, timeout: float = 10.0) -> dict:
    """Read SSE lines until an event of ``kind``; return its data."""
    current = None
    async with asyncio.timeout(timeout):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                current = line[7:]
            elif line.startswith("data: ") and current == kind:
                return json.loads(line[6:])


def test_event_stream_delivers_the_tasks_events_only(fake_service):
    async def go():
        async with client(fake_service) as c:
            ids = [(await (await post_json(c, "/api/v1/tasks", {"script_text": "x", "targets": ["web1"]})).json())["id"]
                   for _ in range(2)]  # fmt: skip
            resp = await c.get(f"/api/v1/events?task={ids[1]}")
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            assert (await read_event(resp, "hello"))["task_id"] == ids[1]
            fake_service.set_target(ids[0], "web1", TargetState.RUNNING)  # other task: filtered out
            fake_service.set_target(ids[1], "web1", TargetState.RUNNING)
            ev = await read_event(resp, "target")
            assert ev["task_id"] == ids[1] and ev["data"]["state"] == "RUNNING"
            resp.close()
            async with asyncio.timeout(10):
                while sse.open_streams(c.app):
                    await asyncio.sleep(0.02)

    run(go())


def test_server_shutdown_ends_open_event_streams(fake_service):
    async def go():
        runner = await api.start_http(fake_service, "127.0.0.1", 0)
        try:
            port = runner.addresses[0][1]
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}/api/v1/events") as resp:
                    await read_event(resp, "hello")
                    assert sse.open_streams(runner.app) == 1 and fake_service.subscriber_count() == 1
                    cleanup = asyncio.ensure_future(runner.cleanup())
                    async with asyncio.timeout(10):
                        while await resp.content.readline():
                            pass
                    await asyncio.wait_for(cleanup, 10)
        finally:
            await runner.cleanup()
        assert fake_service.subscriber_count() == 0

    run(go())


# ----------------------------------------------------------------- OpenAPI


def test_openapi_lists_exactly_the_served_routes(fake_service):
    app = api.create_app(fake_service)
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD" and not path.startswith("/static"):
            served.add((route.method.lower(), path))
    documented = {(m, p) for p, ops in openapi.document()["paths"].items() for m in ops}
    assert served == documented
    assert len(served) == len(api.ROUTES)


def test_openapi_is_served_without_token(fake_service):
    async def go():
        async with client(fake_service, token=TOKEN) as c:
            r = await c.get("/api/v1/openapi.json")
            assert r.status == 200 and (await r.json())["openapi"].startswith("3.1")

    run(go())


# ----------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [(r.method, r.path.replace("{agent_id}", "web1").replace("{task_id}", "t1")) for r in api.ROUTES if r.auth],
)
def test_every_api_route_needs_the_token_when_one_is_set(fake_service, method, path):
    async def go():
        async with client(fake_service, token=TOKEN) as c:
            r = await c.request(method, path)
            assert r.status == 401
            assert (await r.json())["field"] == "Authorization"
            r = await c.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert r.status == 401

    run(go())


def test_right_token_is_accepted_and_page_is_public(fake_service):
    async def go():
        async with client(fake_service, token=TOKEN) as c:
            r = await c.get("/api/v1/agents", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status == 200
            r = await c.get("/")
            assert r.status == 200 and "<html" in (await r.text()).lower()
            r = await c.get("/static/app.js")
            assert r.status == 200

    run(go())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("10.1.2.3", False), ("::", False), ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host, loopback):
    assert api.is_loopback(host) is loopback


def test_start_http_refuses_a_public_address_without_token(fake_service):
    with pytest.raises(api.InsecureBind, match="token"):
        run(api.start_http(fake_service, "0.0.0.0", 0))


def test_start_http_serves_with_token(fake_service):
    async def go():
        runner = await api.start_http(fake_service, "127.0.0.1", 0, token=TOKEN)
        try:
            port = runner.addresses[0][1]
            async with aiohttp.ClientSession() as s:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with s.get(f"http://127.0.0.1:{port}/task/targets", headers=auth) as r:
                    assert r.status == 200
        finally:
            await runner.cleanup()

    run(go())


@pytest.mark.parametrize(
    ("data", "limit", "expected", "clipped"),
    [
        (b"hello", None, b"hello", False),
        (b"hello", 5, b"hello", False),
        (b"hello", 3, b"llo", True),
        (b"hello", 0, b"", True),
        ("aé".encode(), 1, b"", True),  # never half a UTF-8 character
        ("xé€".encode(), 4, "€".encode(), True),
    ],
)
def test_clip_keeps_the_tail_on_a_character_boundary(data, limit, expected, clipped):
    assert api.clip(data, limit) == (expected, clipped)


def test_task_detail_max_output_keeps_the_tail(fake_service):
    async def go():
        async with client(fake_service) as c:
            task_id = await new_task(c)
            fake_service.set_target(task_id, "web1", TargetState.SUCCEED, code=0, stdout=b"0123456789",
                                    stderr=b"ab", stdout_bytes=10, stderr_bytes=2)  # fmt: skip
            t = (await (await c.get(f"/api/v1/tasks/{task_id}?max_output=4")).json())["targets"]["web1"]
            assert (t["output"], t["output_clipped"], t["stderr"], t["stderr_clipped"]) == ("6789", True, "ab", False)
            t = (await (await c.get(f"/api/v1/tasks/{task_id}?max_output=0")).json())["targets"]["web1"]
            assert t["output"] == "" and t["output_bytes"] == 10
            t = (await (await c.get(f"/api/v1/tasks/{task_id}?outputs=1")).json())["targets"]["web1"]
            assert t["output"] == "0123456789" and not t["output_clipped"]
            t = (await (await c.get(f"/api/v1/tasks/{task_id}")).json())["targets"]["web1"]
            assert (t["output"], t["output_clipped"], t["output_bytes"], t["state"]) == ("", True, 10, "SUCCEED")
            doc = await (await c.get(f"/api/v1/tasks/{task_id}?targets=0")).json()
            assert "targets" not in doc and doc["counts"] == {"SUCCEED": 1} and doc["target_count"] == 1
            r = await c.get(f"/api/v1/tasks/{task_id}?max_output=-3")
            assert r.status == 400 and (await r.json())["field"] == "max_output"

    run(go())


# ----------------------------------------------------------------- browser guard


@pytest.mark.parametrize(
    ("headers", "token", "status", "field"),
    [
        ({"Content-Type": "text/plain"}, None, 415, "Content-Type"),  # a cross-site form / no-cors fetch
        ({}, None, 415, "Content-Type"),
        ({"Content-Type": "application/json", "Origin": "http://evil.example"}, None, 403, "Origin"),
        ({"Content-Type": "application/json", "Host": "evil.example:9900"}, None, 403, "Host"),  # DNS rebinding
        ({"Content-Type": "application/json", "Host": "localhost:9900", "Origin": "http://localhost:9900"}, None,
         202, None),
        ({"Content-Type": "application/json", "Host": "[::1]:9900"}, None, 202, None),
        # With a token, the token is the guard: any Host/Origin (a reverse proxy) is fine.
        ({"Content-Type": "application/json", "Host": "mschedule.example", "Origin": "https://mschedule.example",
          "Authorization": f"Bearer {TOKEN}"}, TOKEN, 202, None),
        ({"Content-Type": "text/plain", "Authorization": f"Bearer {TOKEN}"}, TOKEN, 415, "Content-Type"),
    ],
)  # fmt: skip
def test_other_web_sites_cannot_drive_the_api_through_a_browser(fake_service, headers, token, status, field):
    async def go():
        async with client(fake_service, token=token) as c:
            task = fake_service.submit(_spec())
            r = await c.post(f"/api/v1/tasks/{task.id}/kill", data=b"{}", headers=headers)
            assert r.status == status, await r.text()
            if field:
                assert (await r.json())["field"] == field
            assert fake_service.killed == ([task.id] if status == 202 else [])

    run(go())


def test_rebinding_host_cannot_read_either(fake_service):
    async def go():
        async with client(fake_service) as c:
            r = await c.get("/api/v1/agents", headers={"Host": "evil.example"})
            assert r.status == 403
            r = await c.get("/", headers={"Host": "evil.example"})  # the page itself holds nothing
            assert r.status == 200

    run(go())


def _spec():
    from mschedule_agent import protocol

    return protocol.Submit(targets=["web1"], script_text="true")


def test_openapi_documents_the_guard_answers():
    """With a token: 401, and the role's 403 on what changes something (no browser guard's 403);
    without: the guard's 403 and no 401."""
    paths = openapi.document(secured=True)["paths"]
    assert set(paths["/api/v1/tasks"]["post"]["responses"]) >= {"201", "400", "401", "413", "415"}
    assert "role" in paths["/api/v1/tasks"]["post"]["responses"]["403"]["description"]
    assert "403" not in paths["/api/v1/tasks"]["get"]["responses"]  # every role reads
    assert "415" not in paths["/api/v1/tasks"]["get"]["responses"]
    assert "403" not in paths["/"]["get"]["responses"]
    loopback = openapi.document(secured=False)["paths"]["/api/v1/tasks"]["post"]["responses"]
    assert set(loopback) >= {"201", "400", "403", "413", "415"} and "401" not in loopback


def test_submissions_and_kills_are_logged_with_their_origin(fake_service, caplog):
    caplog.set_level("INFO", logger="mschedule_master.api")

    async def go():
        async with client(fake_service) as c:
            task_id = await new_task(c)
            await c.post(f"/api/v1/tasks/{task_id}/kill", json={})
            return task_id

    task_id = run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "mschedule_master.api"]
    assert f"task {task_id} submitted over HTTP from 127.0.0.1 (1 targets: web1)" in lines
    assert any(line.startswith(f"task {task_id} kill requested over HTTP from 127.0.0.1") for line in lines)


@pytest.mark.parametrize(("host", "token", "ok"), [("127.0.0.1", None, True), ("0.0.0.0", None, False),
                                                    ("0.0.0.0", "t", True), ("10.0.0.5", "", False)])  # fmt: skip
def test_check_bind_needs_a_token_beyond_loopback(host, token, ok):
    if ok:
        api.check_bind(host, 9900, token)
    else:
        with pytest.raises(api.InsecureBind, match="MSCHEDULE_TOKEN"):
            api.check_bind(host, 9900, token)
