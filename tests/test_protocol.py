"""The wire contract (mschedule_agent/protocol.py): every message type round-trips, and
every way a message can be wrong is refused with one DecodeError that says where."""

from __future__ import annotations

import base64
import dataclasses
import types
import typing
from typing import Any, Union

import orjson
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from mschedule_agent import protocol as p
from mschedule_agent.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_OUTPUT_CAP,
    MAX_SCRIPT_BYTES,
    Ack,
    DecodeError,
    Heartbeat,
    Kill,
    MessageTooLarge,
    Offline,
    Progress,
    ProtocolError,
    Register,
    Reject,
    Result,
    ResultAck,
    Started,
    Submit,
    SubmitReply,
    Summary,
    Task,
    TopicError,
    TopicInfo,
    Topics,
    decode,
    decode_as,
    encode,
    parse_percent,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- helpers

#: One fully populated example of every message type (non-default values wherever possible).
EXAMPLES: dict[str, p.Message] = {
    "register": Register(
        id="a1", hostname="web-1", ip=["10.0.0.5", "fe80::1"], labels={"role": "web", "dc": "bj"},
        version="0.1.0", capacity=4, started_at=1700000000.5, heartbeat=2.5,
    ),
    "offline": Offline(id="a1", reason="shutdown", at=1700000100.25),
    "heartbeat": Heartbeat(
        id="a1", hostname="web-1", ip=["10.0.0.5"], ts=1700000001.0, running=["t1", "t2"], queued=3, interval=2.0
    ),
    "task": Task(
        id="t1", script=b"#!/bin/sh\necho hi\n\x00\xff", timeout=30, parallel="25%", fail_rate=0.1, fail_count=3,
        env={"LANG": "C"}, cwd="/tmp", output_cap=1024, expires_at=1700000060.0, kill_grace=1.5,
    ),
    "kill": Kill(id="t1", reason="user abort"),
    "result_ack": ResultAck(id="t1", agent_id="a1"),
    "ack": Ack(id="t1", agent_id="a1", at=1700000002.0, state="DONE", duplicate=True),
    "started": Started(id="t1", agent_id="a1", started_at=1700000003.0, pid=4242),
    "result": Result(
        id="t1", agent_id="a1", state="TIMEOUT", code=137, output=b"head...tail", stderr=b"\xffoops",
        signal=9, output_bytes=100000, stderr_bytes=5, output_truncated=True, stderr_truncated=False,
        started_at=1700000003.0, finished_at=1700000033.5, error="timed out after 30 s",
    ),
    "reject": Reject(id="t1", agent_id="a1", code="expired", reason="received after expires_at"),
    "output": p.OutputChunk(id="t1", agent_id="a1", seq=3, stream="stderr", offset=70000, data=b"\xff\xfe not utf-8\n",
                            skipped=4096),
    "output_end": p.OutputEnd(
        id="t1", agent_id="a1", seq=4, stdout_bytes=10, stderr_bytes=70015, stdout_sha256="a" * 64,
        stderr_sha256="b" * 64, skipped=4096,
    ),
    "submit": Submit(
        targets=["label:role=web", "a1"], script=b"uptime\n", request_id="r1", name="uptime", timeout=10,
        parallel=2, fail_rate="10%", fail_count=1, on_abort="drain", env={"X": "1"}, cwd="/", output_cap=4096,
        delivery_timeout=60,
    ),
    "submit_reply": SubmitReply(ok=False, request_id="r1", task_id=None, targets=[], error="no target", field="targets"),
    "progress": Progress(
        task_id="t1", state="RUNNING", counts={"WAITING": 1, "SUCCEED": 2}, ts=1700000004.0, agent_id="a1",
        target_state="SUCCEED", code=0,
    ),
    "summary": Summary(
        task_id="t1", state="SUCCEED", counts={"SUCCEED": 3}, ts=1700000005.0, reason="all targets done",
        targets={"a1": {"state": "SUCCEED", "code": 0}},
    ),
    "master_status": p.MasterStatus(
        state="online", instance="i1", client_id="mschedule-master", pid=42, host="central-1", at=1700000006.0
    ),
    "master_challenge": p.MasterChallenge(nonce="n1", instance="i2"),
    "master_answer": p.MasterAnswer(
        nonce="n1", instance="i1", client_id="mschedule-master", pid=42, host="central-1", started_at=1700000000.0
    ),
    "signed": p.Signed(kid="ed25519-0123456789abcdef", header='{"protocol":2}', sig=bytes(64), body='{"v":1}'),
}


def wire(type_name: str, payload: dict[str, Any], **envelope: Any) -> bytes:
    return orjson.dumps({"v": 1, "type": type_name, "payload": payload, **envelope})


