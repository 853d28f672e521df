"""The executor with real processes: exit codes, signals, shebangs, capture, timeout, kill."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mschedule_agent.executor import Executor, RunSpec, interpreter, kill_orphan_group, orphan_group, process_identity


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, read from /proc."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(d.name))
    return found


@pytest.fixture
def run_script(tmp_path):
    ex = Executor(tmp_dir=tmp_path / "run")
    started_groups = []

    def run(script: bytes, *, kill_after: float | None = None, wait: float = 30, **spec):
        out = {}
        pids = []
        r = ex.start(
            RunSpec(task_id="t1", script=script, **spec),
            on_started=pids.append,
            on_done=lambda o: out.setdefault("o", o),
        )
        if kill_after is not None:
            deadline = time.monotonic() + 10
            while not pids and time.monotonic() < deadline:
                time.sleep(0.01)  # until on_started: the process exists
            time.sleep(kill_after)  # let the script start its children; the kill itself is event-driven
            r.kill()
        assert r.join(wait), "run did not finish"
        started_groups.extend(pids)
        return out["o"]

    yield run
    for pgid in started_groups:  # never leave anything behind, even when a test fails
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


EXIT_CASES = [
    (b"echo out; echo err >&2", "SUCCEED", 0, None, b"out\n", b"err\n"),
    (b"exit 3", "FAILED", 3, None, b"", b""),
    (b"kill -9 $$", "FAILED", 137, 9, b"", b""),
    (b"kill -TERM $$", "FAILED", 143, 15, b"", b""),
    (b"#!/usr/bin/env python3\nimport sys; print('py', sys.version_info[0])", "SUCCEED", 0, None, b"py 3\n", b""),
    (b"#!/bin/bash -e\nfalse\necho not reached", "FAILED", 1, None, b"", b""),
    (b"printf '\\377\\376\\000bin'", "SUCCEED", 0, None, b"\xff\xfe\x00bin", b""),
]


@pytest.mark.parametrize("script,state,code,sig,out,err", EXIT_CASES)
def test_exit_status_signal_and_streams_are_reported_as_linux_gives_them(run_script, script, state, code, sig, out, err):
    o = run_script(script)
    assert (o.state, o.code, o.signal, o.stdout.data, o.stderr.data) == (state, code, sig, out, err)
    assert o.started_at <= o.finished_at


def test_env_cwd_and_task_id_reach_the_script(run_script, tmp_path):
    o = run_script(b'echo "$FOO $MSCHEDULE_TASK_ID $(pwd)"', env={"FOO": "bar"}, cwd=str(tmp_path))
    assert o.stdout.data == f"bar t1 {tmp_path}\n".encode()


def test_the_agents_own_settings_are_not_in_the_scripts_environment(run_script, monkeypatch):
    monkeypatch.setenv("MSCHEDULE_AGENT_BROKER", "mqtt://user:secret@host:1883")
    o = run_script(b'echo "[$MSCHEDULE_AGENT_BROKER]"')
    assert o.stdout.data == b"[]\n"


def test_script_file_is_private_and_removed_afterwards(run_script, tmp_path):
    o = run_script(b'stat -c %a "$0" "$(dirname "$0")"; echo "$0"')
    mode, dir_mode, path = o.stdout.data.split()
    assert (mode, dir_mode) == (b"700", b"700") and Path(path.decode()).parent == tmp_path / "run"
    assert list((tmp_path / "run").iterdir()) == []


def test_an_executor_without_a_directory_makes_a_private_one():
    ex = Executor()
    d = Path(ex.tmp_dir)
    assert d.is_dir() and (d.stat().st_mode & 0o777) == 0o700
    del ex
    import gc

    gc.collect()
    assert not d.exists()


@pytest.mark.parametrize(
    "script,spec,needle",
    [(b"#!/nonexistent/interp\n", {}, "cannot start"), (b"true", {"cwd": "/nonexistent-dir"}, "cannot start")],
)
def test_a_script_that_cannot_start_fails_with_no_exit_code(run_script, script, spec, needle):
    o = run_script(script, **spec)
    assert (o.state, o.code) == ("FAILED", None) and needle in o.error


@pytest.mark.parametrize(
    "script",
    [b"sleep 300 & sleep 300 & wait", b"trap '' TERM; sleep 300 & sleep 300 & wait"],
    ids=["obeys-sigterm", "ignores-sigterm"],
)
def test_timeout_kills_the_whole_group(run_script, script):
    t0 = time.monotonic()
    o = run_script(script, timeout=0.5, kill_grace=0.5)
    assert o.state == "TIMEOUT" and "timed out" in o.error
    assert group_members(o.pid) == []
    assert time.monotonic() - t0 < 10


def test_kill_stops_the_group_and_reports_killed(run_script):
    o = run_script(b"sleep 300 & sleep 300 & wait", kill_after=0.3, kill_grace=1)
    assert (o.state, o.error) == ("KILLED", "killed on request")
    assert o.code is not None and group_members(o.pid) == []


def test_huge_output_is_capped_head_and_tail_with_the_total(run_script):
    o = run_script(b"head -c 52428800 /dev/zero | tr '\\0' a; printf END", output_cap=1000)
    assert o.stdout.truncated and o.stdout.total == 52428800 + 3
    assert o.stdout.data == b"a" * 500 + b"a" * 497 + b"END"


def test_background_child_holding_stdout_does_not_hold_the_result(run_script):
    t0 = time.monotonic()
    o = run_script(b"sleep 30 & echo done")
    assert o.state == "SUCCEED" and o.stdout.data == b"done\n"
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    "script,argv",
    [
        (b"echo", ["/bin/sh", "P"]),
        (b"#!/usr/bin/env python3\n", ["/usr/bin/env", "python3", "P"]),
        (b"#! /bin/bash -e -u\nx", ["/bin/bash", "-e -u", "P"]),
        (b"#!\n", ["/bin/sh", "P"]),
    ],
)
def test_interpreter_follows_the_shebang_like_linux(script, argv):
    assert interpreter(script, "P") == argv


@pytest.fixture
def orphan():
    """A process group like a run's, to play the leftovers of a crashed agent."""
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    try:
        yield p
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def test_orphaned_group_is_found_by_pid_and_identity_and_killed(orphan):
    identity = process_identity(orphan.pid)
    time_limit = time.monotonic() + 10
    while len(orphan_group(orphan.pid, identity)) < 3 and time.monotonic() < time_limit:
        time.sleep(0.02)  # the shell is still starting its two sleeps
    assert len(orphan_group(orphan.pid, identity)) == 3
    assert kill_orphan_group(orphan.pid, identity, grace=2)
    assert group_members(orphan.pid) == []


