"""The agent daemon as a real process against a real mosquitto (harness fixtures)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from harness.agentproc import start_agent
from harness.mqtt import Collector
from harness.procs import Proc, wait_until
from harness.require import require_tools
from mschedule_agent.protocol import (
    Ack,
    DecodeError,
    Heartbeat,
    Kill,
    Offline,
    OutputChunk,
    OutputEnd,
    Register,
    Reject,
    Result,
    ResultAck,
    Started,
    Task,
    decode,
    encode,
)


def msg_of(m):
    try:
        return decode(m.payload)
    except DecodeError:
        return None


def is_(cls, task_id=None, **fields):
    live = cls in (OutputChunk, OutputEnd)

    def pred(m):
        if ("/output/" in m.topic) != live:
            return False  # thousands of live chunks (a 100 MB writer): not decoded again at each wait
        x = msg_of(m)
        return (
            isinstance(x, cls)
            and (task_id is None or getattr(x, "id", None) == task_id)
            and all(getattr(x, k) == v for k, v in fields.items())
        )

    return pred


def task(task_id: str, script: bytes, **kw) -> bytes:
    return encode(Task(id=task_id, script=script, **kw))


def group_alive(pgid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2:].split()
            if f[0] != "Z" and int(f[2]) == pgid:
                found.append(int(d.name))
    return found


def killpg_quietly(pgid: int | None) -> None:
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def agent(tmp_path, broker, prefix):
    a = start_agent(tmp_path / "agent", broker.url, prefix, labels={"role": "web", "zone": "bj"})
    yield a
    a.stop()


@pytest.fixture
def watch(broker, prefix):
    with Collector(broker.url, [f"{prefix}/#"]) as c:
        yield c


def test_registers_heartbeats_and_goes_offline_cleanly_on_sigterm(agent, watch, topics):
    aid = agent.agent_id
    (reg,) = watch.wait_for(is_(Register, aid), timeout=10)
    r = msg_of(reg)
    assert reg.retain and reg.topic == topics.status(aid)
    assert r.labels == {"role": "web", "zone": "bj"} and r.capacity == 1 and r.hostname and r.version
    beats = watch.wait_for(is_(Heartbeat, aid), timeout=10, count=2)
    assert msg_of(beats[-1]).ts > msg_of(beats[0]).ts and beats[-1].topic == topics.heartbeat(aid)
    assert agent.stop() == 0
    (off,) = watch.wait_for(is_(Offline, aid), timeout=10)
    assert msg_of(off).reason == "shutdown" and msg_of(off).at is not None


def test_last_will_is_published_after_kill_9_and_retained(agent, watch, broker, topics):
    aid = agent.agent_id
    watch.wait_for(is_(Register, aid), timeout=10)
    agent.kill9()
    (off,) = watch.wait_for(is_(Offline, aid), timeout=15)
    assert msg_of(off).reason == "will"
    with Collector(broker.url, [topics.status(aid)]) as late:  # a newcomer sees the retained status
        (kept,) = late.wait_for(is_(Offline, aid), timeout=10)
        assert kept.retain and msg_of(kept).reason == "will"


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_one_liner() -> str:
    section = README.read_text().split("## Run a task by hand", 1)[1]
    (line,) = [ln for ln in section.splitlines() if ln.startswith("mosquitto_pub ") and "/tasks\"" in ln]
    return line


def test_readme_mosquitto_pub_one_liner_runs_a_task_and_its_result_arrives(agent, watch, broker, prefix):
    aid = agent.agent_id
    line = readme_one_liner().replace('"mschedule/', f'"{prefix}/')
    env = {**os.environ, "AGENT": aid, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker.port)}
    subprocess.run(["bash", "-c", line], env=env, check=True, timeout=10)
    watch.wait_for(is_(Ack, "hello-1"), timeout=10)
    watch.wait_for(is_(Started, "hello-1"), timeout=10)
    (res,) = watch.wait_for(is_(Result, "hello-1"), timeout=15)[:1]  # results are re-sent until acked
    r = msg_of(res)
    assert (r.state, r.code, r.agent_id) == ("SUCCEED", 0, aid)
    assert r.output.startswith(b"hello from ") and len(r.output) > len("hello from \n")


def test_python3_shebang_task_published_by_hand_runs(agent, watch, broker, prefix):
    aid = agent.agent_id
    script = base64.b64encode(b"#!/usr/bin/env python3\nprint('hello from', 'python')").decode()
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", f"{prefix}/agents/{aid}/tasks",
         "-m", f'{{"type":"task","payload":{{"id":"manual-py","script":"{script}","timeout":60}}}}'],
        check=True, timeout=10,
    )  # fmt: skip
    (res,) = watch.wait_for(is_(Result, "manual-py"), timeout=15)[:1]  # results are re-sent until acked
    r = msg_of(res)
    assert (r.state, r.code, r.output) == ("SUCCEED", 0, b"hello from python\n")


def test_same_task_delivered_twice_runs_once(agent, watch, tmp_path, topics):
    aid = agent.agent_id
    marker = tmp_path / "runs.txt"
    payload = task("dup-1", f"echo run >> {marker}; sleep 0.5".encode())
    watch.publish(topics.tasks(aid), payload)
    watch.publish(topics.tasks(aid), payload)  # while it runs
    watch.wait_for(is_(Result, "dup-1"), timeout=15)
    watch.publish(topics.tasks(aid), payload)  # after it finished
    acks = watch.wait_for(is_(Ack, "dup-1"), timeout=10, count=3)
    assert [msg_of(a).duplicate for a in acks] == [False, True, True]
    assert msg_of(acks[-1]).state == "DONE"
    watch.wait_for(is_(Result, "dup-1"), timeout=10, count=2)  # the stored result again
    assert marker.read_text() == "run\n"


def test_kill_9_mid_run_reports_interrupted_after_restart_and_never_reruns(tmp_path, broker, prefix, watch, topics):
    marker = tmp_path / "runs.txt"
    a = start_agent(tmp_path / "agent", broker.url, prefix)
    pgid = None
    try:
        aid = a.agent_id
        watch.publish(topics.tasks(aid), task("crash-1", f"echo run >> {marker}; sleep 300".encode()))
        (st,) = watch.wait_for(is_(Started, "crash-1"), timeout=10)
        pgid = msg_of(st).pid
        a.kill9()
        assert group_alive(pgid)  # the script has its own session: a crash of the agent leaves it
        a = start_agent(tmp_path / "agent", broker.url, prefix)
        (res,) = watch.wait_for(is_(Result, "crash-1"), timeout=15)[:1]  # results are re-sent until acked
        assert (msg_of(res).state, msg_of(res).code) == ("INTERRUPTED", None)
        assert "leftover processes were killed" in msg_of(res).error and group_alive(pgid) == []
        watch.publish(topics.tasks(aid), task("crash-1", b"echo again"))
        (ack,) = watch.wait_for(is_(Ack, "crash-1", duplicate=True), timeout=10)
        assert msg_of(ack).state == "DONE"
        assert marker.read_text() == "run\n"
    finally:
        killpg_quietly(pgid)
        a.stop()


def test_result_survives_a_10_s_broker_outage(tmp_path, own_broker, prefix, topics):
    a = start_agent(tmp_path / "agent", own_broker.url, prefix)
    try:
        aid = a.agent_id
        with Collector(own_broker.url, [topics.results(aid)]) as c:
            c.publish(topics.tasks(aid), task("outage-1", b"sleep 3; echo survived"))
            c.wait_for(is_(Started, "outage-1"), timeout=10)
        own_broker.stop()
        down_at = time.monotonic()
        assert a.wait_for_log("task_id=outage-1 finished", timeout=20)
        time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the outage itself, not a synchronisation
        own_broker.start()
        with Collector(own_broker.url, [topics.results(aid)]) as c:
            (res,) = c.wait_for(is_(Result, "outage-1"), timeout=45)
            assert msg_of(res).output == b"survived\n"
    finally:
        a.stop()


def test_result_is_resent_until_result_ack(agent, watch, topics):
    aid = agent.agent_id
    watch.publish(topics.tasks(aid), task("resend-1", b"echo x"))
    watch.wait_for(is_(Result, "resend-1"), timeout=15, count=3)  # resend interval 1 s
    watch.publish(topics.control(aid), encode(ResultAck(id="resend-1", agent_id=aid)))
    assert agent.wait_for_log("task_id=resend-1 result acknowledged", timeout=10)
    before = len(watch.wait_for(is_(Result, "resend-1"), timeout=1, count=1))
    n_beats = len(watch.wait_for(is_(Heartbeat, aid), timeout=1))
    watch.wait_for(is_(Heartbeat, aid), timeout=10, count=n_beats + 3)  # three more seconds of agent time
    after = len(watch.wait_for(is_(Result, "resend-1"), timeout=1, count=1))
    assert after <= before + 1  # at most one already in flight when the ack landed


def test_kill_and_timeout_leave_no_descendants(agent, watch, topics, tmp_path):
    aid = agent.agent_id
    trapped = tmp_path / "trapped"
    pgids = []
    try:
        watch.publish(topics.tasks(aid), task("to-1", b"sleep 300 & sleep 300 & wait", timeout=0.5, kill_grace=1))
        (st,) = watch.wait_for(is_(Started, "to-1"), timeout=10)
        pgids.append(msg_of(st).pid)
        (res,) = watch.wait_for(is_(Result, "to-1"), timeout=15)[:1]  # results are re-sent until acked
        assert msg_of(res).state == "TIMEOUT" and group_alive(pgids[0]) == []

        script = f"trap '' TERM; touch {trapped}; sleep 300 & sleep 300 & wait".encode()
        watch.publish(topics.tasks(aid), task("kill-1", script, kill_grace=0.5))
        (st,) = watch.wait_for(is_(Started, "kill-1"), timeout=10)
        pgids.append(msg_of(st).pid)
        wait_until(trapped.exists, timeout=10, what="the script to ignore SIGTERM")
        watch.publish(topics.control(aid), encode(Kill(id="kill-1")))
        (res,) = watch.wait_for(is_(Result, "kill-1"), timeout=15)[:1]  # results are re-sent until acked
        assert msg_of(res).state == "KILLED" and msg_of(res).signal == 9 and group_alive(pgids[1]) == []
    finally:
        for p in pgids:
            killpg_quietly(p)


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_huge_and_binary_output_is_capped_and_agent_memory_stays_bounded(agent, watch, topics):
    aid = agent.agent_id
    script = b"head -c 104857600 /dev/zero | tr '\\0' 'z'; printf '\\377\\376tail' >&2; head -c 3000000 /dev/urandom >&2"
    watch.publish(topics.tasks(aid), task("big-1", script, timeout=120))
    (res,) = watch.wait_for(is_(Result, "big-1"), timeout=90)[:1]  # resent each second: nobody acks it here
    r = msg_of(res)
    assert r.state == "SUCCEED" and r.output_truncated and r.output_bytes == 104857600
    assert len(r.output) == 1024 * 1024 and set(r.output) == {ord("z")}
    assert r.stderr_truncated and r.stderr_bytes == 3000006 and r.stderr.startswith(b"\xff\xfetail")
    (end,) = watch.wait_for(is_(OutputEnd, "big-1"), timeout=10)  # the live output's end marker: every byte counted
    e = msg_of(end)
    assert (e.stdout_bytes, e.stderr_bytes) == (104857600, 3000006)
    import hashlib

    assert e.stdout_sha256 == hashlib.sha256(b"z" * 104857600).hexdigest()
    hwm = vm_hwm_kib(agent.pid)
    print(f"agent VmHWM after a 100 MB stream: {hwm / 1024:.1f} MB")
    assert hwm < 90 * 1024, f"agent peak RSS {hwm} KiB"  # a 100 MB stream never sat in the agent's memory


BAD = [
    (b"{not json", None),
    (orjson.dumps({"type": "task", "payload": {"id": "bad-b64", "script": "@@@"}}), "bad_script"),
    (orjson.dumps({"type": "bogus", "payload": {"id": "bad-type"}}), "bad_message"),
    (orjson.dumps({"type": "task", "payload": {"id": "bad-missing"}}), "bad_script"),
    (orjson.dumps({"type": "task", "payload": {"id": "bad-field", "script": "dHJ1ZQ==", "timeout": -5}}), "bad_message"),
    (orjson.dumps({"type": "task", "payload": {"id": "bad-big", "script": base64.b64encode(b"#" * (4 * 1024 * 1024 + 1)).decode()}}), "too_large"),
]


def test_bad_input_is_rejected_and_the_agent_keeps_running(agent, watch, topics):
    aid = agent.agent_id
    for payload, _ in BAD:
        watch.publish(topics.tasks(aid), payload)
    watch.publish(topics.control(aid), b"\x00\x01 garbage")
    for payload, code in BAD:
        if code is not None:
            task_id = orjson.loads(payload)["payload"]["id"]
            (rej,) = watch.wait_for(is_(Reject, task_id), timeout=10)
            assert msg_of(rej).code == code and msg_of(rej).reason
    watch.publish(topics.tasks(aid), task("good-1", b"echo ok"))
    (res,) = watch.wait_for(is_(Result, "good-1"), timeout=15)[:1]  # results are re-sent until acked
    assert msg_of(res).output == b"ok\n" and agent.running()


def test_expired_task_is_rejected_and_never_run(agent, watch, topics, tmp_path):
    aid = agent.agent_id
    marker = tmp_path / "ran"
    watch.publish(topics.tasks(aid), task("old-1", f"touch {marker}".encode(), expires_at=time.time() - 5))
    (rej,) = watch.wait_for(is_(Reject, "old-1"), timeout=10)
    assert msg_of(rej).code == "expired" and not marker.exists()


def test_sigterm_kills_running_scripts_reports_them_and_keeps_queued_ones(tmp_path, broker, prefix, watch, topics):
    marker = tmp_path / "queued-ran"
    a = start_agent(tmp_path / "agent", broker.url, prefix)
    pgid = None
    try:
        aid = a.agent_id
        watch.publish(topics.tasks(aid), task("term-run", b"sleep 300", kill_grace=1))
        watch.publish(topics.tasks(aid), task("term-queued", f"touch {marker}".encode()))
        (st,) = watch.wait_for(is_(Started, "term-run"), timeout=10)
        pgid = msg_of(st).pid
        watch.wait_for(is_(Ack, "term-queued"), timeout=10)
        assert a.stop() == 0
        (res,) = watch.wait_for(is_(Result, "term-run"), timeout=10)[:1]  # results are re-sent until acked
        assert (msg_of(res).state, msg_of(res).error) == ("KILLED", "agent shutdown")
        assert group_alive(pgid) == [] and not marker.exists()
        a = start_agent(tmp_path / "agent", broker.url, prefix)
        watch.wait_for(is_(Result, "term-queued", state="SUCCEED"), timeout=15)
        assert marker.exists()
    finally:
        killpg_quietly(pgid)
        a.stop()


def test_corrupt_id_file_stops_the_agent_with_exit_2_naming_the_file(tmp_path, broker, prefix):
    state = tmp_path / "agent"
    state.mkdir()
    (state / "agent-id").write_text("garbage\n")
    p = Proc.python("mschedule_agent", "--broker", broker.url, "--state-dir", str(state), "--topic-prefix", prefix,
                    log_path=tmp_path / "log")  # fmt: skip
    p.start()
    try:
        rc = p.proc.wait(20)
    finally:
        p.stop()
    assert rc == 2 and str(state / "agent-id") in p.log()
    assert (state / "agent-id").read_text() == "garbage\n"


def test_console_script_and_module_entry_points_show_help():
    for argv in ([sys.executable, "-m", "mschedule_agent", "--help"], [str(Path(sys.executable).parent / "mschedule-agent"), "--help"]):
        out = subprocess.run(argv, capture_output=True, timeout=30, check=True).stdout
        assert b"--max-tasks" in out and b"--broker" in out


def test_sigterm_while_the_broker_is_unreachable_exits_cleanly(tmp_path):
    from harness.broker import free_port

    p = Proc.python("mschedule_agent", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "a"),
                    log_path=tmp_path / "log")  # fmt: skip
    p.start()
    try:
        assert p.wait_for_log("cannot reach broker", timeout=20)
        p.proc.send_signal(signal.SIGTERM)
        rc = p.proc.wait(20)
    finally:
        p.stop()
    assert rc == 0 and "Traceback" not in p.log()


def test_corrupt_ledger_stops_the_agent_with_exit_2_naming_the_file(tmp_path, broker):
    state = tmp_path / "agent"
    state.mkdir()
    (state / "ledger.sqlite3").write_bytes(b"this is not a database" * 100)
    p = Proc.python("mschedule_agent", "--broker", broker.url, "--state-dir", str(state), log_path=tmp_path / "log")
    p.start()
    try:
        rc = p.proc.wait(20)
    finally:
        p.stop()
    assert rc == 2 and str(state / "ledger.sqlite3") in p.log()


def _make_tls(d: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=30)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=mschedule-test-ca")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip


def test_agent_connects_over_mqtts_with_a_ca_file(tmp_path, prefix):
    from harness.broker import Mosquitto

    require_tools("mosquitto")
    tls = tmp_path / "tls"
    tls.mkdir()
    _make_tls(tls)
    b = Mosquitto(tmp_path / "broker", overrides={
        "certfile": str(tls / "server.crt"), "keyfile": str(tls / "server.key"), "cafile": str(tls / "ca.crt"),
    })  # fmt: skip
    b.start()
    a = None
    try:
        url = f"mqtts://127.0.0.1:{b.port}"
        a = start_agent(tmp_path / "agent", url, prefix, ca_file=str(tls / "ca.crt"))
        out = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "--cafile", str(tls / "ca.crt"),
             "-t", f"{prefix}/agents/{a.agent_id}/status", "-C", "1", "-W", "10"],
            capture_output=True, timeout=20,
        ).stdout  # fmt: skip
        assert isinstance(decode(out.strip()), Register)
    finally:
        if a is not None:
            a.stop()
        b.stop()


def test_config_file_and_environment_reach_the_registration(tmp_path, broker, prefix, watch):
    conf = tmp_path / "agent.toml"
    conf.write_text('max_tasks = 3\nheartbeat = 2\n[labels]\nrole = "db"\nrack = "r1"\n')
    a = start_agent(tmp_path / "agent", broker.url, prefix, labels={"role": "web"}, heartbeat=None, config=str(conf),
                    env={"MSCHEDULE_AGENT_MAX_TASKS": "4"})  # fmt: skip
    try:
        (reg,) = watch.wait_for(is_(Register, a.agent_id), timeout=10)
        r = msg_of(reg)
        assert (r.capacity, r.heartbeat, r.labels) == (4, 2.0, {"role": "web", "rack": "r1"})
    finally:
        a.stop()


def test_capacity_bounds_concurrent_scripts_and_every_task_runs_once(tmp_path, broker, prefix, watch, topics):
    log = tmp_path / "trace"
    a = start_agent(tmp_path / "agent", broker.url, prefix, max_tasks=3)
    try:
        aid = a.agent_id
        ids = [f"cap-{i}" for i in range(15)]
        for tid in ids:  # O_APPEND writes of a few bytes do not interleave
            watch.publish(topics.tasks(aid), task(tid, f'echo "+ $MSCHEDULE_TASK_ID" >> {log}; sleep 0.6; echo - >> {log}'.encode()))
        for tid in ids:
            watch.wait_for(is_(Result, tid, state="SUCCEED"), timeout=60)
    finally:
        a.stop()
    running = peak = 0
    started = []
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("+") else -1
        peak = max(peak, running)
        if line.startswith("+"):
            started.append(line.split()[1])
    assert peak == 3 and sorted(started) == sorted(ids)  # each once, three at a time
    order = [ln.split("task_id=")[1].split()[0] for ln in a.log().splitlines() if " starting" in ln and "task_id=cap-" in ln]
    assert order == ids  # started in the order they arrived


def test_repeated_agent_crashes_lose_no_task_and_run_none_twice(tmp_path, broker, prefix, topics):
    """A mini master re-publishes each task until acked and acks each result, while the
    agent is killed -9 and restarted three times in the middle of the flow."""
    runs = tmp_path / "runs"
    ids = [f"chaos-{i}" for i in range(24)]
    payloads = {tid: task(tid, f"echo $MSCHEDULE_TASK_ID >> {runs}; sleep 0.2".encode()) for tid in ids}
    a = start_agent(tmp_path / "agent", broker.url, prefix, max_tasks=2)
    aid = a.agent_id
    acked: set[str] = set()
    results: dict[str, Result] = {}
    crashes = 0
    try:
        with Collector(broker.url, [topics.results(aid)]) as c:
            deadline = time.monotonic() + 90
            last_publish = 0.0
            seen = 0
            while len(results) < len(ids) and time.monotonic() < deadline:
                for m in c.messages[seen:]:
                    x = msg_of(m)
                    if isinstance(x, Ack):
                        acked.add(x.id)
                    elif isinstance(x, Result) and x.id in payloads:
                        results.setdefault(x.id, x)
                        c.transport.publish(topics.control(aid), encode(ResultAck(id=x.id, agent_id=aid)))
                seen = len(c.messages)
                if time.monotonic() - last_publish > 1.0:  # the master's redeliver interval
                    last_publish = time.monotonic()
                    for tid in ids:
                        if tid not in acked:
                            c.transport.publish(topics.tasks(aid), payloads[tid])
                if crashes < 3 and len(results) >= 5 * (crashes + 1):
                    a.kill9()
                    crashes += 1
                    a = start_agent(tmp_path / "agent", broker.url, prefix, max_tasks=2)
                time.sleep(0.05)  # poll interval of this loop, not a synchronisation
    finally:
        a.stop()
    assert crashes == 3 and set(results) == set(ids), f"missing results: {sorted(set(ids) - set(results))}"
    ran = runs.read_text().split()
    assert len(ran) == len(set(ran)), "a task ran twice"
    for tid, r in results.items():
        assert r.state in ("SUCCEED", "INTERRUPTED"), (tid, r.state)
        if r.state == "SUCCEED":
            assert tid in ran
    interrupted = sorted(t for t, r in results.items() if r.state == "INTERRUPTED")
    print(f"{crashes} crashes: {len(interrupted)} task(s) INTERRUPTED {interrupted}, {len(ran)} runs for {len(ids)} tasks")