def payload_of(type_name: str, **changes: Any) -> dict[str, Any]:
    """The wire payload of EXAMPLES[type_name] with some fields replaced (or removed with ...)."""
    out = orjson.loads(encode(EXAMPLES[type_name]))["payload"]
    for name, value in changes.items():
        if value is ...:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def decode_error(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def options(tp: Any) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def required_fields(cls: type) -> list[str]:
    return [
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


ALL_TYPES = sorted(EXAMPLES)
ALL_CLASSES = [type(EXAMPLES[t]) for t in ALL_TYPES]


# --------------------------------------------------------------------------- round trips


def test_master_status_state_is_online_or_offline():
    with pytest.raises(DecodeError) as e:
        p.decode(wire("master_status", payload_of("master_status", state="busy")))
    assert e.value.field == "state"


def test_every_registered_message_type_has_an_example_here():
    assert set(EXAMPLES) == set(p._REGISTRY), "add an example for each new message type"
    assert all(type(m).TYPE == t for t, m in EXAMPLES.items())


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_every_message_type_round_trips_through_the_wire(type_name):
    msg = EXAMPLES[type_name]
    data = encode(msg)
    assert decode(data) == msg
    assert orjson.loads(data)["v"] == p.PROTOCOL_VERSION
    assert orjson.loads(data)["type"] == type_name


@pytest.mark.parametrize(("type_name", "field_name"), [("task", "script"), ("result", "output"),
                                                      ("result", "stderr"), ("submit", "script")])
def test_bytes_fields_travel_as_standard_base64(type_name, field_name):
    msg = EXAMPLES[type_name]
    text = orjson.loads(encode(msg))["payload"][field_name]
    assert isinstance(text, str)
    assert base64.b64decode(text, validate=True) == getattr(msg, field_name)


def test_a_submit_with_plain_text_script_round_trips_and_has_script_bytes():
    msg = Submit(targets=["*"], script_text="echo héllo\n", request_id="r2")
    assert decode(encode(msg)) == msg
    assert msg.script_bytes == "echo héllo\n".encode()
    assert orjson.loads(encode(msg))["payload"]["script"] is None


def test_result_duration_is_finished_minus_started_and_none_when_unknown():
    assert EXAMPLES["result"].duration == pytest.approx(30.5)
    assert Result(id="t", agent_id="a", state="INTERRUPTED", code=None).duration is None


def test_decode_accepts_integers_for_float_fields_and_returns_floats():
    msg = decode(wire("heartbeat", {"id": "a1", "hostname": "h", "ip": [], "ts": 5}))
    assert msg.ts == 5.0 and isinstance(msg.ts, float)


# Hypothesis: a message built from any valid field values round-trips exactly.

_level = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)), min_size=1, max_size=20
)
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _finite | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


