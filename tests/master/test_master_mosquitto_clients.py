"""The README's "Start a rollout with mosquitto_pub" one-liners, run for real with the
mosquitto command-line clients against a real master and agents."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.fleet import Fleet
from harness.require import require_tools


@pytest.fixture(autouse=True)
def _clients():
    require_tools("mosquitto_pub", "mosquitto_sub", "mosquitto_rr", why="these tests run the README's client lines")

#: mosquitto_sub's -d lines are block-buffered into a pipe; stdbuf makes them arrive at once.
_LINEBUF = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []


def _hp(url: str) -> list[str]:
    u = urlsplit(url)
    return ["-h", u.hostname, "-p", str(u.port)]


def _subscribed(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait for mosquitto_sub -d to report its SUBACK (read from its stderr/stdout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "SUBACK" in line:
            return
        if not line and proc.poll() is not None:
            break
    raise TimeoutError("mosquitto_sub did not subscribe")


def test_a_rollout_started_with_mosquitto_pub_and_followed_with_mosquitto_sub(broker, prefix, tmp_path):
    hp = _hp(broker.url)
    with Fleet(tmp_path, broker.url, prefix, agents=2) as fleet:
        # Follow every task's progress (not retained: subscribe first).
        progress = subprocess.Popen(
            [*_LINEBUF, "mosquitto_sub", *hp, "-d", "-t", f"{prefix}/tasks/+/progress", "-W", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        reply_sub = subprocess.Popen(
            [*_LINEBUF, "mosquitto_sub", *hp, "-d", "-t", f"{prefix}/submit/reply/req-1", "-C", "1", "-W", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            _subscribed(progress)
            _subscribed(reply_sub)
            request = {
                "type": "submit",
                "payload": {"request_id": "req-1", "targets": ["all"], "script_text": "echo hello from $(hostname)", "parallel": 1},
            }
            subprocess.run(
                ["mosquitto_pub", *hp, "-q", "1", "-t", f"{prefix}/submit", "-m", json.dumps(request)], check=True, timeout=30
            )
            out, _ = reply_sub.communicate(timeout=30)
            reply = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
            assert reply["type"] == "submit_reply" and reply["payload"]["ok"], reply
            task_id = reply["payload"]["task_id"]
            assert sorted(reply["payload"]["targets"]) == sorted(fleet.agent_ids)

            # The summary is retained: subscribing after the end still gets it.
            summary = subprocess.run(
                ["mosquitto_sub", *hp, "-t", f"{prefix}/tasks/{task_id}/summary", "-C", "1", "-W", "60"],
                capture_output=True, text=True, timeout=70, check=True,
            )  # fmt: skip
            doc = json.loads(summary.stdout)["payload"]
            assert (doc["state"], doc["counts"]) == ("SUCCEED", {"SUCCEED": 2})

            # One progress per batch the master applied, published before the summary: give the
            # last one a moment to arrive, then stop following.
            time.sleep(1.0)
            progress.terminate()
            out, _ = progress.communicate(timeout=30)
            docs = [json.loads(line)["payload"] for line in out.splitlines() if line.startswith("{")]
            latest: dict[str, str] = {}  # agent id -> the last state a progress reported for it
            seen = set()
            for p in docs:
                changes = p.get("changes") or {p["agent_id"]: {"state": p["target_state"]}}
                latest.update({a: c["state"] for a, c in changes.items()})
                seen.update(c["state"] for c in changes.values())
                assert sum(p["counts"].values()) == 2, p
            assert latest == {a: "SUCCEED" for a in fleet.agent_ids} and "DISPATCHED" in seen, docs
        finally:
            for p in (progress, reply_sub):
                if p.poll() is None:
                    p.kill()
                    p.communicate()


def test_mosquitto_rr_gets_the_reply_on_its_response_topic_and_errors_name_the_field(broker, prefix, tmp_path):
    hp = _hp(broker.url)
    with Fleet(tmp_path, broker.url, prefix, agents=1) as fleet:
        ok = {"type": "submit", "payload": {"targets": [fleet.agent_ids[0]], "script_text": "true"}}
        bad = {"type": "submit", "payload": {"targets": ["all"], "script_text": "true", "parallel": 0}}
        answers = []
        for request in (ok, bad):
            rr = subprocess.run(
                ["mosquitto_rr", *hp, "-t", f"{prefix}/submit", "-e", f"{prefix}/submit/reply/me", "-m", json.dumps(request), "-W", "30"],
                capture_output=True, text=True, timeout=40, check=True,
            )  # fmt: skip
            answers.append(json.loads(rr.stdout)["payload"])
        assert answers[0]["ok"] and answers[0]["task_id"]
        assert not answers[1]["ok"] and answers[1]["field"] == "parallel" and "parallel" in answers[1]["error"]
        assert fleet.wait_task(answers[0]["task_id"], 30)["state"] == "SUCCEED"


def _readme_block() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Start a rollout with mosquitto_pub", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_one_liners_work_verbatim(broker, prefix, tmp_path):
    port = str(urlsplit(broker.url).port)
    block = _readme_block().replace("mschedule/", f"{prefix}/")
    env = {"USER": "tester", "PATH": "/usr/bin:/bin", "MQTT_HOST": "127.0.0.1", "MQTT_PORT": port}
    with Fleet(tmp_path, broker.url, prefix, agents=2):
        run = subprocess.run(["bash", "-c", "set -e\n" + block], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stderr.strip().splitlines()[-1])["payload"]
    summary = json.loads(run.stdout)["payload"]
    assert reply["ok"] and summary["task_id"] == reply["task_id"]
    assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 2})
