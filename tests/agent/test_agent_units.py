"""Pure pieces of the agent: capture, ledger, identity, host info, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mschedule_agent import config
from mschedule_agent.capture import HeadTail
from mschedule_agent.errors import ConfigError, IdentityError, LedgerError
from mschedule_agent.hostinfo import usable_ipv4
from mschedule_agent.identity import load_or_create_id
from mschedule_agent.ledger import Ledger, LedgerState

# ---------------------------------------------------------------------------- capture

CAPTURE_CASES = [
    # (cap, chunks, expected data, truncated)
    (10, [b"abc"], b"abc", False),
    (10, [b"0123456789"], b"0123456789", False),
    (10, [b"0123456789", b"X"], b"01234" + b"6789X", True),
    (10, [b"01", b"23", b"45", b"67", b"89", b"ab", b"cd"], b"01234" + b"89abcd"[-5:], True),
    (10, [b"x" * 1000, b"END"], b"xxxxx" + b"xxEND", True),
    (0, [b"abc"], b"", True),
    (1, [b"ab"], b"b", True),
]


@pytest.mark.parametrize("cap,chunks,data,truncated", CAPTURE_CASES)
def test_capture_keeps_head_and_tail_within_the_cap(cap, chunks, data, truncated):
    c = HeadTail(cap)
    for ch in chunks:
        c.feed(ch)
    r = c.result()
    assert (r.data, r.truncated, r.total) == (data, truncated, sum(map(len, chunks)))


def test_capture_memory_stays_bounded_on_a_long_stream():
    c = HeadTail(1000)
    for i in range(10_000):
        c.feed(bytes([i % 256]) * 100)
        assert len(c._head) + len(c._tail) <= 3 * 1000
    assert c.result().total == 1_000_000 and len(c.result().data) == 1000


# ---------------------------------------------------------------------------- ledger


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    yield led
    led.close()


def test_ledger_insert_is_idempotent_by_id(ledger):
    assert ledger.insert("t1", LedgerState.ACCEPTED, now=1.0, task=b"x")
    assert not ledger.insert("t1", LedgerState.ACCEPTED, now=2.0, task=b"y")
    assert ledger.get("t1").task == b"x" and ledger.count() == 1


def test_ledger_lifecycle_outbox_and_ack(ledger):
    ledger.insert("t1", LedgerState.ACCEPTED, now=1.0, task=b"x")
    ledger.mark_running("t1", now=2.0)
    ledger.finish("t1", b"result", now=3.0)
    e = ledger.get("t1")
    assert (e.state, e.task, e.result, e.started_at, e.finished_at) == (LedgerState.DONE, None, b"result", 2.0, 3.0)
    assert [x.id for x in ledger.outbox()] == ["t1"]
    assert ledger.ack_result("t1") and not ledger.ack_result("t1")
    assert ledger.outbox() == [] and ledger.get("t1").result is None


@pytest.mark.parametrize(
    "start,move",
    [(LedgerState.DONE, "mark_running"), (LedgerState.EXPIRED, "finish"), (LedgerState.TOMBSTONE, "mark_running")],
)
def test_ledger_refuses_transitions_out_of_final_states(ledger, start, move):
    ledger.insert("t1", start, now=1.0)
    with pytest.raises(LedgerError):
        getattr(ledger, move)("t1", *([b"r"] if move == "finish" else []), now=2.0)
    assert ledger.get("t1").state is start


def test_ledger_survives_reopen_and_prunes_only_old_finished_ids(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    led.insert("old", LedgerState.DONE, now=1.0, result=b"r")
    led.ack_result("old")
    led.insert("old_unacked", LedgerState.DONE, now=1.0, result=b"r")
    led.insert("old_queued", LedgerState.ACCEPTED, now=1.0, task=b"t")
    led.insert("new", LedgerState.DONE, now=100.0, result=b"r")
    led.ack_result("new")
    led.close()
    led = Ledger(tmp_path / "l.sqlite3")
    assert led.unacked_before(50.0) == ["old_unacked"]
    assert led.prune(before=50.0) == 2
    assert led.get("old") is None and led.get("old_unacked") is None
    assert led.get("old_queued") is not None and led.get("new") is not None
    led.close()


def test_a_version_1_ledger_is_migrated_in_place(tmp_path):
    import sqlite3

    path = tmp_path / "l.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "create table tasks (seq integer primary key autoincrement, id text not null unique, state text not null,"
        " received_at real not null, task blob, started_at real, finished_at real, result blob,"
        " result_acked integer not null default 0);"
        "insert into tasks (id, state, received_at, task) values ('old', 'RUNNING', 1.0, x'00');"
        "pragma user_version=1;"
    )
    db.close()
    led = Ledger(path)
    try:
        assert led.get("old").state is LedgerState.RUNNING and led.get("old").pid is None
        led.set_pid("old", 123, "b:1")
        assert (led.get("old").pid, led.get("old").pid_start) == (123, "b:1")
    finally:
        led.close()


def test_a_newer_ledger_is_refused(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "l.sqlite3")
    db.execute("pragma user_version=99")
    db.close()
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "l.sqlite3")


# ---------------------------------------------------------------------------- identity


def test_identity_is_created_once_and_reused(tmp_path):
    path = tmp_path / "sub" / "agent-id"
    first = load_or_create_id(path)
    assert len(first) == 32 and load_or_create_id(path) == first
    assert not [p for p in path.parent.iterdir() if p.name != "agent-id"]  # no temp file left


@pytest.mark.parametrize("content", [b"", b"not-an-id\n", b"\xff\xfe garbage", b"A" * 32])
def test_corrupt_identity_file_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "agent-id"
    path.write_bytes(content)
    with pytest.raises(IdentityError) as e:
        load_or_create_id(path)
    assert str(path) in str(e.value)
    assert path.read_bytes() == content  # never replaced silently


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_identity_file_is_an_error(tmp_path):
    path = tmp_path / "agent-id"
    path.write_text("a" * 32)
    path.chmod(0)
    with pytest.raises(IdentityError):
        load_or_create_id(path)


# ---------------------------------------------------------------------------- host info


def test_usable_ipv4_filters_as_the_design_document_does():
    given = ["10.1.2.3", "127.0.0.1", "169.254.1.1", "224.0.0.1", "240.0.0.1", "0.0.0.0", "::1", "fe80::1%eth0",
             "192.168.1.5", "10.1.2.3", "bogus"]
    assert usable_ipv4(given) == ["10.1.2.3", "192.168.1.5"]


# ---------------------------------------------------------------------------- settings


def test_settings_precedence_is_file_then_environment_then_flags(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text('heartbeat = 7\nmax_tasks = 3\ntopic_prefix = "file"\nbroker = "mqtt://file:1"\n[labels]\nrole = "db"\nzone = "bj"\n')
    env = {"MSCHEDULE_AGENT_MAX_TASKS": "4", "MSCHEDULE_AGENT_TOPIC_PREFIX": "env", "MSCHEDULE_AGENT_LABELS": "zone=sh"}
    s = config.load(["--config", str(f), "--topic-prefix", "flag", "--label", "role=web"], env=env)
    assert (s.heartbeat, s.max_tasks, s.topic_prefix, s.broker) == (7.0, 4, "flag", "mqtt://file:1")
    assert s.labels == {"role": "web", "zone": "sh"}


def test_settings_defaults_and_id_path(tmp_path):
    s = config.load(["--state-dir", str(tmp_path)], env={})
    assert (s.heartbeat, s.max_tasks, s.will_delay, s.output_cap, s.resend) == (5.0, 1, 10, 1024 * 1024, 5.0)
    assert s.id_path == tmp_path / "agent-id"
    assert config.load(["--id-file", "/etc/mschedule/id"], env={}).id_path == Path("/etc/mschedule/id")


@pytest.mark.parametrize(
    "argv,env",
    [
        (["--max-tasks", "0"], {}),
        (["--label", "novalue"], {}),
        (["--broker", "http://x:1"], {}),
        ([], {"MSCHEDULE_AGENT_HEARTBEAT": "often"}),
        ([], {"MSCHEDULE_AGENT_NONSENSE": "1"}),
        (["--output-cap", str(64 * 1024 * 1024)], {}),
    ],
)
def test_bad_settings_raise_config_error(argv, env):
    with pytest.raises(ConfigError):
        config.load(argv, env=env)


@pytest.mark.parametrize(
    "argv, env, toml",
    [
        (["--broker", "mqtt://a:1", "--broker", "mqtt://b:2"], {}, None),  # a repeated flag
        (["--broker", "mqtt://a:1,mqtt://b:2"], {}, None),
        ([], {"MSCHEDULE_AGENT_BROKER": "mqtt://a:1, mqtt://b:2"}, None),
        ([], {}, 'broker = ["mqtt://a:1", "mqtt://b:2"]\n'),
        ([], {}, '[agent]\nbroker = "mqtt://a:1,mqtt://b:2"\n'),
    ],
)
def test_config_takes_several_brokers_from_a_repeated_flag_a_comma_list_or_a_toml_array(tmp_path, argv, env, toml):
    if toml is not None:
        (tmp_path / "agent.toml").write_text(toml)
        argv = [*argv, "--config", str(tmp_path / "agent.toml")]
    assert config.load(argv, env=env).broker == "mqtt://a:1,mqtt://b:2"


@pytest.mark.parametrize(
    "argv, why",
    [
        (["--broker", "mqtt://a:1,mqtts://b:2"], "mix mqtt:// and mqtts://"),
        (["--broker", "mqtt://a:1", "--broker", "mqtt://a:1"], "given twice"),
        (["--broker", " , "], "no broker address"),
    ],
)
def test_config_refuses_a_bad_broker_list_naming_the_broker_setting(argv, why):
    with pytest.raises(ConfigError, match=why) as e:
        config.load(argv, env={})
    assert e.value.source == "broker"


def test_bad_config_file_is_a_config_error(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text("heartbeat = = 3")
    with pytest.raises(ConfigError) as e:
        config.load(["--config", str(f)], env={})
    assert str(f) in str(e.value)


def test_ledger_outbox_ids_and_result_read_one_blob_at_a_time(ledger):
    ledger.insert("a", LedgerState.DONE, now=1.0, result=b"ra")
    ledger.insert("b", LedgerState.TOMBSTONE, now=2.0, result=b"rb")
    ledger.insert("c", LedgerState.EXPIRED, now=3.0)
    assert ledger.outbox_ids() == ["a", "b"]
    ledger.ack_result("a")
    assert ledger.outbox_ids() == ["b"] and ledger.result("a") is None and ledger.result("b") == b"rb"
