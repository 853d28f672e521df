"""The README followed literally: its shell blocks run verbatim, in a shell that sourced the
``demo.env`` a real ``make demo`` (``python -m harness.demo``) wrote, with nothing else on
PATH. Blocks that are not about the demo are named here with the reason they are not run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.procs import ROOT, kill_leftovers, processes_mentioning
from harness.require import require_tools
from mschedule_master import config

README = ROOT / "README.md"
TEXT = README.read_text()

#: Sections whose sh blocks are not run here, and why.
NOT_RUN = {
    "Two commands": "they are how the demo and the tests start (tests/ui/test_ui_demo.py runs the demo)",
    "Run the master": "a production command line (central.example, /var/lib/mschedule), not the demo",
    "Retention": "switches a stopped master's database (sqlite3), not the demo's",
    "Backup and restore": "tests/master/test_master_backup.py runs the backup command",
}

#: Sections that must work against the demo as printed: no system broker, no system paths.
DEMO_SECTIONS = ("Using mschedule", "Rollout plans", "Run a task by hand", "Start a rollout with mosquitto_pub")


def sh_blocks() -> list[tuple[str, str]]:
    """``(section, block)`` for every ```sh block, the section being the nearest heading."""
    out, section = [], ""
    for m in re.finditer(r"^(#{2,3}) ([^\n]+)$|^```sh\n(.*?)^```$", TEXT, flags=re.M | re.S):
        if m.group(2):
            section = m.group(2).strip()
        else:
            out.append((section, m.group(3)))
    return out


def blocks_of(section: str) -> list[str]:
    return [b for s, b in sh_blocks() if s == section]


def section_text(title: str) -> str:
    return TEXT.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


# --------------------------------------------------------------------------- static checks


def test_every_sh_block_is_run_here_or_named_with_a_reason():
    sections = {s for s, _ in sh_blocks()}
    assert sections <= set(NOT_RUN) | set(DEMO_SECTIONS), sections - set(NOT_RUN) - set(DEMO_SECTIONS)
    for title in DEMO_SECTIONS:
        assert blocks_of(title), title


@pytest.mark.parametrize("title", DEMO_SECTIONS)
def test_the_demo_sections_assume_no_system_broker_and_no_system_paths(title):
    text = section_text(title)
    assert not re.search(r"\b1883\b", text) and "/var/lib" not in text, title
    assert "web-*" not in "".join(blocks_of(title))  # no demo agent's hostname matches it


def test_the_settings_table_lists_every_setting():
    table = section_text("Run the master")
    for name in config.Settings.__dataclass_fields__:
        if name not in ("groups", "flush_interval"):  # groups: the [groups] example below it
            assert f"| `{name}` " in table, name


# --------------------------------------------------------------------------- against the demo


@dataclass
class Demo:
    workdir: Path
    shell_dir: Path  #: where the README's commands are typed (demo.env is here)
    broker_log: Path
    printed: str

    def sh(self, block: str, *, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``block`` after ``. ./demo.env``, as a user's new shell would run it; stops at the first failure."""
        return subprocess.run(["bash", "-c", "set -e\n. ./demo.env\n" + block], cwd=self.shell_dir, env=bare_env(),
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def sh_background(self, block: str) -> subprocess.Popen[str]:
        """``block`` in "another terminal", returning once its MQTT client has connected."""
        seen = self.broker_log.read_text(errors="replace").count("New client connected")
        proc = subprocess.Popen(["bash", "-c", ". ./demo.env\n" + block], cwd=self.shell_dir, env=bare_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 20
        while self.broker_log.read_text(errors="replace").count("New client connected") <= seen:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the client never connected"
            time.sleep(0.02)
        time.sleep(0.1)  # its SUBSCRIBE follows the CONNACK the log line announces
        return proc


def json_docs(text: str) -> list[object]:
    """Every JSON document in ``text``, back to back."""
    docs, at, decoder = [], 0, json.JSONDecoder()
    while text[at:].strip():
        doc, at = decoder.raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
        docs.append(doc)
    return docs


def bare_env() -> dict[str, str]:
    """A new user's environment: no virtualenv on PATH (demo.env must put it there)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    require_tools("mosquitto", "mosquitto_pub", "mosquitto_sub", "mosquitto_rr", "jq", why="the README's commands")
    workdir = tmp_path_factory.mktemp("readme-demo")
    shell_dir = workdir / "clone"
    shell_dir.mkdir()
    argv = [sys.executable, "-m", "harness.demo", "--workdir", str(workdir / "demo"), "--http-port", "0",
            "--broker-port", "0", "--env-file", str(shell_dir / "demo.env")]  # fmt: skip
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    printed = ""
    try:
        for _ in range(300):
            line = p.stdout.readline()
            printed += line
            if "press Ctrl-C" in line or not line:
                break
        assert "press Ctrl-C" in printed, printed
        yield Demo(workdir, shell_dir, workdir / "demo" / "broker" / "broker.log", printed)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        leftovers = processes_mentioning(str(workdir))
        kill_leftovers(workdir)
        assert leftovers == []


def test_the_demo_prints_and_exports_what_the_readme_uses(demo):
    out = demo.sh('echo "$MSCHEDULE_MASTER $MQTT_HOST $MQTT_PORT $AGENT $AGENT_STATE"; echo $AGENTS; command -v mschedule')
    assert out.returncode == 0, out.stderr
    (master, host, port, agent, state), agents, cli = [line.split() for line in out.stdout.splitlines()]
    assert f"Dashboard:  {master}/" in demo.printed and f"Broker:     mqtt://{host}:{port}" in demo.printed
    assert agent == (Path(state) / "agent-id").read_text().strip() and agent in agents and len(agents) == 3
    for agent_id in agents:
        assert f"agent {agent_id}" in demo.printed
    assert f"state {state}" in demo.printed
    assert cli == [str(Path(sys.executable).parent / "mschedule")]  # on PATH, from the demo's virtualenv


def test_the_cli_block(demo):
    (block,) = [b for b in blocks_of("Using mschedule") if b.lstrip().startswith("mschedule agents")]
    out = demo.sh(block, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 agents" in out.stdout and out.stdout.count("online") >= 3
    assert "2 succeeded, 0 failed" in out.stdout and "3 succeeded, 0 failed" in out.stdout
    assert re.search(r"kill requested for task [0-9a-f]{32}", out.stdout), out.stdout


def test_the_plans_block(demo):
    (block,) = blocks_of("Rollout plans")
    out = demo.sh(block, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 succeeded, 0 failed" in out.stdout, out.stdout


def test_the_curl_block(demo):
    (block,) = [b for b in blocks_of("Using mschedule") if "curl" in b]
    out = demo.sh(block)
    assert out.returncode == 0, out.stderr
    counts, killed = json_docs(out.stdout)  # curl prints each answer without a newline
    assert counts["target_count"] == 2 and "targets" not in counts
    assert killed["id"] == counts["id"] and killed["targets_spec"] == ["role=web"]


def settle(demo: Demo) -> None:
    """Every task the earlier blocks started has ended (the killed ones' results are in):
    the by-hand watcher then sees only its own task's messages, as on a quiet demo."""
    deadline = time.monotonic() + 90
    while True:
        out = demo.sh('curl -s "$MSCHEDULE_MASTER/api/v1/tasks?limit=500"')
        states = {t["state"] for t in json.loads(out.stdout)["tasks"]}
        if not states & {"WAITING", "RUNNING"}:
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def test_a_task_run_by_hand_answers_ack_started_result_and_runs_once(demo):
    settle(demo)
    watch, send, ack_it = blocks_of("Run a task by hand")
    watcher = demo.sh_background(watch)
    sent = demo.sh(send)
    assert sent.returncode == 0, sent.stderr
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    kinds = [json.loads(line.split(" ", 1)[1])["type"] for line in out.splitlines()]
    assert kinds == ["ack", "started", "result"], out
    result = json.loads(out.splitlines()[2].split(" ", 1)[1])["payload"]
    assert result["id"] == "hello-1" and result["state"] == "SUCCEED"
    assert demo.sh(ack_it).returncode == 0  # harmless with the demo's master: it already acknowledged
    # Sent again: a duplicate ack with the state, nothing run, and (acknowledged) no result again.
    again = demo.sh_background(watch.replace("-C 3 -W 60", "-C 2 -W 4"))
    assert demo.sh(send).returncode == 0
    out, _ = again.communicate(timeout=30)
    answers = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines()]
    assert [(a["type"], a["payload"].get("duplicate"), a["payload"].get("state")) for a in answers] == [
        ("ack", True, "DONE")
    ], out


def test_a_rollout_started_with_mosquitto_rr(demo):
    (block,) = [b for b in blocks_of("Start a rollout with mosquitto_pub") if "mosquitto_rr" in b]
    out = demo.sh(block)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stderr.strip().splitlines()[-1])["payload"]
    summary = json.loads(out.stdout)["payload"]
    assert reply["ok"] and summary["task_id"] == reply["task_id"] and len(reply["targets"]) == 3
    assert (summary["state"], summary["counts"]) == ("SUCCEED", {"SUCCEED": 3})


def test_a_rollout_started_with_a_request_id_is_answered_once(demo):
    _, listen, publish = blocks_of("Start a rollout with mosquitto_pub")
    replies = []
    for _ in range(2):  # "re-sending it returns the same task"
        watcher = demo.sh_background(listen)
        assert demo.sh(publish).returncode == 0
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, err
        replies.append(json.loads(out)["payload"])
    assert replies[0]["ok"] and len(replies[0]["targets"]) == 2  # the two role=web agents
    assert replies[1]["task_id"] == replies[0]["task_id"]