@pytest.mark.parametrize("mangle", [lambda i: "another-boot:" + i.split(":")[1], lambda i: i.split(":")[0] + ":" + str(int(i.split(":")[1]) + 10**6), lambda i: None])
def test_a_reused_pid_or_unknown_identity_is_never_killed(orphan, mangle):
    identity = mangle(process_identity(orphan.pid))
    assert not kill_orphan_group(orphan.pid, identity, grace=0.1)
    assert orphan.poll() is None


def test_kill_after_the_run_finished_is_harmless(tmp_path):
    ex = Executor(tmp_dir=tmp_path / "run")
    done = []
    r = ex.start(RunSpec(task_id="t1", script=b"true"), on_started=lambda pid: None, on_done=done.append)
    assert r.join(30)
    r.kill()  # its wake-up pipe is closed; the fd number must not be written to
    assert done[0].state == "SUCCEED" and r._wake_w == -1


def test_before_exec_runs_on_the_run_thread_before_the_script(run_script, tmp_path):
    import threading

    marker = tmp_path / "ran"
    seen = []

    def before():
        seen.append((threading.current_thread().name, marker.exists()))

    o = run_script(f"touch {marker}".encode(), before_exec=before)
    assert o.state == "SUCCEED" and marker.exists()
    assert seen == [("run-t1", False)]


def test_before_exec_failure_runs_nothing_and_reports_failed(run_script, tmp_path):
    marker = tmp_path / "ran"

    def before():
        raise OSError("disk full")

    o = run_script(f"touch {marker}".encode(), before_exec=before)
    assert (o.state, o.code, o.pid) == ("FAILED", None, None)
    assert "disk full" in o.error and not marker.exists()


def test_file_sha256_is_the_sha256_of_the_file_without_loading_openssl(tmp_path):
    import hashlib  # the test may; the agent must not (test_agent_footprint)

    from mschedule_agent.executor import file_sha256

    f = tmp_path / "s"
    f.write_bytes(b"#!/bin/sh\necho hi\n" * 10_000)
    assert file_sha256(str(f)) == hashlib.sha256(f.read_bytes()).hexdigest()
