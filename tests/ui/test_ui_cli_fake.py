"""The `mschedule` CLI against the real HTTP API over a real in-memory Service.

(The end-to-end CLI tests against a real master, broker and agents are in
test_ui_cli_e2e.py; these cover the CLI's own behaviour quickly.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mschedule_agent import protocol
from mschedule_master import cli
from mschedule_master.states import TargetState


def advance(live_api, fn, *, timeout: float = 20.0) -> threading.Thread:
    """In the background: wait for the first task, then ``fn(service, task_id)`` on the API's loop."""

    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = live_api.call(lambda: sorted(live_api.service.task_by_id))
            if ids:
                live_api.call(functools.partial(fn, live_api.service, ids[-1]))
                return
            time.sleep(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def mschedule(live_api, *args: str) -> int:
    return cli.main(["--master", live_api.url, *args])


def test_agents_table_and_json(live_api, capsys):
    assert mschedule(live_api, "agents") == 0
    out = capsys.readouterr().out
    assert "web1.example" in out and "role=db" in out and "offline" in out and "online" in out
    assert mschedule(live_api, "agents", "--json", "--online") == 0
    agents = json.loads(capsys.readouterr().out)
    assert sorted(a["id"] for a in agents) == ["web1", "web2"]


def test_run_waits_and_exits_0_when_the_task_succeeds(live_api, capsys):
    t = advance(live_api, lambda s, tid: s.finish_all(tid, stdout=b"all good\n"))
    rc = mschedule(live_api, "run", "-t", "role=web", "--parallel", "50%", "-c", "echo hi")
    t.join(20)
    out = capsys.readouterr().out
    assert rc == 0
    assert "submitted to 2 targets" in out
    assert "2/2 done - 2 succeeded, 0 failed, 0 running, 0 waiting" in out  # plain lines: not a TTY
    assert "task task0001 SUCCEED" in out and "all good" in out
    spec = live_api.service.submitted[0]
    assert spec.script_bytes == b"echo hi" and spec.parallel == "50%" and spec.targets == ["role=web"]


def test_run_exits_1_and_shows_failed_output(live_api, capsys):
    t = advance(live_api, lambda s, tid: s.finish_all(tid, TargetState.FAILED, code=7, stdout=b"partial\n",
                                                      stderr=b"disk full\n"))  # fmt: skip
    rc = mschedule(live_api, "run", "-t", "web1", "--fail-count", "0", "--fail-rate", "10%", "-c", "false")
    t.join(20)
    out = capsys.readouterr().out
    assert rc == 1
    assert "web1 (web1.example): FAILED, exit 7" in out and "disk full" in out and "partial" in out
    spec = live_api.service.submitted[0]
    assert spec.fail_count == 0 and spec.fail_rate == "10%"


def test_run_json_prints_the_final_task(live_api, capsys):
    t = advance(live_api, lambda s, tid: s.finish_all(tid))
    rc = mschedule(live_api, "run", "-t", "web1", "--json", "--timeout", "5", "-c", "true")
    t.join(20)
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["state"] == "SUCCEED" and doc["timeout"] == 5
    assert doc["targets"]["web1"]["output"] == "hello\n"


def test_run_no_wait_prints_the_id(live_api, capsys):
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", "-c", "true") == 0
    assert capsys.readouterr().out.strip() == "task0001"
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", "--json", "-c", "true") == 0
    assert json.loads(capsys.readouterr().out)["id"] == "task0002"


def test_run_reads_a_script_file_and_stdin(live_api, tmp_path, monkeypatch, capsys):
    script = tmp_path / "deploy.sh"
    script.write_bytes(b"#!/bin/sh\necho \xff binary-safe\n")
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", str(script)) == 0
    assert live_api.service.submitted[-1].script_bytes == script.read_bytes()
    monkeypatch.setattr(sys, "stdin", _Stdin(b"uptime\n"))
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", "-") == 0
    assert live_api.service.submitted[-1].script_bytes == b"uptime\n"


class _Stdin:
    def __init__(self, data: bytes) -> None:
        import io

        self.buffer = io.BytesIO(data)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "-t", "nosuch", "-c", "true"], "targets: target selector 'nosuch' matched no agent"),
        (["run", "-t", "web1"], "give the script"),
        (["run", "-t", "web1", "-c", "true", "x.sh"], "not both"),
        (["run", "-t", "web1", "/nonexistent/script.sh"], "cannot read /nonexistent/script.sh"),
        (["run", "-t", "web1", "--env", "NOEQUALS", "-c", "true"], "KEY=VALUE"),
        (["status", "nosuch"], "task 'nosuch' not found"),
        (["kill", "nosuch"], "not found"),
        (["output", "nosuch", "web1"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(live_api, capsys, args, needle):
    assert mschedule(live_api, *args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert needle in err and err.startswith("mschedule: error:")
    assert "\n" not in err and "Traceback" not in captured.err
    assert live_api.service.task_by_id == {}


@pytest.mark.parametrize(
    ("flag", "value", "takes"),
    [
        ("--parallel", "1.5", "N (a whole number >= 1) or N%"),
        ("--parallel", "0", "N (a whole number >= 1) or N%"),
        ("--parallel", "120%", "N%"),
        ("--fail-rate", "3", "a share from 0 to 1"),
        ("--fail-count", "-4", "-1 (no limit)"),
        ("--fail-count", "two", "a whole number >= 0"),
        ("--timeout", "-1", "seconds"),
        ("--delivery-timeout", "0", "seconds (a number > 0)"),
        ("--output-cap", "1k", "a number of bytes"),
        ("--confirm-over", "-1", "a whole number >= 0"),
    ],
)
def test_number_flags_say_what_they_take(live_api, capsys, flag, value, takes):
    with pytest.raises(SystemExit) as e:
        mschedule(live_api, "run", "-t", "web1", flag, value, "-c", "true")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and f"argument {flag}: takes " in err and takes in err and f"got '{value}'" in err, err
    assert live_api.service.task_by_id == {}


def test_every_submit_field_has_a_run_flag(live_api):
    """--delivery-timeout, --output-cap, --env, --cwd, --request-id ... reach the submit."""
    argv = ["run", "-t", "web1", "--no-wait", "--parallel", "50%", "--fail-count", "0", "--fail-rate", "10%",
            "--timeout", "30", "--on-abort", "drain", "--delivery-timeout", "7.5", "--output-cap", "4096",
            "--env", "A=1", "--env", "B=x=y", "--cwd", "/tmp", "--name", "nightly", "--request-id", "req-7",
            "-c", "true"]  # fmt: skip
    assert mschedule(live_api, *argv) == 0
    spec = live_api.service.submitted[-1]
    assert (spec.parallel, spec.fail_count, spec.fail_rate, spec.timeout, spec.on_abort) == ("50%", 0, "10%", 30, "drain")
    assert (spec.delivery_timeout, spec.output_cap, spec.env, spec.cwd) == (7.5, 4096, {"A": "1", "B": "x=y"}, "/tmp")
    assert (spec.name, spec.request_id) == ("nightly", "req-7")
    covered = {"targets", "script", "script_text", "job", "version"}  # -t, -c/FILE; a job: `mschedule job run`
    flags = {a.dest for a in cli.parser()._subparsers._group_actions[0].choices["run"]._actions}
    for f in dataclasses.fields(protocol.Submit):
        assert f.name in covered or f.name in flags, f.name
    assert spec.stream is True
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", "--no-stream", "-c", "true") == 0
    assert live_api.service.submitted[-1].stream is False


def test_unreachable_master_is_one_line_and_exit_3(capsys):
    from harness.broker import free_port

    assert cli.main(["--master", f"http://127.0.0.1:{free_port()}", "agents"]) == 3
    err = capsys.readouterr().err.strip()
    assert "cannot reach the master" in err and "\n" not in err


def test_token_comes_from_the_environment(fake_service, serve_api, monkeypatch, capsys):
    with serve_api(fake_service, token="tok123") as live:
        monkeypatch.delenv("MSCHEDULE_TOKEN", raising=False)
        assert cli.main(["--master", live.url, "agents"]) == 3
        assert "MSCHEDULE_TOKEN" in capsys.readouterr().err
        monkeypatch.setenv("MSCHEDULE_TOKEN", "tok123")
        monkeypatch.setenv("MSCHEDULE_MASTER", live.url)
        assert cli.main(["agents", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 3


def test_status_output_kill_and_tasks(live_api, capsys):
    assert mschedule(live_api, "run", "-t", "role=web", "--no-wait", "-c", "true") == 0
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", "-c", "true") == 0
    capsys.readouterr()
    live_api.call(lambda: live_api.service.set_target(
        "task0001", "web1", TargetState.FAILED, code=4, stdout=b"out\n", stderr=b"err1\n", stdout_bytes=4,
        stderr_bytes=5))  # fmt: skip
    live_api.call(lambda: live_api.service.set_target("task0001", "web2", TargetState.RUNNING))

    assert mschedule(live_api, "status", "task0001") == 0  # still running
    out = capsys.readouterr().out
    assert "RUNNING" in out and "FAILED" in out and "1 failed, 1 running" in out
    assert mschedule(live_api, "status", "task0001", "--json") == 0
    assert json.loads(capsys.readouterr().out)["targets"]["web1"]["code"] == 4

    assert mschedule(live_api, "output", "task0001", "web1", "--stderr") == 0
    assert capsys.readouterr().out == "err1\n"
    assert mschedule(live_api, "output", "task0001") == 0
    out = capsys.readouterr().out
    assert "=== web1 (FAILED, exit 4) ===" in out and "=== web2 (RUNNING, exit -) ===" in out

    assert mschedule(live_api, "kill", "task0001") == 0
    assert "kill requested for task task0001 (now KILLED" in capsys.readouterr().out
    assert live_api.service.killed == ["task0001"]
    assert mschedule(live_api, "status", "task0001") == 1  # killed: not a success
    capsys.readouterr()
    assert mschedule(live_api, "kill", "task0001") == 2  # ended: nothing to kill (the API's 409)
    assert "task task0001 had already ended (KILLED)" in capsys.readouterr().err

    assert mschedule(live_api, "tasks", "--state", "killed") == 0
    out = capsys.readouterr().out
    assert "task0001" in out and "task0002" not in out
    assert mschedule(live_api, "tasks", "--json") == 0
    assert [t["id"] for t in json.loads(capsys.readouterr().out)] == ["task0002", "task0001"]


def cli_proc(live_api, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "MSCHEDULE_MASTER": live_api.url, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mschedule_master.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, **kw)  # fmt: skip


def test_output_of_one_target_is_the_raw_bytes(live_api):
    live_api.call(lambda: live_api.service.submit(_spec()))
    live_api.call(lambda: live_api.service.set_target("task0001", "web1", TargetState.SUCCEED, code=0,
                                                      stdout=b"\x00\xff\xfe raw\n", stdout_bytes=8))  # fmt: skip
    p = cli_proc(live_api, "output", "task0001", "web1")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out == b"\x00\xff\xfe raw\n"


def _spec():
    from mschedule_agent import protocol

    return protocol.Submit(targets=["web1"], script_text="true")


@pytest.mark.parametrize(("answer", "killed"), [(b"y\n", True), (b"n\n", False)])
def test_ctrl_c_asks_whether_to_kill(live_api, answer, killed):
    p = cli_proc(live_api, "run", "-t", "web1", "-c", "sleep 100")
    try:
        seen = b""
        for _ in range(50):  # the first progress line: it is following the task
            line = p.stdout.readline()
            seen += line
            if b"0/1 done" in line or not line:
                break
        assert b"0/1 done" in seen
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(answer, timeout=30)
        out = seen + out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    text = out.decode() + err.decode()
    assert "Traceback" not in text
    assert "Kill task task0001? [y/N]" in text
    if killed:
        assert live_api.service.killed == ["task0001"]
        assert p.returncode == 1 and "task task0001 KILLED" in text
    else:
        assert live_api.service.killed == []
        assert p.returncode == 130 and "mschedule status task0001" in text


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        ({}, "0 succeeded, 0 failed, 0 running, 0 waiting"),
        ({"SUCCEED": 2, "WAITING": 1, "DISPATCHED": 1, "RUNNING": 2}, "2 succeeded, 0 failed, 2 running, 2 waiting"),
        ({"FAILED": 1, "TIMEOUT": 1, "LOST": 1, "UNREACHABLE": 1, "REJECTED": 1, "INTERRUPTED": 1},
         "0 succeeded, 6 failed, 0 running, 0 waiting"),
        ({"KILLED": 1, "CANCELLED": 2, "SUCCEED": 1},
         "1 succeeded, 0 failed, 0 running, 0 waiting, 1 killed, 2 cancelled"),
    ],
)  # fmt: skip
def test_counts_text_buckets_target_states(counts, text):
    assert cli.counts_text(counts) == text


def test_terminal_gets_a_progress_bar_and_ctrl_c_prompt(live_api):
    """On a pseudo-terminal: the rich bar (not plain lines), then Ctrl-C -> kill."""
    import select

    master_fd, slave_fd = os.openpty()
    env = {**os.environ, "MSCHEDULE_MASTER": live_api.url, "COLUMNS": "150", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "mschedule_master.cli", "run", "-t", "role=web", "-c", "sleep 9"],
                         stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, env=env)  # fmt: skip
    os.close(slave_fd)
    buf, sent_int, answered = b"", False, False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            ready, _, _ = select.select([master_fd], [], [], 0.1)
            if ready:
                try:
                    buf += os.read(master_fd, 65536)
                except OSError:  # the child closed the pty
                    break
            if not sent_int and b"0/2" in buf:  # the bar's M/N column: it is following
                p.send_signal(signal.SIGINT)
                sent_int = True
            if sent_int and not answered and b"[y/N]" in buf:
                os.write(master_fd, b"y\n")
                answered = True
        p.wait(15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        os.close(master_fd)
    text = buf.decode(errors="replace")
    assert "━" in text and "\x1b[" in text, text  # a drawn bar with colours, not plain lines
    assert "done -" not in text
    assert answered and live_api.service.killed == ["task0001"]
    assert p.returncode == 1




def test_wrong_master_urls_are_one_line_errors(tmp_path, broker, capsys):
    import http.server

    (tmp_path / "api" / "v1").mkdir(parents=True)
    (tmp_path / "api" / "v1" / "agents").write_text("<html>not an API</html>")
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        other = f"http://127.0.0.1:{server.server_address[1]}"
        cases = [
            (["--master", "not a url", "agents"], 2, "bad master URL"),
            (["--master", other, "agents"], 3, "not mschedule's JSON"),  # 200 with HTML
            (["--master", other, "tasks"], 3, "answered HTTP 404"),  # an HTML 404
            (["--master", f"http://127.0.0.1:{broker.port}", "agents"], 3, "cannot reach the master"),  # MQTT, not HTTP
        ]
        for argv, status, needle in cases:
            assert cli.main(argv) == status, argv
            err = capsys.readouterr().err.strip()
            assert needle in err and "\n" not in err and "Traceback" not in err, err
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)


def test_a_revised_verdict_shows_in_the_table_and_the_summary_with_when(capsys):
    from rich.console import Console

    target = {"state": "SUCCEED", "code": 0, "signal": None, "reason": "revised: judged UNREACHABLE before ...",
              "output": "hi\n", "output_encoding": "utf-8", "stderr": "", "stderr_encoding": "utf-8",
              "revised_from": "UNREACHABLE", "revised_at": 1_800_000_000.0, "duration": 0.1, "hostname": "h1"}  # fmt: skip
    task = {"id": "t1", "state": "SUCCEED", "reason": "the target succeeded", "counts": {"SUCCEED": 1},
            "targets": {"a1": target}, "revised_at": 1_800_000_000.0}  # fmt: skip
    console = Console(width=250, force_terminal=False)
    assert cli.finish(task, console, False) == 0
    out = capsys.readouterr().out
    when = cli.when(1_800_000_000.0)
    assert f"SUCCEED (revised from UNREACHABLE at {when})" in out
    assert f"verdict revised at {when}" in out


def test_run_follows_events_reads_the_task_only_at_start_and_end_and_exits_at_once(live_api, capsys):
    """Issue 22: the progress redraws from the events' counts (no task reads in between) and
    the CLI returns as soon as the end's event arrives, not at its next poll."""
    service = live_api.service
    reads: list[bool] = []  # per task read: with targets (a full read) or counts only
    plain_task = service.task

    def counting_task(task_id, **kw):
        reads.append(kw.get("targets", True))
        return plain_task(task_id, **kw)

    service.task = counting_task
    finished: list[float] = []

    def drive():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (service.task_by_id and live_api.open_streams()):
            time.sleep(0.01)
        time.sleep(0.3)  # the CLI has subscribed and read the task once
        task_id = sorted(service.task_by_id)[-1]
        for agent_id, state in (("web1", TargetState.RUNNING), ("web2", TargetState.RUNNING),
                                ("web1", TargetState.SUCCEED)):  # fmt: skip
            live_api.call(lambda a=agent_id, s=state: service.set_target(task_id, a, s))
            time.sleep(0.4)  # four 0.1 s polls would fit in here
        live_api.call(lambda: service.finish_all(task_id))
        finished.append(time.monotonic())

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    rc = mschedule(live_api, "run", "-t", "role=web", "--parallel", "2", "-c", "echo hi")
    returned = time.monotonic()
    t.join(20)
    out = capsys.readouterr().out
    assert rc == 0 and finished, out
    assert "0/2 done - 0 succeeded, 0 failed, 2 running, 0 waiting" in out  # redrawn from an event's counts
    assert "1/2 done - 1 succeeded, 0 failed, 1 running, 0 waiting" in out
    assert "2/2 done - 2 succeeded" in out
    assert reads.count(True) == 2, reads  # full reads: the submit's answer, and the end
    assert reads.count(False) <= 3, reads  # counts-only reads: at the start and on subscribing, not per poll
    assert returned - finished[0] < 1.0


def test_master_may_be_host_port_and_may_follow_the_subcommand():
    from mschedule_master.cli import hoist_master, master_url

    assert master_url("127.0.0.1:9900") == "http://127.0.0.1:9900"
    assert master_url("https://m.example:8443/") == "https://m.example:8443/"
    assert hoist_master(["agents", "--json", "--master", "h:1"]) == ["--master", "h:1", "agents", "--json"]
    assert hoist_master(["status", "T", "--master=h:2"]) == ["--master=h:2", "status", "T"]
    assert hoist_master(["run", "-t", "all", "--", "--master", "x"]) == ["run", "-t", "all", "--", "--master", "x"]



def test_status_says_no_limit_for_unlimited_fail_limits(live_api, capsys):
    assert mschedule(live_api, "run", "-t", "web1", "--no-wait", "-c", "true") == 0  # no fail limits given
    task_id = capsys.readouterr().out.split()[-1]
    mschedule(live_api, "status", task_id)
    out = capsys.readouterr().out
    assert "fail_count no limit, fail_rate no limit" in out, out
    assert "None" not in out