def _strategy(tp: Any) -> st.SearchStrategy:
    opts = options(tp)
    if len(opts) > 1:
        return st.one_of([_strategy(o) for o in opts])
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-(2**63), 2**63 - 1)
    if tp is float:
        return _finite
    if tp is str:
        return _text
    if tp is bytes:
        return st.binary(max_size=64)
    if tp is Any:
        return _json
    origin = typing.get_origin(tp)
    if origin is list:
        return st.lists(_strategy(typing.get_args(tp)[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(_text, _strategy(typing.get_args(tp)[1]), max_size=4)
    raise AssertionError(f"no strategy for {tp!r}")


_IDS = {"id", "agent_id", "task_id", "request_id"}
_OVERRIDES: dict[tuple[type, str], st.SearchStrategy] = {
    (Task, "script"): st.binary(min_size=1, max_size=64),
    (Submit, "targets"): st.lists(_level, min_size=1, max_size=3),
    (Submit, "parallel"): st.integers(1, 1000) | st.integers(1, 100).map(lambda n: f"{n}%"),
    (Submit, "fail_rate"): st.none() | st.just(-1.0) | st.floats(0, 1) | st.integers(0, 100).map(lambda n: f"{n}%"),
    (Submit, "fail_count"): st.integers(-1, 10**6),
    (Submit, "on_abort"): st.sampled_from(sorted(p.ON_ABORT)),
    (Result, "script_sha256"): st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    (Result, "state"): st.sampled_from(sorted(p.RESULT_STATES)),
    (Reject, "code"): st.sampled_from(sorted(p.REJECT_CODES)),
    (Register, "state"): st.just("online"),
    (Offline, "state"): st.just("offline"),
}


@st.composite
def messages(draw, cls: type):
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        strategy = _OVERRIDES.get((cls, f.name))
        if strategy is None and f.name in _IDS:
            strategy = _level | st.none() if type(None) in options(tp) else _level
        if strategy is None:
            strategy = _strategy(tp)
        kwargs[f.name] = draw(strategy)
    if cls is Submit:  # exactly one of script / script_text, never empty
        text = draw(st.text(min_size=1, max_size=40))
        use_text = draw(st.booleans())
        kwargs["script"], kwargs["script_text"] = (None, text) if use_text else (text.encode(), None)
        kwargs["job"] = kwargs["version"] = None  # a job submit: test_submit_naming_a_job_*
    try:
        return cls(**kwargs)
    except ValueError:  # a semantic check refused this draw (e.g. capacity 0)
        reject()


@FUZZ
@given(st.sampled_from(ALL_CLASSES).flatmap(messages))
def test_any_valid_message_round_trips_exactly(msg):
    assert decode(encode(msg)) == msg


# --------------------------------------------------------------------------- malformed input

MALFORMED_JSON = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="unterminated object"),
    pytest.param(b"not json", id="plain text"),
    pytest.param(b"\xff\xfe{}", id="not utf-8"),
    pytest.param(b'{"type": "kill", "payload": {"id": "t1"}', id="truncated"),
    pytest.param(b'{"type": "kill", "payload": {"id": "t1"},}', id="trailing comma"),
    pytest.param(b'{"v": NaN, "type": "kill", "payload": {"id": "t1"}}', id="NaN"),
    pytest.param(b'{"type": "heartbeat", "payload": {"ts": 1e400}}', id="infinite number"),
]


@pytest.mark.parametrize("data", MALFORMED_JSON)
def test_malformed_json_is_refused_with_its_raw_bytes(data):
    err = decode_error(data)
    assert "malformed JSON" in str(err)
    assert err.data == data
    assert err.cause is not None


@pytest.mark.parametrize("data", [b"[]", b"1", b'"task"', b"null", b"true", b'[{"type": "kill"}]'])
def test_json_that_is_not_an_object_is_refused(data):
    err = decode_error(data)
    assert "JSON object" in str(err)
    assert err.data == data


ENVELOPE_ERRORS = [
    pytest.param({"payload": {"id": "t1"}}, "type", "no 'type'", id="missing type"),
    pytest.param({"type": 7, "payload": {"id": "t1"}}, "type", "no 'type'", id="type not a string"),
    pytest.param({"type": None, "payload": {"id": "t1"}}, "type", "no 'type'", id="type null"),
    pytest.param({"type": "explode", "payload": {"id": "t1"}}, "type", "unknown message type", id="unknown type"),
    pytest.param({"type": "reg", "payload": {"id": "t1"}}, "type", "unknown message type", id="the prototype's reg"),
    pytest.param({"v": 2, "type": "kill", "payload": {"id": "t1"}}, "v", "version", id="version 2"),
    pytest.param({"v": 0, "type": "kill", "payload": {"id": "t1"}}, "v", "version", id="version 0"),
    pytest.param({"v": "1", "type": "kill", "payload": {"id": "t1"}}, "v", "version", id="version as string"),
    pytest.param({"v": 1.0, "type": "kill", "payload": {"id": "t1"}}, "v", "version", id="version as float"),
    pytest.param({"v": True, "type": "kill", "payload": {"id": "t1"}}, "v", "version", id="version as bool"),
    pytest.param({"v": None, "type": "kill", "payload": {"id": "t1"}}, "v", "version", id="version null"),
    pytest.param({"type": "kill", "payload": {"id": "t1"}, "extra": 1}, "extra", "envelope", id="extra envelope field"),
    pytest.param({"type": "kill"}, "payload", "payload must be", id="missing payload"),
    pytest.param({"type": "kill", "payload": ["t1"]}, "payload", "payload must be", id="payload a list"),
    pytest.param({"type": "kill", "payload": "t1"}, "payload", "payload must be", id="payload a string"),
]


@pytest.mark.parametrize(("doc", "field_name", "text"), ENVELOPE_ERRORS)
def test_a_bad_envelope_is_refused_naming_the_field(doc, field_name, text):
    data = orjson.dumps(doc)
    err = decode_error(data)
    assert err.field == field_name
    assert text in str(err)
    assert err.data == data


def test_an_unknown_type_or_version_still_reports_the_readable_id():
    assert decode_error(wire("explode", {"id": "t9"})).msg_id == "t9"
    assert decode_error(wire("task", {"id": "t9"}, v=2)).msg_id == "t9"
    assert decode_error(wire("explode", {"id": "t9"})).msg_type == "explode"


BAD_BASE64 = [
    pytest.param("task", "script", "!!!!", id="not the alphabet"),
    pytest.param("task", "script", "YWJjZA", id="missing padding"),
    pytest.param("task", "script", "YWJj\nZGVm", id="embedded newline"),
    pytest.param("task", "script", "YWJj ZGVm", id="embedded space"),
    pytest.param("task", "script", "ZWNobyDpCg==é", id="non-ascii"),
    pytest.param("task", "script", "YW-_", id="urlsafe alphabet"),
    pytest.param("result", "output", "%%%%", id="result output"),
    pytest.param("result", "stderr", "a", id="result stderr"),
    pytest.param("submit", "script", "e=cho", id="submit script"),
]


@pytest.mark.parametrize(("type_name", "field_name", "text"), BAD_BASE64)
def test_bad_base64_is_refused_naming_the_field(type_name, field_name, text):
    data = wire(type_name, payload_of(type_name, **{field_name: text}))
    err = decode_error(data)
    assert err.field == field_name
    assert "base64" in str(err)
    assert err.data == data


MISSING = [
    (t, name) for t in ALL_TYPES for name in required_fields(type(EXAMPLES[t])) if (t, name) != ("result", "state")
]


@pytest.mark.parametrize(("type_name", "field_name"), MISSING, ids=[f"{t}.{n}" for t, n in MISSING])
def test_a_missing_required_field_is_refused_naming_it(type_name, field_name):
    err = decode_error(wire(type_name, payload_of(type_name, **{field_name: ...})))
    assert err.field == field_name
    assert "missing" in str(err)
    assert err.msg_type == type_name


def test_a_result_with_neither_state_nor_code_is_refused_as_missing_state():
    err = decode_error(wire("result", payload_of("result", state=..., code=None)))
    assert err.field == "state"


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_an_extra_payload_field_is_refused_naming_it(type_name):
    err = decode_error(wire(type_name, payload_of(type_name, surprise=1)))
    assert err.field == "surprise"
    assert "unknown field" in str(err)


ILL_TYPED = [
    pytest.param("task", "timeout", True, id="bool where number"),
    pytest.param("task", "fail_count", True, id="bool where int"),
    pytest.param("task", "fail_count", 1.5, id="float where int"),
    pytest.param("task", "fail_count", "3", id="string where int"),
    pytest.param("task", "timeout", "30", id="string where float"),
    pytest.param("task", "id", 17, id="number where string"),
    pytest.param("task", "script", 17, id="number where base64"),
    pytest.param("task", "script", None, id="null where required bytes"),
    pytest.param("task", "env", ["LANG=C"], id="list where object"),
    pytest.param("task", "env", {"LANG": 1}, id="number as an env value"),
    pytest.param("task", "parallel", [1], id="list where int-or-string"),
    pytest.param("task", "fail_rate", {}, id="object where rate"),
    pytest.param("register", "ip", "10.0.0.1", id="string where list"),
    pytest.param("register", "ip", [1], id="number in a string list"),
    pytest.param("register", "labels", {"a": None}, id="null in a string map"),
    pytest.param("register", "capacity", 2.0, id="float where int capacity"),
    pytest.param("heartbeat", "ts", None, id="null where required float"),
    pytest.param("heartbeat", "running", "t1", id="string where list of ids"),
    pytest.param("ack", "duplicate", 1, id="int where bool"),
    pytest.param("ack", "duplicate", "true", id="string where bool"),
    pytest.param("result", "code", "0", id="string where exit code"),
    pytest.param("result", "code", False, id="bool where exit code"),
    pytest.param("result", "output_truncated", None, id="null where bool"),
    pytest.param("submit", "targets", "a1", id="string where target list"),
    pytest.param("submit", "targets", None, id="null where target list"),
    pytest.param("submit_reply", "ok", "yes", id="string where ok"),
    pytest.param("progress", "counts", {"SUCCEED": "2"}, id="string count"),
    pytest.param("summary", "counts", [], id="list where counts"),
    pytest.param("kill", "reason", None, id="null where string with a default"),
]


@pytest.mark.parametrize(("type_name", "field_name", "value"), ILL_TYPED)
def test_an_ill_typed_field_is_refused_naming_it(type_name, field_name, value):
    data = wire(type_name, payload_of(type_name, **{field_name: value}))
    err = decode_error(data)
    assert err.field.split("[")[0].split(".")[0] == field_name
    assert err.data == data


NUMBER_FIELDS = [
    (t, f.name) for t in ALL_TYPES for f in dataclasses.fields(type(EXAMPLES[t]))
    if set(options(hints(type(EXAMPLES[t]))[f.name])) & {int, float}
]


@pytest.mark.parametrize(("type_name", "field_name"), NUMBER_FIELDS, ids=[f"{t}.{n}" for t, n in NUMBER_FIELDS])
def test_a_boolean_is_never_taken_for_a_number(type_name, field_name):
    err = decode_error(wire(type_name, payload_of(type_name, **{field_name: True})))
    assert err.field == field_name


NON_NULL_FIELDS = [
    (t, f.name) for t in ALL_TYPES for f in dataclasses.fields(type(EXAMPLES[t]))
    if type(None) not in options(hints(type(EXAMPLES[t]))[f.name])
]


@pytest.mark.parametrize(("type_name", "field_name"), NON_NULL_FIELDS, ids=[f"{t}.{n}" for t, n in NON_NULL_FIELDS])
def test_null_is_refused_where_the_field_is_not_optional(type_name, field_name):
    err = decode_error(wire(type_name, payload_of(type_name, **{field_name: None})))
    assert err.field == field_name
    assert "null" in str(err)


# --------------------------------------------------------------------------- semantic checks

SEMANTIC_ERRORS = [
    pytest.param("submit", {"parallel": 0}, "parallel", id="parallel 0"),
    pytest.param("submit", {"parallel": -3}, "parallel", id="parallel negative"),
    pytest.param("submit", {"parallel": "150%"}, "parallel", id="parallel 150%"),
    pytest.param("submit", {"parallel": "0%"}, "parallel", id="parallel 0%"),
    pytest.param("submit", {"parallel": "5"}, "parallel", id="parallel a bare number string"),
    pytest.param("submit", {"parallel": "many"}, "parallel", id="parallel a word"),
    pytest.param("submit", {"fail_rate": 1.5}, "fail_rate", id="fail_rate 1.5"),
    pytest.param("submit", {"fail_rate": -0.5}, "fail_rate", id="fail_rate -0.5"),
    pytest.param("submit", {"fail_rate": "150%"}, "fail_rate", id="fail_rate 150%"),
    pytest.param("submit", {"fail_rate": "half"}, "fail_rate", id="fail_rate a word"),
    pytest.param("submit", {"fail_count": -2}, "fail_count", id="fail_count -2"),
    pytest.param("submit", {"timeout": -1}, "timeout", id="submit negative timeout"),
    pytest.param("submit", {"on_abort": "explode"}, "on_abort", id="unknown on_abort"),
    pytest.param("submit", {"targets": []}, "targets", id="no targets"),
    pytest.param("submit", {"targets": ["a1", "  "]}, "targets", id="a blank target"),
    pytest.param("submit", {"script": ""}, "script", id="empty base64 script"),
    pytest.param("submit", {"script": None, "script_text": ""}, "script", id="empty script_text"),
    pytest.param("submit", {"script_text": "uptime"}, "script", id="both script and script_text"),
    pytest.param("submit", {"script": None}, "script", id="neither script nor script_text"),
    pytest.param("submit", {"script": ..., "script_text": ...}, "script", id="neither field present"),
    pytest.param("submit", {"request_id": "a/b"}, "request_id", id="request_id with a slash"),
    pytest.param("submit", {"request_id": "+"}, "request_id", id="request_id a wildcard"),
    pytest.param("submit", {"request_id": ""}, "request_id", id="empty request_id"),
    pytest.param("submit", {"delivery_timeout": 0}, "delivery_timeout", id="delivery_timeout 0"),
    pytest.param("submit", {"output_cap": -1}, "output_cap", id="negative submit output cap"),
    pytest.param("submit", {"output_cap": MAX_OUTPUT_CAP + 1}, "output_cap", id="submit output cap too big"),
    pytest.param("task", {"script": ""}, "script", id="empty task script"),
    pytest.param("task", {"timeout": -0.5}, "timeout", id="negative task timeout"),
    pytest.param("task", {"kill_grace": -1}, "kill_grace", id="negative kill grace"),
    pytest.param("task", {"output_cap": MAX_OUTPUT_CAP + 1}, "output_cap", id="task output cap too big"),
    pytest.param("task", {"env": {"A=B": "1"}}, "env", id="env name with ="),
    pytest.param("task", {"env": {"": "1"}}, "env", id="empty env name"),
    pytest.param("task", {"env": {"A": "x\u0000y"}}, "env", id="NUL in an env value"),
    pytest.param("task", {"id": ""}, "id", id="empty task id"),
    pytest.param("task", {"id": "a/b"}, "id", id="task id with a slash"),
    pytest.param("task", {"id": "t+"}, "id", id="task id with +"),
    pytest.param("task", {"id": "#"}, "id", id="task id #"),
    pytest.param("task", {"id": "x" * 129}, "id", id="task id too long"),
    pytest.param("kill", {"id": "a/b"}, "id", id="kill id with a slash"),
    pytest.param("register", {"id": "a+"}, "id", id="agent id with +"),
    pytest.param("register", {"capacity": 0}, "capacity", id="capacity 0"),
    pytest.param("register", {"heartbeat": 0}, "heartbeat", id="heartbeat 0"),
    pytest.param("register", {"state": "offline"}, "state", id="register saying offline"),
    pytest.param("offline", {"state": "online"}, "state", id="offline saying online"),
    pytest.param("offline", {"id": "a#"}, "id", id="offline id with #"),
    pytest.param("heartbeat", {"interval": 0}, "interval", id="heartbeat interval 0"),
    pytest.param("heartbeat", {"queued": -1}, "queued", id="negative queue"),
    pytest.param("heartbeat", {"id": "a/b"}, "id", id="heartbeat id with a slash"),
    pytest.param("ack", {"agent_id": "a/b"}, "agent_id", id="ack agent id with a slash"),
    pytest.param("started", {"id": ""}, "id", id="started with an empty id"),
    pytest.param("result_ack", {"id": "t#"}, "id", id="result_ack id with #"),
    pytest.param("result", {"state": "DONE"}, "state", id="unknown result state"),
    pytest.param("result", {"id": "t/1"}, "id", id="result id with a slash"),
    pytest.param("result", {"output": "YWJj", "output_bytes": 2, "output_truncated": False}, "output_bytes",
                 id="fewer output bytes than carried"),
    pytest.param("result", {"stderr": "YWJj", "stderr_bytes": 1, "stderr_truncated": False}, "stderr_bytes",
                 id="fewer stderr bytes than carried"),
    pytest.param("reject", {"code": "because"}, "code", id="unknown reject code"),
    pytest.param("progress", {"task_id": "t+"}, "task_id", id="progress task id with +"),
    pytest.param("summary", {"task_id": ""}, "task_id", id="empty summary task id"),
]


@pytest.mark.parametrize(("type_name", "changes", "field_name"), SEMANTIC_ERRORS)
def test_a_value_out_of_range_is_refused_naming_the_field(type_name, changes, field_name):
    data = wire(type_name, payload_of(type_name, **changes))
    err = decode_error(data)
    assert err.field == field_name
    assert err.msg_type == type_name
    assert err.data == data


SEMANTIC_OK = [
    pytest.param({"parallel": 1}, id="parallel 1"),
    pytest.param({"parallel": "100%"}, id="parallel 100%"),
    pytest.param({"parallel": " 2.5 % "}, id="parallel 2.5% with spaces"),
    pytest.param({"fail_rate": -1}, id="fail_rate -1 means no limit"),
    pytest.param({"fail_rate": 0}, id="fail_rate 0 allows no failure"),
    pytest.param({"fail_rate": 1}, id="fail_rate 1"),
    pytest.param({"fail_rate": "0%"}, id="fail_rate 0%"),
    pytest.param({"fail_rate": None}, id="fail_rate null"),
    pytest.param({"fail_count": -1}, id="fail_count -1 means no limit"),
    pytest.param({"fail_count": 0}, id="fail_count 0"),
    pytest.param({"timeout": 0}, id="timeout 0 means no limit"),
    pytest.param({"output_cap": 0}, id="output cap 0"),
    pytest.param({"output_cap": MAX_OUTPUT_CAP}, id="output cap at the limit"),
    pytest.param({"request_id": ..., "delivery_timeout": ...}, id="optional fields absent"),
]


@pytest.mark.parametrize("changes", SEMANTIC_OK)
def test_a_submit_at_the_edge_of_the_allowed_range_is_accepted(changes):
    msg = decode(wire("submit", payload_of("submit", **changes)))
    assert isinstance(msg, Submit)
    for name, value in changes.items():
        assert getattr(msg, name) == (None if value is ... else value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("25%", 25.0), (" 2.5 % ", 2.5), ("100%", 100.0), ("0%", 0.0), ("25", None), ("%", None), ("-5%", None),
     ("1e2%", None), ("", None)],
)
def test_parse_percent_reads_only_n_percent(text, expected):
    assert parse_percent(text) == expected


