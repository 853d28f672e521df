"""`make demo` (python -m harness.demo) as a new user runs it: a broker, a master, three
agents, the sample rollout through the CLI, then every process it started stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.broker import mosquitto_binary
from harness.procs import ROOT, kill_leftovers, processes_mentioning


def demo(workdir: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "harness.demo", "--workdir", str(workdir), "--http-port", "0", "--broker-port", "0",
            "--env-file", str(workdir / "demo.env")]  # fmt: skip
    return subprocess.Popen([*argv, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def test_demo_once_runs_the_sample_rollout_and_stops_everything(tmp_path, broker):
    assert mosquitto_binary()  # (the broker fixture fails/skips without one)
    p = demo(tmp_path / "demo", "--once")
    try:
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
            kill_leftovers(tmp_path / "demo")
    text = out.decode(errors="replace")
    assert p.returncode == 0, text
    assert "mschedule run -t all --parallel 2 --show-output -c 'uname -a; uptime'" in text
    assert "submitted to 3 targets (parallel 2)" in text, text
    assert "3/3 done - 3 succeeded, 0 failed" in text, text
    assert text.count("load average") == 3, text  # every agent's uptime
    assert "Dashboard:  http://127.0.0.1:" in text and "mosquitto_rr -p" in text
    assert re.search(r"Broker: +mqtt://127\.0\.0\.1:\d+", text), text
    assert len(re.findall(r"agent [0-9a-f]{32}  role=\w+ zone=\w+  state /", text)) == 3, text  # ids, state dirs
    assert f". {tmp_path / 'demo' / 'demo.env'}" in text, text  # the line to source
    assert not (tmp_path / "demo" / "demo.env").exists()  # gone with the fleet it described
    assert "demo: stopped." in text
    leftovers = processes_mentioning(str(tmp_path / "demo"))
    kill_leftovers(tmp_path / "demo")
    assert leftovers == []


@pytest.mark.parametrize("background", [False, True], ids=["terminal", "background-and-stdout-closed"])
def test_demo_keeps_the_fleet_up_until_ctrl_c(tmp_path, broker, background):
    """Ctrl-C stops everything -- also when a shell started it in the background (SIGINT
    inherited as ignored) and its stdout is gone (`make demo | head`)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if background else None
    try:
        p = demo(tmp_path / "demo")
    finally:
        if background:
            signal.signal(signal.SIGINT, old)
    seen = b""
    try:
        for _ in range(200):
            line = p.stdout.readline()
            seen += line
            if b"press Ctrl-C" in line or not line:
                break
        assert b"press Ctrl-C" in seen, seen.decode(errors="replace")
        assert len(processes_mentioning(str(tmp_path / "demo"))) >= 5  # broker, master, 3 agents
        if not background:
            check_printed_cli_lines(seen.decode())
            check_printed_mqtt_lines(seen.decode())
        if background:
            p.stdout.close()
        p.send_signal(signal.SIGINT)
        out = b"" if background else p.communicate(timeout=60)[0]
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
            kill_leftovers(tmp_path / "demo")
    assert p.returncode == 0
    assert background or b"demo: stopped." in out
    leftovers = processes_mentioning(str(tmp_path / "demo"))
    kill_leftovers(tmp_path / "demo")
    assert leftovers == []


def check_printed_mqtt_lines(text: str) -> None:
    """The demo's "Submit over MQTT" lines, run verbatim, start a task and show its summary."""
    lines = text.split("Submit over MQTT", 1)[1].splitlines()[1:3]
    assert lines[0].lstrip().startswith("TASK=$(mosquitto_rr") and "mosquitto_sub" in lines[1]
    p = subprocess.run(["bash", "-c", "\n".join(line.strip() for line in lines)], capture_output=True, timeout=90)
    assert p.returncode == 0, p.stderr
    assert b'"type":"submit_reply"' in p.stderr and b'"ok":true' in p.stderr  # the reply, via tee
    assert b'"type":"summary"' in p.stdout and b'"state":"SUCCEED"' in p.stdout


def check_printed_cli_lines(text: str) -> None:
    """The demo's "Try:" lines, run verbatim: each does what it says (TASK_ID left out)."""
    block = text.split("  Try:\n", 1)[1].split("\n\n", 1)[0]
    lines = [re.sub(r"\s+# .*$", "", line.strip()) for line in block.splitlines() if "TASK_ID" not in line]
    assert lines[0].startswith("export MSCHEDULE_MASTER=") and len(lines) >= 6
    script = lines[0] + "\n" + "\n".join(f"{line}; rc=$?; echo; echo \"rc=$rc\"" for line in lines[1:])
    p = subprocess.run(["bash", "-c", script], capture_output=True, timeout=120, cwd=ROOT)
    out = p.stdout.decode(errors="replace")
    rcs = [int(x) for x in re.findall(r"^rc=(\d+)$", out, re.M)]
    assert rcs == [0, 0, 1, 0, 0], out + p.stderr.decode(errors="replace")  # the 'exit 3' rollout fails
    assert "fail_count 0 exceeded" in out and "CANCELLED" in out


def test_a_port_whose_connections_are_only_in_time_wait_is_free_for_the_next_demo():
    """The demo keeps its ports across runs: the previous run's TIME_WAIT sockets do not count."""
    import socket

    from harness.demo import port_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_free(port)  # listening: taken
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end waits in TIME_WAIT
    client.close()
    server.close()
    assert port_free(port)
