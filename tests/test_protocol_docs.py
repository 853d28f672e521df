"""docs/protocol.md is right: its JSON examples are what the encoder writes, its field tables
match the dataclasses, and every mosquitto_pub/mosquitto_sub one-liner works as written
against a real broker (only the port and the topic prefix are swapped for the test's)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from harness.mqtt import Collector
from mschedule_agent import protocol as p
from mschedule_agent.protocol import (
    Heartbeat,
    Kill,
    Progress,
    Register,
    Result,
    ResultAck,
    Submit,
    SubmitReply,
    Summary,
    Task,
    Topics,
    decode,
    decode_as,
    encode,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TEXT = DOC.read_text()
DEV_PORT = "18830"

#: The ids the doc's one-liners use.
AGENT = "7f3c9a1e2b4d4e0f8a6b5c4d3e2f1a0b"
TASK = "0b9d2c1f6a0e4f5d9c8b7a6f5e4d3c2b"
HAND_TASK = "hand-1764255600"


def fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", TEXT, flags=re.S | re.M)


def one_liners() -> dict[str, str]:
    out = {}
    for block in fenced("sh"):
        first, _, rest = block.partition("\n")
        m = re.fullmatch(r"# example: ([\w-]+)", first.strip())
        assert m, f"a sh block in protocol.md has no '# example: <name>' marker: {block!r}"
        assert m.group(1) not in out, f"two one-liners are named {m.group(1)}"
        out[m.group(1)] = rest
    return out


ONE_LINERS = one_liners()


def localize(cmd: str, port: int, prefix: str) -> str:
    """The doc's command for the test's broker and topic prefix."""
    cmd = cmd.replace(f"-p {DEV_PORT}", f"-p {port}")
    return re.sub(r"(?<![\w/.-])mschedule/", f"{prefix}/", cmd)


# --------------------------------------------------------------------------- static checks


def test_every_json_example_decodes():
    blocks = fenced("json")
    assert len(blocks) >= len(p._REGISTRY)
    for block in blocks:
        assert isinstance(decode(block.encode()), tuple(p._REGISTRY.values())), block


def test_every_versioned_json_example_is_exactly_what_the_encoder_writes():
    versioned = [b for b in fenced("json") if '"v": 1' in b]
    assert versioned
    for block in versioned:
        assert orjson.loads(encode(decode(block.encode()))) == orjson.loads(block), block


def test_every_message_type_has_a_versioned_example_in_the_doc():
    shown = {decode(b.encode()).TYPE for b in fenced("json") if '"v": 1' in b}
    assert shown == set(p._REGISTRY)


def _section_fields(type_name: str) -> list[str]:
    m = re.search(rf"^### `{type_name}`.*?\n(.*?)(?=^##)", TEXT, flags=re.S | re.M)
    assert m, f"no section for {type_name}"
    return re.findall(r"^\| `(\w+)` \|", m.group(1), flags=re.M)


@pytest.mark.parametrize("type_name", sorted(p._REGISTRY))
def test_each_message_section_lists_exactly_the_dataclass_fields_in_order(type_name):
    fields = [f.name for f in dataclasses.fields(p._REGISTRY[type_name])]
    assert _section_fields(type_name) == fields


def test_the_topic_table_names_every_topic_the_builder_makes():
    t = Topics()
    for topic in (t.status("<agent_id>"), t.heartbeat("<agent_id>"), t.tasks("<agent_id>"), t.control("<agent_id>"),
                  t.results("<agent_id>"), t.submit(), t.submit_reply("<request_id>"), t.task_progress("<task_id>"),
                  t.task_summary("<task_id>")):
        assert f"`{topic.replace('mschedule/', 'P/')}`" in TEXT, topic


def test_every_reject_code_is_documented():
    for code in p.REJECT_CODES:
        assert re.search(rf"^\| `{code}` \|", TEXT, flags=re.M), code


def test_every_one_liner_uses_the_dev_broker_port_and_prefix():
    assert ONE_LINERS
    for name, cmd in ONE_LINERS.items():
        for line in cmd.splitlines():
            for tool in re.findall(r"\bmosquitto_(?:pub|sub|rr)\b", line):
                assert f"{tool} -p {DEV_PORT} " in line, (name, line)
        assert "mschedule/" in cmd, name


def test_every_one_liner_is_exercised_by_a_test_here():
    assert set(ONE_LINERS) == set(CHECKS)


# --------------------------------------------------------------------------- running them


class Background:
    """A one-liner running in the background; its stdout lines are collected."""

    def __init__(self, cmd: str, cwd: Path) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["bash", "-c", cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()

    def exit_code(self, timeout: float) -> int:
        """Wait for the one-liner to end and for its last line to be read (the reader thread
        can still hold it when the process has ended)."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def has(self, pred: Callable[[str], bool]) -> bool:
        with self._cond:
            return any(pred(line) for line in self.lines)

    def wait(self, pred: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(pred(line) for line in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._reader.join(5)
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


class Doc:
    """Runs the doc's one-liners against the test's broker, under the test's prefix."""

    def __init__(self, broker, prefix: str, cwd: Path) -> None:
        self.broker = broker
        self.prefix = prefix
        self.topics = Topics(prefix)
        self.cwd = cwd
        self._background: list[Background] = []

    def cmd(self, name: str) -> str:
        return localize(ONE_LINERS[name], self.broker.port, self.prefix)

    def run(self, name: str, timeout: float = 30) -> str:
        r = subprocess.run(["bash", "-c", self.cmd(name)], cwd=self.cwd, capture_output=True, timeout=timeout)
        assert r.returncode == 0, (name, r.returncode, r.stderr.decode(errors="replace"))
        return r.stdout.decode()

    def start(self, name: str) -> Background:
        bg = Background(self.cmd(name), self.cwd)
        self._background.append(bg)
        return bg

    def stop_all(self) -> None:
        for bg in self._background:
            bg.stop()


@pytest.fixture
def doc(broker, prefix, tmp_path):
    d = Doc(broker, prefix, tmp_path)
    try:
        yield d
    finally:
        d.stop_all()


@pytest.fixture
def pub(broker):
    """A client for the test's side: publishes, and records what it subscribed to."""
    with Collector(broker.url, []) as c:
        yield c


def publish_until(c: Collector, bg: Background, topic: str, payload: bytes, seen: Callable[[str], bool], *,
                  retain: bool = False, qos: int = 1, timeout: float = 20) -> None:
    """Publish until the background subscriber shows it (it may not have subscribed yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c.publish(topic, payload, qos=qos, retain=retain)
        if bg.wait(seen, 0.5):
            return
        if bg.proc.poll() is not None:
            break
    raise AssertionError(f"the one-liner never showed {payload[:80]!r} on {topic}")


def verbose_lines(bg: Background) -> list[tuple[str, p.Message]]:
    """``mosquitto_sub -v`` lines as (topic, decoded message); ``(null)`` is how it shows an
    empty payload (a retained message being cleared), not a message."""
    out = []
    with bg._cond:
        lines = list(bg.lines)
    for line in lines:
        topic, _, payload = line.partition(" ")
        if payload != "(null)":
            out.append((topic, decode(payload.encode())))
    return out


def clear_retained(c: Collector, *topics: str) -> None:
    for topic in topics:
        c.publish(topic, b"", retain=True)


def receive(broker, topic: str, run: Callable[[], object], timeout: float = 20):
    """Subscribe to ``topic``, run the one-liner, return the first message it sent there."""
    with Collector(broker.url, [topic]) as c:
        run()
        return c.wait_for(lambda m: True, timeout=timeout)[0]


REGISTER = Register(id=AGENT, hostname="web-1", ip=["10.0.0.5"], labels={"role": "web"}, capacity=2, started_at=1.0)
HEARTBEAT = Heartbeat(id=AGENT, hostname="web-1", ip=["10.0.0.5"], ts=2.0, running=[TASK])
RESULT = Result(id=TASK, agent_id=AGENT, state="SUCCEED", code=0, output=b"hello from the agent\n", started_at=3.0,
                finished_at=4.0)


def check_watch_everything(doc: Doc, pub: Collector, broker) -> None:
    bg = doc.start("watch-everything")
    msg = Kill(id=TASK, reason="checking the doc")
    topic = doc.topics.control(AGENT)
    publish_until(pub, bg, topic, encode(msg), lambda line: line.startswith(topic + " "))
    assert (topic, msg) in verbose_lines(bg)


def check_watch_agents(doc: Doc, pub: Collector, broker) -> None:
    bg = doc.start("watch-agents")
    status, heartbeat = doc.topics.status(AGENT), doc.topics.heartbeat(AGENT)
    try:
        publish_until(pub, bg, status, encode(REGISTER), lambda line: line.startswith(status), retain=True)
        publish_until(pub, bg, heartbeat, encode(HEARTBEAT), lambda line: line.startswith(heartbeat), retain=True,
                      qos=0)
    finally:
        clear_retained(pub, status, heartbeat)
    got = verbose_lines(bg)
    assert (status, REGISTER) in got and (heartbeat, HEARTBEAT) in got


def check_agent_status(doc: Doc, pub: Collector, broker) -> None:
    status = doc.topics.status(AGENT)
    pub.publish(status, encode(REGISTER), retain=True)
    try:
        out = doc.run("agent-status")
    finally:
        clear_retained(pub, status)
    assert decode(out.strip().encode()) == REGISTER


def check_watch_results(doc: Doc, pub: Collector, broker) -> None:
    bg = doc.start("watch-results")
    topic = doc.topics.results(AGENT)
    publish_until(pub, bg, topic, encode(RESULT), lambda line: line.startswith(topic + " "))
    assert (topic, RESULT) in verbose_lines(bg)
    assert doc.topics.parse(topic) == p.TopicInfo("results", AGENT, None)


def check_result_output(doc: Doc, pub: Collector, broker) -> None:
    bg = doc.start("result-output")
    topic = doc.topics.results(AGENT)
    ack = encode(p.Ack(id=TASK, agent_id=AGENT, at=1.0))
    for _ in range(40):  # an ack then a result, until the subscriber shows something
        pub.publish(topic, ack)
        pub.publish(topic, encode(RESULT))
        if bg.wait(lambda line: True, 0.5):
            break
    assert bg.wait(lambda line: True, 0.5)
    assert bg.lines[0] == "hello from the agent"  # the ack before it printed nothing


def check_watch_datacenters(doc: Doc, pub: Collector, broker) -> None:
    bg = doc.start("watch-datacenters")
    bj = doc.topics.dc("bj")
    status, results = bj.status(AGENT), bj.results(AGENT)
    try:
        publish_until(pub, bg, status, encode(REGISTER), lambda line: line.startswith(status), retain=True)
    finally:
        clear_retained(pub, status)
    publish_until(pub, bg, results, encode(RESULT), lambda line: line.startswith(results))
    got = verbose_lines(bg)
    assert (status, REGISTER) in got and (results, RESULT) in got
    assert {doc.topics.parse(t).dc for t, _ in got} == {"bj"}


def check_submit_with_request_id(doc: Doc, pub: Collector, broker) -> None:
    """Play the master: take the submit the one-liner publishes, answer on the reply topic
    the other one-liner watches."""
    incoming = receive(broker, doc.topics.submit(), lambda: doc.run("submit-with-request-id"))
    submit = decode_as(incoming.payload, Submit)
    assert (submit.request_id, submit.targets, submit.script_bytes) == ("req-42", ["role=web"], b"uptime")
    assert (submit.parallel, submit.fail_count, submit.fail_rate) == ("50%", 0, None)
    reply = SubmitReply(ok=True, request_id="req-42", task_id=TASK, targets=[AGENT])
    bg = doc.start("submit-reply-watch")
    publish_until(pub, bg, doc.topics.submit_reply("req-42"), encode(reply), lambda line: bool(line))
    assert bg.exit_code(10) == 0
    assert decode(bg.lines[0].encode()) == reply


#: submit-reply-watch is exercised by the same check (it watches for that submit's reply).
check_submit_reply_watch = check_submit_with_request_id


def check_submit_with_response_topic(doc: Doc, pub: Collector, broker) -> None:
    incoming = receive(broker, doc.topics.submit(), lambda: doc.run("submit-with-response-topic"))
    assert incoming.response_topic == f"{doc.prefix}/submit/reply/alice"
    assert incoming.correlation_data == b"job-1"
    submit = decode_as(incoming.payload, Submit)
    assert (submit.targets, submit.script, submit.script_text, submit.parallel) == (["all"], b"uptime\n", None, 2)


def check_submit_and_wait(doc: Doc, pub: Collector, broker) -> None:
    with Collector(broker.url, [doc.topics.submit()]) as master:
        bg = doc.start("submit-and-wait")
        incoming = master.wait_for(lambda m: True, timeout=20)[0]
        submit = decode_as(incoming.payload, Submit)
        assert submit.script == b"uname -a; uptime\n"
        assert (submit.targets, submit.parallel, submit.fail_rate, submit.timeout) == (["all"], "25%", 0.1, 300)
        assert incoming.response_topic.startswith(f"{doc.prefix}/submit/reply/rr-")
        reply = SubmitReply(ok=True, task_id=TASK, targets=[AGENT])
        master.publish(incoming.response_topic, encode(reply), correlation_data=incoming.correlation_data)
        assert bg.exit_code(30) == 0
    assert decode(bg.lines[0].encode()) == reply


def check_follow_task(doc: Doc, pub: Collector, broker) -> None:
    bg = doc.start("follow-task")
    progress = Progress(task_id=TASK, state="RUNNING", counts={"RUNNING": 1}, ts=5.0, agent_id=AGENT,
                        target_state="RUNNING")
    summary = Summary(task_id=TASK, state="SUCCEED", counts={"SUCCEED": 1}, ts=6.0)
    p_topic, s_topic = doc.topics.task_progress(TASK), doc.topics.task_summary(TASK)
    publish_until(pub, bg, p_topic, encode(progress), lambda line: line.startswith(p_topic))
    try:
        publish_until(pub, bg, s_topic, encode(summary), lambda line: line.startswith(s_topic), retain=True)
    finally:
        clear_retained(pub, s_topic)
    got = verbose_lines(bg)
    assert (p_topic, progress) in got and (s_topic, summary) in got


def check_wait_for_summary(doc: Doc, pub: Collector, broker) -> None:
    summary = Summary(task_id=TASK, state="FAILED", counts={"FAILED": 1, "SUCCEED": 2}, ts=7.0,
                      reason="fail_count 0 exceeded", targets={AGENT: {"state": "FAILED", "code": 3}})
    topic = doc.topics.task_summary(TASK)
    pub.publish(topic, encode(summary), retain=True)
    try:
        out = doc.run("wait-for-summary")
    finally:
        clear_retained(pub, topic)
    assert decode(out.strip().encode()) == summary


def check_publish_task(doc: Doc, pub: Collector, broker) -> None:
    incoming = receive(broker, f"{doc.prefix}/agents/+/tasks", lambda: doc.run("publish-task"))
    task = decode_as(incoming.payload, Task, Kill)
    assert isinstance(task, Task)
    assert doc.topics.parse(incoming.topic) == p.TopicInfo("tasks", AGENT, None)
    assert re.fullmatch(r"hand-\d+", task.id)
    assert (task.script, task.timeout, task.expires_at) == (b"uname -a; uptime\n", 60, None)


def check_result_ack(doc: Doc, pub: Collector, broker) -> None:
    incoming = receive(broker, doc.topics.control(AGENT), lambda: doc.run("result-ack"))
    assert decode_as(incoming.payload, Kill, ResultAck) == ResultAck(id=HAND_TASK, agent_id=AGENT)


def check_kill_task(doc: Doc, pub: Collector, broker) -> None:
    incoming = receive(broker, doc.topics.control(AGENT), lambda: doc.run("kill-task"))
    assert decode_as(incoming.payload, Kill, ResultAck) == Kill(id=HAND_TASK, reason="by hand")


def check_forget_agent(doc: Doc, pub: Collector, broker) -> None:
    status, heartbeat = doc.topics.status(AGENT), doc.topics.heartbeat(AGENT)
    pub.publish(status, encode(REGISTER), retain=True)
    pub.publish(heartbeat, encode(HEARTBEAT), retain=True)
    doc.run("forget-agent")
    probe = f"{doc.prefix}/probe/{uuid.uuid4().hex}"
    with Collector(broker.url, [status, heartbeat, probe]) as c:
        c.publish(probe, b"probe")  # retained messages arrive before it, if there are any
        c.wait_for(lambda m: m.topic == probe)
        assert [m.topic for m in c.messages] == [probe]


CHECKS: dict[str, Callable[[Doc, Collector, object], None]] = {
    "watch-everything": check_watch_everything,
    "watch-agents": check_watch_agents,
    "agent-status": check_agent_status,
    "watch-results": check_watch_results,
    "result-output": check_result_output,
    "watch-datacenters": check_watch_datacenters,
    "submit-reply-watch": check_submit_reply_watch,
    "submit-with-request-id": check_submit_with_request_id,
    "submit-with-response-topic": check_submit_with_response_topic,
    "submit-and-wait": check_submit_and_wait,
    "follow-task": check_follow_task,
    "wait-for-summary": check_wait_for_summary,
    "publish-task": check_publish_task,
    "result-ack": check_result_ack,
    "kill-task": check_kill_task,
    "forget-agent": check_forget_agent,
}


def require_tools(cmd: str) -> None:
    """The clients the one-liner calls; under CI a missing one fails the run, never skips it."""
    from harness.require import require_tools as require

    require(*(t for t in ("mosquitto_pub", "mosquitto_sub", "mosquitto_rr", "jq") if t in cmd),
            why="the doc's one-liners call them")  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(CHECKS) - {"submit-reply-watch"}))
def test_the_one_liner_works_as_written(name, doc, pub, broker):
    cmds = ONE_LINERS[name]
    if name == "submit-with-request-id":  # its check runs submit-reply-watch too
        cmds += ONE_LINERS["submit-reply-watch"]
    require_tools(cmds)
    CHECKS[name](doc, pub, broker)