@pytest.mark.parametrize(
    ("build", "field_name"),
    [
        pytest.param(lambda: Heartbeat(id="a", hostname="h", ip=[], ts=float("inf")), "ts", id="infinite ts"),
        pytest.param(lambda: Task(id="t", script=b"x", timeout=float("nan")), "timeout", id="NaN timeout"),
        pytest.param(lambda: Task(id="t", script=b"x", fail_count=2**64), "fail_count", id="int beyond 64 bits"),
        pytest.param(lambda: Task(id="t", script=b"x" * (MAX_SCRIPT_BYTES + 1)), "script", id="script too large"),
        pytest.param(lambda: Submit(targets=["a"], script=b"x", script_text="x"), "script", id="both scripts"),
        pytest.param(lambda: Reject(id="t", agent_id="a", code="nope", reason=""), "code", id="bad reject code"),
    ],
)
def test_a_message_that_could_not_travel_cannot_be_constructed(build, field_name):
    with pytest.raises(ValueError) as info:
        build()
    assert getattr(info.value, "field", None) == field_name


def test_a_result_without_output_bytes_counts_what_it_carries():
    r = Result(id="t", agent_id="a", state="SUCCEED", code=0, output=b"abc", stderr=b"e")
    assert (r.output_bytes, r.stderr_bytes) == (3, 1)
    assert decode(encode(r)) == r


