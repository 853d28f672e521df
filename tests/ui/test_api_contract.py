"""The API keeps its contract (issue 21): schemathesis against a real master with two real
agents, from the OpenAPI document the master serves, with every check, once on loopback
without a token and once with one. It fails on any failure schemathesis reports.

The run is bounded (a fixed seed, MSCHEDULE_CONTRACT_EXAMPLES cases per operation, default
10: ~20 s); ``make fuzz`` runs it with more. Settings: tests/ui/schemathesis.toml. The
CLI runs as a subprocess: its threads and warnings stay out of pytest's filterwarnings=error.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness.fleet import Fleet

CONFIG = Path(__file__).with_name("schemathesis.toml")
TOKEN = "contract-" + uuid.uuid4().hex
EXAMPLES = int(os.environ.get("MSCHEDULE_CONTRACT_EXAMPLES", "10"))
SEED = int(os.environ.get("MSCHEDULE_CONTRACT_SEED", "21"))
RUN_TIMEOUT = 120 + EXAMPLES * 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["loopback", "token"])
def contract_fleet(request, broker, tmp_path_factory):
    flags = {"token": TOKEN} if request.param == "token" else {}
    prefix = f"contract{uuid.uuid4().hex[:8]}/mschedule"
    with Fleet(tmp_path_factory.mktemp("contract"), broker.url, prefix, agents=2, master_flags=flags) as fleet:
        fleet.mode = request.param
        yield fleet


def call(fleet, method: str, path: str, *, token: str | None = None, body: bytes | None = None, headers=None):
    """``(status, headers, body)``; an error status is an answer, not an exception."""
    req = urllib.request.Request(fleet.master.http_url + path, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


def run_schemathesis(fleet, workdir: Path) -> tuple[int, str, float]:
    url = fleet.master.http_url
    argv = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "run",
        f"{url}/api/v1/openapi.json", "--checks", "all", "--seed", str(SEED), "--max-examples", str(EXAMPLES),
        "--no-color", "--output-truncate", "true",
    ]  # fmt: skip
    if fleet.mode == "token":
        argv += ["--header", f"Authorization: Bearer {TOKEN}"]
    env = {**os.environ, "MSCHEDULE_CONTRACT_AGENT": fleet.agent_ids[0], "NO_COLOR": "1"}
    started = time.monotonic()
    p = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - started


def test_schemathesis_finds_no_failure(contract_fleet, tmp_path):
    code, out, seconds = run_schemathesis(contract_fleet, tmp_path)
    assert code == 0 and "generated" in out, f"schemathesis ({contract_fleet.mode}) exit {code}:\n{out[-20000:]}"
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and cases[1] == cases[2], out[-3000:]
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested[1]) >= 30, out[-3000:]  # every operation, not a schema that failed to load
    assert re.search(r"Stateful \(in", out), out[-3000:]  # the phase that follows links ran
    links = re.search(r"API Links:\s+(\d+) covered", out)
    # The phase followed links (e.g. task creation -> task, output, kill). With 205 links to
    # choose from since plans, roles and live output (177 inferred), the seeded run follows 2.
    assert links and int(links[1]) >= 2, out[-3000:]
    print(f"schemathesis {contract_fleet.mode}: {cases[1]} cases, checks all, {links[1]} links covered, {seconds:.1f} s")
    log = contract_fleet.master.log()
    assert "Traceback" not in log, log[-5000:]


def test_the_document_says_the_security_the_master_has(contract_fleet):
    _, _, body = call(contract_fleet, "GET", "/api/v1/openapi.json")
    import json

    doc = json.loads(body)
    kill = doc["paths"]["/api/v1/tasks/{task_id}/kill"]["post"]["responses"]
    if contract_fleet.mode == "token":
        assert doc["security"] == [{"bearer": []}] and "401" in kill
        assert "role" in kill["403"]["description"]  # a token whose role is too low (not the browser guard)
        assert call(contract_fleet, "GET", "/api/v1/agents")[0] == 401
    else:
        assert doc["security"] == [] and "401" not in kill and "403" in kill
        assert call(contract_fleet, "GET", "/api/v1/agents")[0] == 200
    assert "Security:" in doc["info"]["description"]  # both modes described


def test_kill_without_a_body_is_accepted(contract_fleet):
    token = TOKEN if contract_fleet.mode == "token" else None
    body = b'{"targets": ["all"], "script_text": "sleep 30"}'
    status, _, created = call(contract_fleet, "POST", "/api/v1/tasks", token=token, body=body,
                              headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 201, created
    import json

    task_id = json.loads(created)["id"]
    status, _, killed = call(contract_fleet, "POST", f"/api/v1/tasks/{task_id}/kill", token=token)
    assert status == 202, killed
    # a body of another type is still refused: a cross-site form cannot kill
    status, _, _ = call(contract_fleet, "POST", f"/api/v1/tasks/{task_id}/kill", token=token, body=b"a=1",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert status == 415


def test_405_names_the_allowed_methods(contract_fleet):
    token = TOKEN if contract_fleet.mode == "token" else None
    status, headers, body = call(contract_fleet, "DELETE", "/api/v1/tasks", token=token)
    assert status == 405 and set(headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}, body


def test_a_malformed_request_is_a_one_line_warning(contract_fleet):
    """A header with a NUL byte (what schemathesis probes): 400, and one warning line in the
    master's log, not an aiohttp traceback."""
    host, port = contract_fleet.master.http_url.removeprefix("http://").rsplit(":", 1)
    before = len(contract_fleet.master.log())
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n")
        answer = s.recv(4096)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer
    deadline = time.monotonic() + 5
    while "malformed HTTP request" not in contract_fleet.master.log()[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    added = contract_fleet.master.log()[before:]
    assert "malformed HTTP request" in added and "Traceback" not in added, added
