"""Submissions and agent messages that must be refused with a clear answer (issue 10):
retained submits, re-used request ids, foreign response topics, deep nesting, unreadable
rejects and results whose id cannot be a topic level. The in-process master core (rig)."""

from __future__ import annotations

import logging

import pytest

from mschedule_agent import protocol as P
from mschedule_master.models import RequestConflict

SUBMIT = b'{"type":"submit","payload":{"request_id":"r1","targets":["a1"],"script_text":"true"}}'


def _replies(rig, topic="test/submit/reply/r1"):
    return [m for t, m in rig.sent("submit_reply") if t == topic]


def _no_errors(caplog):
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]


def test_a_retained_submit_is_refused_with_a_reason_and_cleared_never_run(rig):
    rig.register("a1")
    rig.sent()
    rig.feed(rig.incoming("test/submit", SUBMIT, retain=True))
    published = rig.transport.take()
    cleared = [p for p in published if p.topic == "test/submit" and p.retain and p.payload == b""]
    assert len(cleared) == 1
    (reply,) = [P.decode(p.payload) for p in published if p.topic == "test/submit/reply/r1"]
    assert (reply.ok, reply.field) == (False, "retain") and "retained" in reply.error
    assert rig.store.list_tasks() == []


def test_the_empty_message_that_clears_a_retained_submit_gets_no_answer(rig):
    rig.sent()
    rig.feed(rig.incoming("test/submit", b"", retain=True))
    assert rig.sent() == []


def test_a_request_id_reused_for_a_different_request_is_refused(rig):
    rig.register("a1")
    first = rig.submit(["a1"], request_id="r1", script_text="echo one")
    with pytest.raises(RequestConflict) as e:
        rig.submit(["a1"], request_id="r1", script_text="echo two")
    assert e.value.field == "request_id" and first.task_id in str(e.value)
    assert rig.submit(["a1"], request_id="r1", script_text="echo one").task_id == first.task_id
    assert len(rig.store.list_tasks()) == 1


def test_a_request_id_reused_over_mqtt_gets_ok_false(rig):
    rig.register("a1")
    rig.feed(rig.incoming("test/submit", SUBMIT))
    (first,) = _replies(rig)
    rig.feed(rig.incoming("test/submit", SUBMIT.replace(b'"true"', b'"false"')))
    (second,) = _replies(rig)
    assert first.ok and (second.ok, second.field) == (False, "request_id")
    rig.feed(rig.incoming("test/submit", SUBMIT))  # the same request again: the first task
    (third,) = _replies(rig)
    assert third.ok and third.task_id == first.task_id


def test_the_same_request_given_as_script_or_script_text_is_the_same_request():
    a = P.Submit(targets=["x"], script_text="true", request_id="r")
    b = P.Submit(targets=["x"], script=b"true", request_id="r", parallel=1)
    assert a.digest() == b.digest() != P.Submit(targets=["x"], script_text="false").digest()


@pytest.mark.parametrize("topic", ["test/agents/a1/tasks", "test/tasks/t1/summary", "elsewhere", "test/submit/reply/"])
def test_a_response_topic_outside_submit_reply_gets_nothing_there(rig, topic, caplog):
    rig.register("a1")
    rig.sent()
    rig.feed(rig.incoming("test/submit", SUBMIT, response_topic=topic, correlation_data=b"c"))
    published = rig.transport.take()
    assert [p.topic for p in published] == ["test/submit/reply/r1"]
    reply = P.decode(published[0].payload)
    assert (reply.ok, reply.field) == (False, "response_topic")
    assert rig.store.list_tasks() == []
    assert any("outside test/submit/reply/" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_on_the_submit_topic_gets_ok_false(rig, depth, caplog):
    payload = b'{"type":"submit","payload":{"request_id":"r1","targets":' + b"[" * depth + b"]" * depth + b"}}"
    rig.sent()
    rig.feed(rig.incoming("test/submit", payload, response_topic="test/submit/reply/deep"))
    (reply,) = _replies(rig, "test/submit/reply/deep")
    assert reply.ok is False and reply.error
    _no_errors(caplog)


@pytest.mark.parametrize("bad_id", ["a/b", "+", "#", "x" * 200])
def test_a_result_whose_id_is_not_a_topic_level_is_refused_without_a_traceback(rig, bad_id, caplog):
    payload = P.to_payload(P.Result(id="t1", agent_id="a9", state="SUCCEED", code=0))
    payload["id"] = bad_id
    data = b'{"type":"result","payload":' + __import__("orjson").dumps(payload) + b"}"
    rig.feed(rig.incoming("test/results/a9", data))
    assert rig.acked[-1] == "test/results/a9"
    assert rig.store.events(kind="bad_message")[0]["agent_id"] == "a9"
    assert rig.sent("result_ack") == []
    _no_errors(caplog)


def test_a_reject_of_an_unreadable_message_is_recorded_without_a_traceback(rig, caplog):
    rig.register("a9")
    rig.from_agent("a9", P.Reject(id=None, agent_id="a9", code="bad_message", reason="malformed JSON"))
    assert rig.acked[-1] == "test/results/a9"
    assert [e["task_id"] for e in rig.store.events(kind="reject_unknown_task")] == [None]
    _no_errors(caplog)


@pytest.mark.parametrize(
    "field, value",
    [("cwd", "/tmp\x00x"), ("env", {"A": "b\x00c"}), ("env", {"A\x00": "b"}), ("env", {"A=B": "c"})],
)
def test_a_cwd_or_env_with_a_nul_is_refused_when_submitted_and_in_a_task(field, value):
    with pytest.raises(P.DecodeError) as e:
        P.from_payload(P.Submit, {"targets": ["x"], "script_text": "true", field: value})
    assert e.value.field == field
    with pytest.raises(P.DecodeError) as e:
        P.from_payload(P.Task, {"id": "t1", "script": "dHJ1ZQ==", field: value})
    assert e.value.field == field


def test_dc_selects_by_the_datacenter_messages_come_from_never_by_a_label_the_agent_gives_itself(rig):
    from mschedule_master.targeting import UnknownSelector, resolve

    rig.register("liar", dc="west")
    rig.register("honest", dc="east")
    agents = rig.registry.agents()
    liar = next(a for a in agents if a.id == "liar")
    agents = [a if a.id != "liar" else type(a)(**{**_fields(a), "labels": {"dc": "east"}}) for a in agents]
    assert resolve(["dc=east"], agents) == ["honest"]
    assert resolve(["dc=west"], agents) == ["liar"]
    with pytest.raises(UnknownSelector):
        resolve(["dc=nowhere"], [liar])
    assert [a.id for a in rig.service.agents(label="dc=east")] == ["honest"]


def _fields(obj):
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_a_batch_of_large_outputs_leaves_no_large_write_ahead_log(rig):
    import os

    from mschedule_master.store import WAL_LIMIT

    for a in ("a1", "a2", "a3", "a4"):
        rig.register(a)
    task_id = rig.submit(["a1", "a2", "a3", "a4"], parallel=4).task_id
    out = b"o" * (4 * 1024 * 1024)
    results = [
        rig.incoming(f"test/results/{a}", P.Result(id=task_id, agent_id=a, state="SUCCEED", code=0, output=out, stderr=out))
        for a in ("a1", "a2", "a3", "a4")
    ]
    rig.feed(*results)  # 32 MiB in one transaction
    assert os.path.getsize(rig.store.path + "-wal") <= WAL_LIMIT
    assert rig.store.get_target(task_id, "a4").stdout == out
