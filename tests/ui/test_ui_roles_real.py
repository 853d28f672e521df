"""Issue 16 on a real master (real mosquitto, real agent): each token role allowed or
refused on every route it serves (a matrix over api.ROUTES), and the audit trail it keeps:
who submitted and killed what, refused when it cannot be written, verified by the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from harness.fleet import Fleet
from mschedule_master import api, roles

TOKENS = {"viewer": "viewer-secret-0123456789", "operator": "operator-secret-0123456789",
          "admin": "admin-secret-0123456789"}  # fmt: skip
PARAMS = {"task_id": "t0", "agent_id": "a0", "name": "n0", "version": "1"}


def config(tmp_path) -> str:
    path = tmp_path / "master.toml"
    lines = []
    for role, secret in TOKENS.items():
        lines += [f"[tokens.{role}-user]", f'role = "{role}"']
        # one token given as its sha256: the file then holds no secret for it
        lines.append(f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"' if role == "admin" else f'token = "{secret}"')
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return str(path)


def call(url: str, method: str, path: str, token: str | None, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, b"" if path == "/api/v1/events" else r.read()  # an event stream never ends
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, broker):
    tmp = tmp_path_factory.mktemp("roles")
    # token: the harness's own (an admin named "token"), beside the configured ones
    flags = {"config": config(tmp), "token": "harness-admin-0123456789"}
    with Fleet(tmp, broker.url, "roles/mschedule", agents=1, master_flags=flags) as f:
        yield f


def test_every_route_admits_exactly_the_roles_it_should(fleet):
    url = fleet.master.http_url
    checked = 0
    for route in api.ROUTES:
        path = route.path.format(**PARAMS)
        if not route.auth:
            assert call(url, route.method, path, None)[0] not in (401, 403), route
            continue
        assert call(url, route.method, path, None)[0] == 401, route
        assert call(url, route.method, path, "not-a-token-at-all")[0] == 401, route
        for role, secret in TOKENS.items():
            status, body = call(url, route.method, path, secret)
            if roles.allows(role, route.method, route.path):
                assert status not in (401, 403), (role, route, status, body)
            else:
                assert status == 403 and b"needs" in body, (role, route, status, body)
            checked += 1
    assert checked >= 3 * 30  # every authenticated route, three roles
    # the table, spelled out for what matters most
    assert not roles.allows("viewer", "POST", "/api/v1/tasks")
    assert roles.allows("operator", "POST", "/api/v1/tasks/{task_id}/kill")
    assert not roles.allows("operator", "POST", "/api/v1/jobs/{name}/versions")
    assert not roles.allows("operator", "DELETE", "/api/v1/schedules/{name}")
    assert roles.allows("admin", "POST", "/api/v1/schedules")


def test_whoami_tells_the_page_what_the_role_may_do(fleet):
    url = fleet.master.http_url
    doc = json.loads(call(url, "GET", "/api/v1/whoami", TOKENS["viewer"])[1])
    assert doc == {"name": "viewer-user", "role": "viewer", "may": {"read": True, "run": False, "admin": False}}
    assert json.loads(call(url, "GET", "/api/v1/whoami", TOKENS["operator"])[1])["may"]["run"] is True


def submit(fleet, token: str, script: str) -> tuple[int, dict]:
    body = {"targets": fleet.agent_ids, "script": base64.b64encode(script.encode()).decode()}
    status, raw = call(fleet.master.http_url, "POST", "/api/v1/tasks", token, body)
    return status, json.loads(raw)


def audit(fleet, **query) -> list[dict]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return json.loads(call(fleet.master.http_url, "GET", f"/api/v1/audit?{q}", TOKENS["viewer"])[1])["records"]


def test_submissions_kills_and_outcomes_are_audited_with_who_and_what(fleet):
    status, task = submit(fleet, TOKENS["operator"], "echo audited")
    assert status == 201
    fleet.wait_task(task["id"])
    (rec,) = audit(fleet, task_id=task["id"], action="submit")
    assert rec["actor"] == "operator-user"
    d = rec["detail"]
    assert d["selector"] == fleet.agent_ids and d["resolved"] == 1
    assert d["script_sha256"] == hashlib.sha256(b"echo audited").hexdigest()
    (out,) = audit(fleet, task_id=task["id"], action="outcome")
    assert out["detail"]["state"] == "SUCCEED" and out["seq"] > rec["seq"]
    status, long = submit(fleet, TOKENS["operator"], "sleep 30")
    assert call(fleet.master.http_url, "POST", f"/api/v1/tasks/{long['id']}/kill", TOKENS["admin"])[0] == 202
    (kill,) = audit(fleet, task_id=long["id"], action="kill")
    assert kill["actor"] == "admin-user"
    assert json.loads(call(fleet.master.http_url, "GET", "/api/v1/audit/verify", TOKENS["viewer"])[1])["ok"]
    cli = [sys.executable, "-m", "mschedule_master.cli", "--master", fleet.master.http_url]
    env = {**os.environ, "MSCHEDULE_TOKEN": TOKENS["viewer"]}
    p = subprocess.run([*cli, "audit", "--task", long["id"]], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0 and "admin-user" in p.stdout and "kill" in p.stdout and "operator-user" in p.stdout, p
    p = subprocess.run([*cli, "audit", "verify"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0 and "audit trail intact" in p.stdout, p


def test_a_submission_whose_audit_record_cannot_be_written_is_refused(fleet):
    db = str(fleet.master.db)
    with sqlite3.connect(db, timeout=10) as c:  # the audit table stops taking records
        c.execute("create trigger audit_jammed before insert on audit begin select raise(abort, 'audit jammed'); end")
    try:
        before = json.loads(call(fleet.master.http_url, "GET", "/api/v1/tasks", TOKENS["viewer"])[1])["tasks"]
        status, doc = submit(fleet, TOKENS["operator"], "echo never")
        assert status == 503 and "audit" in doc["error"] and doc["field"] == "audit"
        after = json.loads(call(fleet.master.http_url, "GET", "/api/v1/tasks", TOKENS["viewer"])[1])["tasks"]
        assert [t["id"] for t in after] == [t["id"] for t in before]  # no task was created
    finally:
        with sqlite3.connect(db, timeout=10) as c:
            c.execute("drop trigger audit_jammed")
    assert submit(fleet, TOKENS["operator"], "echo again")[0] == 201


def test_audit_verify_cli_detects_an_edited_and_a_deleted_record(fleet, tmp_path):
    submit(fleet, TOKENS["operator"], "echo one")
    copy = tmp_path / "copy.db"
    with sqlite3.connect(str(fleet.master.db)) as src, sqlite3.connect(str(copy)) as dst:
        src.backup(dst)

    def verify() -> tuple[int, str]:
        cmd = [sys.executable, "-m", "mschedule_master.cli", "audit", "verify", "--db", str(copy)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout

    assert verify()[0] == 0
    with sqlite3.connect(str(copy)) as c:
        c.execute("drop trigger audit_no_update")
        c.execute("drop trigger audit_no_delete")
        c.execute("update audit set actor = 'someone-else' where seq = 1")
    code, out = verify()
    assert code == 1 and "record 1 was edited" in out
    with sqlite3.connect(str(copy)) as c:
        c.execute("delete from audit where seq = 2")
    code, out = verify()
    assert code == 1 and "records 2..2 are missing" in out