def test_a_truncated_result_keeps_the_total_it_reports():
    r = Result(id="t", agent_id="a", state="FAILED", code=1, output=b"abc", output_bytes=10**6, output_truncated=True)
    assert decode(encode(r)).output_bytes == 10**6


# --------------------------------------------------------------------------- the DecodeError itself


def test_a_decode_error_carries_raw_bytes_type_field_id_and_cause():
    data = wire("task", payload_of("task", timeout=-5))
    err = decode_error(data)
    assert isinstance(err, ProtocolError)
    assert (err.data, err.msg_type, err.field, err.msg_id) == (data, "task", "timeout", "t1")
    assert isinstance(err.cause, ValueError)
    assert err.message == str(err) and "timeout" in str(err)


def test_a_decode_error_has_no_id_when_the_id_is_not_a_string():
    err = decode_error(wire("task", payload_of("task", id=5)))
    assert err.msg_id is None
    assert err.field == "id"


def test_a_task_with_a_bad_script_still_reports_its_id_so_the_agent_can_reject_it():
    err = decode_error(wire("task", payload_of("task", script="***")))
    assert (err.msg_id, err.field) == ("t1", "script")


# --------------------------------------------------------------------------- size limits


def test_encoding_a_message_past_the_limit_raises_message_too_large():
    huge = Result(id="t", agent_id="a", state="SUCCEED", code=0, output=b"x" * (MAX_MESSAGE_BYTES * 3 // 4 + 1))
    with pytest.raises(MessageTooLarge) as info:
        encode(huge)
    assert info.value.size > MAX_MESSAGE_BYTES == info.value.limit
    assert isinstance(info.value, ProtocolError)


def test_a_task_with_the_largest_script_allowed_still_encodes():
    data = encode(Task(id="t", script=b"x" * MAX_SCRIPT_BYTES))
    assert MAX_SCRIPT_BYTES < len(data) <= MAX_MESSAGE_BYTES


def test_decoding_more_than_the_limit_is_refused_before_parsing():
    data = b" " * MAX_MESSAGE_BYTES + encode(EXAMPLES["kill"])
    err = decode_error(data)
    assert "exceeds" in str(err)
    assert err.data == data[:1024]  # the head of the raw bytes, not 16 MiB in an exception


def test_a_task_script_past_the_script_limit_is_refused_on_decode():
    script = base64.b64encode(b"x" * (MAX_SCRIPT_BYTES + 1)).decode()
    err = decode_error(wire("task", {"id": "t1", "script": script}))
    assert err.field == "script"


# --------------------------------------------------------------------------- the design document


def test_the_design_documents_task_json_decodes():
    doc = b"""{"type": "task", "payload": {"id": "task-uuid", "script": "base64encode",
              "timeout": 0, "parallel": 1, "fail_rate": 0, "fail_count": -1}}"""
    msg = decode(doc)
    assert isinstance(msg, Task)
    assert (msg.id, msg.timeout, msg.parallel, msg.fail_rate, msg.fail_count) == ("task-uuid", 0, 1, 0, -1)
    assert msg.script == base64.b64decode("base64encode")


@pytest.mark.parametrize(("code", "state"), [(0, "SUCCEED"), (1, "FAILED"), (127, "FAILED"), (-9, "FAILED")])
def test_the_design_documents_result_json_decodes_with_state_from_code(code, state):
    doc = orjson.dumps({"type": "result", "payload": {"id": "task-uuid", "agent_id": "agent-uuid", "code": code,
                                                      "output": base64.b64encode(b"hello\n").decode()}})
    msg = decode(doc)
    assert isinstance(msg, Result)
    assert (msg.id, msg.agent_id, msg.code, msg.state) == ("task-uuid", "agent-uuid", code, state)
    assert (msg.output, msg.output_bytes) == (b"hello\n", 6)


def test_the_design_documents_register_json_decodes_with_defaults():
    msg = decode(b'{"type": "register", "payload": {"id": "uuid", "hostname": "xxx", "ip": []}}')
    assert msg == Register(id="uuid", hostname="xxx", ip=[])
    assert (msg.capacity, msg.state) == (1, "online")


# --------------------------------------------------------------------------- decode_as


def test_decode_as_returns_a_message_of_an_expected_class():
    assert decode_as(encode(EXAMPLES["kill"]), Task, Kill) == EXAMPLES["kill"]


def test_decode_as_refuses_a_valid_message_of_another_class():
    data = encode(EXAMPLES["result"])
    with pytest.raises(DecodeError) as info:
        decode_as(data, Task, Kill)
    err = info.value
    assert (err.field, err.msg_type, err.msg_id, err.data) == ("type", "result", "t1", data)
    assert "task, kill" in str(err)


def test_decode_as_passes_decode_errors_through():
    with pytest.raises(DecodeError) as info:
        decode_as(b"{", Task)
    assert "malformed" in str(info.value)


# --------------------------------------------------------------------------- bad input never escapes as anything else


@FUZZ
@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_raises_only_decode_error(data):
    try:
        msg = decode(data)
    except DecodeError as e:
        assert e.data == data
    else:
        assert type(msg).TYPE in p._REGISTRY


@FUZZ
@given(
    st.sampled_from(ALL_TYPES),
    st.dictionaries(st.sampled_from(sorted({f.name for c in ALL_CLASSES for f in dataclasses.fields(c)})), _json,
                    max_size=8),
)
def test_decoding_arbitrary_payloads_raises_only_decode_error(type_name, payload):
    data = wire(type_name, payload)
    try:
        msg = decode(data)
    except DecodeError as e:
        assert e.data == data and e.msg_type == type_name
    else:
        assert decode(encode(msg)) == msg


@FUZZ
@given(st.sampled_from(ALL_TYPES), st.data())
def test_changing_one_field_of_a_valid_message_either_decodes_or_raises_decode_error(type_name, data):
    payload = payload_of(type_name)
    name = data.draw(st.sampled_from(sorted(payload)))
    payload[name] = data.draw(_json)
    try:
        msg = decode(wire(type_name, payload))
    except DecodeError as e:
        assert e.field is not None
    else:
        assert decode(encode(msg)) == msg


# --------------------------------------------------------------------------- topics

BUILDERS = [
    ("status", ("a1",), "agents/a1/status"),
    ("heartbeat", ("a1",), "agents/a1/heartbeat"),
    ("tasks", ("a1",), "agents/a1/tasks"),
    ("control", ("a1",), "agents/a1/control"),
    ("results", ("a1",), "results/a1"),
    ("submit", (), "submit"),
    ("submit_reply", ("r1",), "submit/reply/r1"),
    ("task_progress", ("t1",), "tasks/t1/progress"),
    ("task_summary", ("t1",), "tasks/t1/summary"),
]


@pytest.mark.parametrize("prefix", ["mschedule", "t123/mschedule"])
@pytest.mark.parametrize(("method", "args", "suffix"), BUILDERS, ids=[b[0] for b in BUILDERS])
def test_topic_builders_put_the_prefix_in_front(prefix, method, args, suffix):
    assert getattr(Topics(prefix), method)(*args) == f"{prefix}/{suffix}"


def test_the_default_prefix_is_mschedule():
    assert Topics().status("a1") == "mschedule/agents/a1/status"


@pytest.mark.parametrize(("method", "args", "suffix"), BUILDERS[:5], ids=[b[0] for b in BUILDERS[:5]])
def test_a_datacenter_namespace_sits_between_prefix_and_agents(method, args, suffix):
    assert getattr(Topics().dc("bj"), method)(*args) == f"mschedule/dc/bj/{suffix}"


def test_dc_none_is_the_plain_namespace():
    assert Topics().dc(None) == Topics()


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "+", "a#b", "x\x00", "y" * 129])
@pytest.mark.parametrize(("method", "args", "suffix"), [b for b in BUILDERS if b[1]], ids=[b[0] for b in BUILDERS if b[1]])
def test_an_id_that_is_not_one_topic_level_is_refused_by_every_builder(bad, method, args, suffix):
    with pytest.raises(TopicError):
        getattr(Topics(), method)(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#"])
def test_a_bad_datacenter_name_is_refused(bad):
    with pytest.raises(TopicError):
        Topics().dc(bad)


@pytest.mark.parametrize("bad", ["", "/mschedule", "mschedule/", "ms/+", "ms/#", "a\x00"])
def test_a_bad_prefix_is_refused(bad):
    with pytest.raises(TopicError):
        Topics(bad)


PARSE = [
    ("mschedule/agents/a1/status", TopicInfo("status", "a1", None)),
    ("mschedule/agents/a1/heartbeat", TopicInfo("heartbeat", "a1", None)),
    ("mschedule/agents/a1/tasks", TopicInfo("tasks", "a1", None)),
    ("mschedule/agents/a1/control", TopicInfo("control", "a1", None)),
    ("mschedule/results/a1", TopicInfo("results", "a1", None)),
    ("mschedule/submit", TopicInfo("submit", None, None)),
    ("mschedule/dc/bj/agents/a1/status", TopicInfo("status", "a1", "bj")),
    ("mschedule/dc/bj/agents/a1/heartbeat", TopicInfo("heartbeat", "a1", "bj")),
    ("mschedule/dc/sh/results/a2", TopicInfo("results", "a2", "sh")),
    ("other/agents/a1/status", None),
    ("mschedulex/agents/a1/status", None),
    ("mschedule/agents/a1/bogus", None),
    ("mschedule/agents/a1", None),
    ("mschedule/agents//status", None),
    ("mschedule/results/", None),
    ("mschedule/results/a1/extra", None),
    ("mschedule/dc//results/a1", None),
    ("mschedule/dc/bj/submit", None),
    ("mschedule/dc/bj", None),
    ("mschedule/submit/reply/r1", None),
    ("mschedule/tasks/t1/summary", None),
    ("mschedule", None),
]


@pytest.mark.parametrize(("topic", "expected"), PARSE, ids=[t for t, _ in PARSE])
def test_parse_classifies_our_topics_and_ignores_the_rest(topic, expected):
    assert Topics().parse(topic) == expected


def test_parse_answers_again_from_its_bounded_cache(monkeypatch):
    from mschedule_agent import protocol

    monkeypatch.setattr(protocol, "PARSED_KEPT", 3)
    topics = Topics()
    first = [topics.parse(t) for t, _ in PARSE]  # more topics than the cache keeps
    assert first == [e for _, e in PARSE]
    assert [topics.parse(t) for t, _ in PARSE] == first  # the same answers, cached or not
    assert len(topics._parsed) <= 3
    assert topics == Topics() and hash(topics) == hash(Topics())  # the cache is not the value


@FUZZ
@given(_level, st.none() | _level, st.sampled_from(["status", "heartbeat", "tasks", "control", "results"]))
def test_parse_inverts_every_agent_topic_builder(agent_id, dc, kind):
    topics = Topics("ms/x")
    topic = getattr(topics.dc(dc), kind)(agent_id)
    assert topics.parse(topic) == TopicInfo(kind, agent_id, dc)


def test_an_agent_subscribes_to_its_tasks_and_control_only():
    assert Topics().agent_subscriptions("a1") == ["mschedule/agents/a1/tasks", "mschedule/agents/a1/control"]


def test_the_master_subscribes_to_local_and_bridged_agents_and_submit():
    subs = Topics().master_subscriptions()
    assert "mschedule/results/+" in subs and "mschedule/dc/+/results/+" in subs
    assert "mschedule/submit" in subs
    assert all(Topics().parse(s.replace("+", "x")) is not None for s in subs)


# --------------------------------------------------------------------------- jobs (issue 12)


def test_submit_naming_a_job_needs_no_script_nor_targets_and_round_trips():
    msg = Submit(job="deploy.sh", version=2, request_id="r9")
    assert decode(encode(msg)) == msg
    assert decode(b'{"type": "submit", "payload": {"job": "deploy.sh"}}') == Submit(job="deploy.sh")


@pytest.mark.parametrize(
    ("payload", "field_name"),
    [
        pytest.param({"job": "j", "script_text": "x", "targets": ["a"]}, "script", id="job and script"),
        pytest.param({"targets": ["a"]}, "script", id="neither job nor script"),
        pytest.param({"job": "../etc", "targets": ["a"]}, "job", id="bad job name"),
        pytest.param({"job": "j", "version": 0}, "version", id="version 0"),
        pytest.param({"script_text": "x", "targets": ["a"], "version": 1}, "version", id="version without job"),
        pytest.param({"script_text": "x"}, "targets", id="a script still needs targets"),
    ],
)
def test_a_bad_job_submit_names_its_field(payload, field_name):
    with pytest.raises(DecodeError) as info:
        decode(orjson.dumps({"type": "submit", "payload": payload}))
    assert info.value.field == field_name


def test_a_result_reports_the_sha256_of_the_script_it_ran():
    digest = "a" * 64
    r = Result(id="t", agent_id="a", state="SUCCEED", code=0, script_sha256=digest)
    assert decode(encode(r)).script_sha256 == digest
    with pytest.raises(ValueError) as info:
        Result(id="t", agent_id="a", state="SUCCEED", code=0, script_sha256="A" * 64)
    assert info.value.field == "script_sha256"


# --------------------------------------------------------------------------- live output


def test_output_topic_is_per_agent_per_task_and_parses_back_with_the_task():
    t = Topics("prod/ms")
    assert t.output("a1", "t1") == "prod/ms/output/a1/t1"
    info = t.parse("prod/ms/output/a1/t1")
    assert (info.kind, info.agent_id, info.task_id, info.dc) == ("output", "a1", "t1", None)
    info = t.parse("prod/ms/dc/bj/output/a1/t1")
    assert (info.kind, info.agent_id, info.task_id, info.dc) == ("output", "a1", "t1", "bj")
    assert t.parse("prod/ms/output/a1") is None
    assert t.parse("prod/ms/output/a1/t1/x") is None
    assert "prod/ms/output/+/+" in t.output_subscriptions()
    assert not any("output" in s for s in t.master_subscriptions())  # taken at QoS 0, apart


@pytest.mark.parametrize(
    "changes, field_name",
    [({"stream": "stdin"}, "stream"), ({"seq": -1}, "seq"), ({"offset": 5, "skipped": 6}, "skipped"),
     ({"data": "not base64!"}, "data"), ({"id": "a/b"}, "id")],
)  # fmt: skip
def test_a_bad_output_chunk_is_refused_with_its_field(changes, field_name):
    with pytest.raises(p.DecodeError) as e:
        decode(wire("output", payload_of("output", **changes)))
    assert e.value.field == field_name


def test_an_output_end_needs_real_sha256_digests():
    with pytest.raises(p.DecodeError) as e:
        decode(wire("output_end", payload_of("output_end", stdout_sha256="A" * 64)))
    assert e.value.field == "stdout_sha256"


def test_stream_defaults_to_on_and_an_unchanged_submit_keeps_its_old_digest():
    assert decode(wire("task", payload_of("task", stream=...))).stream is True
    s = EXAMPLES["submit"]
    assert s.stream is True
    assert dataclasses.replace(s, stream=False).digest() != s.digest()
    doc = orjson.loads(encode(s))["payload"]
    del doc["stream"]
    del doc["plan"]  # (a later field, left out when null for the same reason)
    doc.update(request_id=None, script=base64.b64encode(s.script_bytes).decode(), script_text=None)
    import hashlib

    assert hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest() == s.digest()


@pytest.mark.parametrize("task_id, agent_id", [("t1", "a1"), ("20261201-abc", "host.example-9"), ("é", "ü")])
def test_the_master_s_result_ack_shortcut_encodes_what_the_message_encodes(task_id, agent_id):
    assert p.encode_result_ack(task_id, agent_id) == p.encode(p.ResultAck(id=task_id, agent_id=agent_id))


@pytest.mark.parametrize("task_id, agent_id", [("", "a1"), ("t/1", "a1"), ("t1", "a+"), ("t1", "#")])
def test_the_master_s_result_ack_shortcut_refuses_what_the_message_refuses(task_id, agent_id):
    with pytest.raises(ValueError) as shortcut:
        p.encode_result_ack(task_id, agent_id)
    with pytest.raises(ValueError) as message:
        p.ResultAck(id=task_id, agent_id=agent_id)
    assert str(shortcut.value) == str(message.value)


# --------------------------------------------------------------------------- decode's own construction


def test_decoded_messages_get_their_own_default_containers_and_the_classes_checks():
    """decode builds messages without the dataclass __init__ (protocol._build): a field left
    out gets a fresh default (never one shared list or dict), and the class's own checks run
    (a result's output_bytes is filled in; a bad state is refused)."""
    wire = b'{"type": "register", "payload": {"id": "a1", "hostname": "h", "ip": []}}'
    one, two = decode(wire), decode(wire)
    assert one == p.Register(id="a1", hostname="h", ip=[]) and one.labels == {}
    assert one.labels is not two.labels
    out = base64.b64encode(b"hello").decode()
    res = decode(orjson.dumps({"type": "result", "payload": {"id": "t", "agent_id": "a", "state": "FAILED", "code": 1, "output": out}}))
    assert res.output == b"hello" and res.output_bytes == 5
    with pytest.raises(DecodeError, match="state"):
        decode(b'{"type": "result", "payload": {"id": "t", "agent_id": "a", "state": "MAYBE", "code": 1}}')
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.code = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "name, value", [("timeout", float("nan")), ("timeout", float("inf")), ("fail_count", 2**64), ("fail_count", -(2**63) - 1)]
)  # fmt: skip
def test_a_payload_not_parsed_by_orjson_still_has_its_numbers_checked(name, value):
    """The HTTP API parses with the standard library, which takes NaN, Infinity and integers
    of any size: from_payload checks them; only decode (orjson refuses all four) skips that."""
    with pytest.raises(DecodeError, match=name):
        p.from_payload(p.Submit, {"targets": ["a"], "script_text": "true", name: value})
