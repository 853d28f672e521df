"""The mschedule wire contract: every message, its encoding, and every topic name.

This is the only module that calls orjson for wire messages, and the only one that
builds or parses topic names. Both daemons import it; it imports nothing of theirs.

A message on the wire is the design document's envelope plus a version::

    {"v": 1, "type": "task", "payload": {"id": "...", "script": "<base64>", ...}}

Each ``type`` maps to one frozen dataclass below. Fields typed ``bytes`` travel as
base64 strings. :func:`decode` validates every field (presence, type, range) and
either returns a complete message or raises :class:`DecodeError` carrying the raw
bytes; nothing partial ever reaches business logic.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import orjson

PROTOCOL_VERSION = 1

#: Largest encoded message either daemon will publish. Mosquitto's ``max_packet_size``
#: in ``deploy/mosquitto`` is 16 MiB; the margin covers topic and MQTT headers.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024 - 64 * 1024

#: Largest script (decoded bytes) a task may carry.
MAX_SCRIPT_BYTES = 4 * 1024 * 1024

#: Largest per-stream output cap a task may ask for; a result carries two streams.
MAX_OUTPUT_CAP = 4 * 1024 * 1024

DEFAULT_PREFIX = "mschedule"


class ProtocolError(Exception):
    """Base class of everything this module raises."""


class DecodeError(ProtocolError):
    """A message could not be decoded. Carries the raw bytes and, when readable,
    the message type, the offending field and the task id (so the receiver can answer)."""

    def __init__(
        self,
        message: str,
        data: bytes,
        cause: BaseException | None = None,
        *,
        field: str | None = None,
        msg_type: str | None = None,
        msg_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.cause = cause
        self.field = field
        self.msg_type = msg_type
        self.msg_id = msg_id

    def __str__(self) -> str:
        return self.message


class MessageTooLarge(ProtocolError):
    """An encoded message is larger than :data:`MAX_MESSAGE_BYTES`."""

    def __init__(self, size: int, limit: int = MAX_MESSAGE_BYTES) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class TopicError(ProtocolError):
    """A name cannot be used as a topic level (empty, or holds '/', '+', '#')."""


# --------------------------------------------------------------------------- states


class TargetState:
    """Names of per-target states, shared by the agent's results and the master's store.

    The master's ``TargetState`` enum uses these same strings; the agent reports only
    the final execution states.
    """

    SUCCEED = "SUCCEED"  #: exit code 0
    FAILED = "FAILED"  #: non-zero exit code, or the script could not be started
    TIMEOUT = "TIMEOUT"  #: killed by the agent after ``timeout`` seconds
    KILLED = "KILLED"  #: killed on request (``kill`` on the control topic)
    INTERRUPTED = "INTERRUPTED"  #: the agent died while it ran; never re-run


RESULT_STATES = frozenset(
    {TargetState.SUCCEED, TargetState.FAILED, TargetState.TIMEOUT, TargetState.KILLED, TargetState.INTERRUPTED}
)

#: Reasons an agent gives in a ``reject``.
REJECT_CODES = frozenset(
    {"bad_message", "bad_script", "too_large", "expired", "killed", "stale_epoch"}
    # an agent that verifies signatures (docs/security.md) refuses with one of these:
    | {"unsigned", "bad_signature", "untrusted_key", "wrong_audience", "downgrade", "not_yet_valid", "unapproved"}
)

#: Fields left out of the wire form when None, so that a peer older than the field still
#: reads the message (decode refuses unknown fields): ``epoch`` is sent only by highly
#: available masters (docs/protocol.md "Leadership epochs"); a ``progress`` carries
#: ``changes`` only when it reports several targets.
_OMITTED_WHEN_NONE = frozenset({"epoch", "changes"})

ON_ABORT = frozenset({"kill", "drain"})

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_percent(value: str) -> float | None:
    """``"25%"`` -> 25.0; anything else -> None."""
    m = _PERCENT.match(value)
    return float(m.group(1)) if m else None


# --------------------------------------------------------------------------- messages

#: type name -> message class; every class made by :func:`message` (all of them are in
#: the :data:`Message` union below).
_REGISTRY: dict[str, type[Message]] = {}
#: message class -> its own ``__post_init__`` check (None without one), which :func:`message`
#: runs after the numbers check; :func:`from_payload` calls it on what it builds.
_OWN_CHECKS: dict[type, Callable[[Any], None] | None] = {}

_M = typing.TypeVar("_M")


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field,))
def message(type_name: str) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: a frozen dataclass that travels as ``{"type": type_name, ...}``.

    Every message also refuses non-finite floats (JSON has no NaN/Infinity: orjson would
    write ``null``) and integers outside 64 bits (orjson cannot write them), so whatever
    can be constructed can be encoded and decoded back.
    (``dataclass_transform`` tells type checkers that the fields are dataclass fields.)
    """

    def wrap(cls: type[_M]) -> type[_M]:
        own_check = cls.__dict__.get("__post_init__")

        def __post_init__(self: object) -> None:
            _check_numbers(self)
            if own_check is not None:
                own_check(self)

        target: Any = cls  # the class is completed here, dynamically: a checker cannot follow it
        target.__post_init__ = __post_init__
        made = dataclass(frozen=True, slots=True)(cls)
        registered = typing.cast("type[Message]", made)  # each message class is in the Message union
        registered.TYPE = type_name
        _REGISTRY[type_name] = registered
        _OWN_CHECKS[made] = own_check
        return made

    return wrap


def _check(cond: bool, field_name: str, text: str) -> None:
    if not cond:
        raise _FieldError(field_name, text)


class _FieldError(ValueError):
    def __init__(self, field_name: str, text: str) -> None:
        super().__init__(text)
        self.field = field_name
        self.text = text


def _topic_level_ok(value: str) -> bool:
    return (
        isinstance(value, str) and 0 < len(value) <= 128
        and "/" not in value and "+" not in value and "#" not in value and "\x00" not in value
    )  # fmt: skip


def _check_env_cwd(env: dict[str, str], cwd: str | None) -> None:
    """What the kernel cannot take (a NUL, a name with '=') is refused before anything runs."""
    for k, v in env.items():
        _check(bool(k) and "=" not in k, "env", f"env name {k!r} must be non-empty, without '='")
        _check("\x00" not in k + v, "env", f"env {k!r} contains a NUL byte")
    _check(cwd is None or "\x00" not in cwd, "cwd", "cwd contains a NUL byte")


def _readable_id(payload: Any) -> str | None:
    """``payload["id"]`` when it can name a topic level (a receiver may answer with it)."""
    value = payload.get("id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and _topic_level_ok(value) else None


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson can write


#: message class -> the names of its fields that may hold a number (dataclasses.fields()
#: on every message built was 6 % of the master's CPU)
_NUMBER_FIELDS: dict[type, tuple[str, ...]] = {}
_TEXTUAL = frozenset({str, bytes, type(None)})


def _number_fields(cls: type) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls) if not _TEXTUAL.issuperset(_options(hints[f.name])))


def _check_numbers(msg: Any) -> None:
    names = _NUMBER_FIELDS.get(type(msg))
    if names is None:
        names = _NUMBER_FIELDS[type(msg)] = _number_fields(type(msg))
    for name in names:
        value = getattr(msg, name)
        kind = type(value)  # the exact types first: isinstance() only for a subclass
        if kind is float or isinstance(value, float):
            _check(math.isfinite(value), name, "must be a finite number")
        elif kind is int or (kind is not bool and isinstance(value, int)):
            _check(_INT_MIN <= value <= _INT_MAX, name, "is out of the 64-bit range")


def _check_id(name: str, value: str) -> None:
    if not _topic_level_ok(value):
        raise _FieldError(name, f"{name} must be a non-empty topic level (no '/', '+', '#')")


def _check_id_pair(task_id: str, agent_id: str) -> None:
    """``_check_ids(id=..., agent_id=...)``, without building a dict (every report has both)."""
    _check_id("id", task_id)
    _check_id("agent_id", agent_id)


def _check_ids(**ids: str) -> None:
    for name, value in ids.items():
        _check_id(name, value)


@message("register")
class Register:
    """Retained on ``<prefix>/agents/<id>/status`` at every (re)connect: the agent is online."""

    TYPE: ClassVar[str]
    id: str
    hostname: str
    ip: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    version: str = ""
    capacity: int = 1  #: how many scripts the agent runs at once
    started_at: float = 0.0  #: epoch seconds the agent process started
    heartbeat: float = 5.0  #: seconds between heartbeats
    state: str = "online"

    def __post_init__(self) -> None:
        _check(_topic_level_ok(self.id), "id", "agent id must be a non-empty topic level")
        _check(self.capacity >= 1, "capacity", "capacity must be >= 1")
        _check(self.heartbeat > 0, "heartbeat", "heartbeat must be > 0")
        _check(self.state == "online", "state", "register state must be 'online'")


@message("offline")
class Offline:
    """Retained on ``<prefix>/agents/<id>/status``: as the last will, or on clean shutdown."""

    TYPE: ClassVar[str]
    id: str
    reason: str = "will"  #: "will" (connection lost) or "shutdown"
    at: float | None = None  #: epoch seconds; None in a last will (written at connect time)
    state: str = "offline"

    def __post_init__(self) -> None:
        _check(_topic_level_ok(self.id), "id", "agent id must be a non-empty topic level")
        _check(self.state == "offline", "state", "offline state must be 'offline'")


@message("heartbeat")
class Heartbeat:
    """Retained on ``<prefix>/agents/<id>/heartbeat`` every ``interval`` seconds."""

    TYPE: ClassVar[str]
    id: str
    hostname: str
    ip: list[str]
    ts: float  #: epoch seconds at the agent
    running: list[str] = field(default_factory=list)  #: task ids running now
    queued: int = 0  #: accepted tasks waiting for a free slot
    interval: float = 5.0

    def __post_init__(self) -> None:
        _check(_topic_level_ok(self.id), "id", "agent id must be a non-empty topic level")
        _check(self.interval > 0, "interval", "interval must be > 0")
        _check(self.queued >= 0, "queued", "queued must be >= 0")


@message("task")
class Task:
    """Master -> agent on ``<prefix>/agents/<id>/tasks``: run this script once.

    ``parallel``, ``fail_rate`` and ``fail_count`` are the design document's rollout
    fields; the agent accepts and ignores them.
    """

    TYPE: ClassVar[str]
    id: str
    script: bytes
    timeout: float = 0  #: seconds; 0 = no limit
    parallel: int | str = 1
    fail_rate: float | str | None = None
    fail_count: int = -1
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    output_cap: int | None = None  #: bytes kept per stream; None = the agent's default
    expires_at: float | None = None  #: epoch seconds; an agent receiving it later refuses it
    kill_grace: float = 5.0  #: seconds between SIGTERM and SIGKILL
    stream: bool = True  #: send the output live while it runs (``output``); False: only in the result
    epoch: int | None = None  #: the sending leader's epoch (HA masters); older than one seen: refused

    def __post_init__(self) -> None:
        _check(_topic_level_ok(self.id), "id", "task id must be a non-empty topic level")
        _check(len(self.script) > 0, "script", "script is empty")
        _check(len(self.script) <= MAX_SCRIPT_BYTES, "script", f"script exceeds {MAX_SCRIPT_BYTES} bytes")
        _check(self.timeout >= 0, "timeout", "timeout must be >= 0 (0 = no limit)")
        _check(self.kill_grace >= 0, "kill_grace", "kill_grace must be >= 0")
        _check(self.epoch is None or self.epoch >= 1, "epoch", "epoch must be >= 1")
        _check(
            self.output_cap is None or 0 <= self.output_cap <= MAX_OUTPUT_CAP,
            "output_cap",
            f"output_cap must be between 0 and {MAX_OUTPUT_CAP}",
        )
        _check_env_cwd(self.env, self.cwd)


@message("kill")
class Kill:
    """Master -> agent on ``<prefix>/agents/<id>/control``: kill this task (or never run it)."""

    TYPE: ClassVar[str]
    id: str
    reason: str = ""
    epoch: int | None = None  #: as Task.epoch

    def __post_init__(self) -> None:
        _check(_topic_level_ok(self.id), "id", "task id must be a non-empty topic level")
        _check(self.epoch is None or self.epoch >= 1, "epoch", "epoch must be >= 1")


@message("result_ack")
class ResultAck:
    """Master -> agent on ``<prefix>/agents/<id>/control``: the result is stored; forget it."""

    TYPE: ClassVar[str]
    id: str
    agent_id: str

    def __post_init__(self) -> None:
        _check_id_pair(self.id, self.agent_id)


@message("ack")
class Ack:
    """Agent -> master on ``<prefix>/results/<id>``: task accepted and durably recorded."""

    TYPE: ClassVar[str]
    id: str
    agent_id: str
    at: float
    state: str = "ACCEPTED"  #: the agent's ledger state: ACCEPTED, RUNNING or DONE
    duplicate: bool = False  #: True when the task id was already known
    #: An agent in signing mode ``audit``: why ``enforce`` would have refused this task ("" = it would not).
    audit: str = ""

    def __post_init__(self) -> None:
        _check_id_pair(self.id, self.agent_id)


@message("started")
class Started:
    """Agent -> master on ``<prefix>/results/<id>``: the script is running."""

    TYPE: ClassVar[str]
    id: str
    agent_id: str
    started_at: float
    pid: int | None = None

    def __post_init__(self) -> None:
        _check_id_pair(self.id, self.agent_id)


@message("result")
class Result:
    """Agent -> master on ``<prefix>/results/<id>``: the design document's result, extended.

    ``code`` is the exit status (0 = success); after a signal death it is 128 + signal
    and ``signal`` holds the signal number. ``code`` is None when the script never ran.
    ``output`` is stdout, ``stderr`` is stderr; each holds at most the task's output cap,
    head and tail kept, with ``*_truncated`` and the total ``*_bytes`` seen.
    """

    TYPE: ClassVar[str]
    id: str
    agent_id: str
    state: str
    code: int | None
    output: bytes = b""
    stderr: bytes = b""
    signal: int | None = None
    output_bytes: int = 0
    stderr_bytes: int = 0
    output_truncated: bool = False
    stderr_truncated: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""  #: why the script could not run / was interrupted, when it applies
    #: sha256 (hex) of the script file the agent wrote and executed; None when none ran
    #: (or from an agent older than this field). The master compares it with the task's.
    script_sha256: str | None = None

    def __post_init__(self) -> None:
        _check_id_pair(self.id, self.agent_id)
        sha = self.script_sha256
        _check(sha is None or is_sha256(sha), "script_sha256", "script_sha256 must be 64 lowercase hex digits")
        if self.state not in RESULT_STATES:
            raise _FieldError("state", f"state must be one of {sorted(RESULT_STATES)}")
        # A count left at 0 (or absent, as in the design document's result) means "what is here".
        _check_stream(self, "output", self.output, self.output_bytes, self.output_truncated)
        _check_stream(self, "stderr", self.stderr, self.stderr_bytes, self.stderr_truncated)

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


def _check_stream(result: Result, name: str, data: bytes, seen: int, truncated: bool) -> None:
    if seen == 0 and data:
        object.__setattr__(result, f"{name}_bytes", len(data))
    elif not truncated and seen < len(data):
        raise _FieldError(f"{name}_bytes", f"{name}_bytes is less than the {name} it carries")
    if seen < 0:
        raise _FieldError(f"{name}_bytes", f"{name}_bytes must be >= 0")


@message("reject")
class Reject:
    """Agent -> master on ``<prefix>/results/<id>``: the task was refused and will not run.

    ``id`` is None when the message was unreadable (not JSON, no usable id): the publisher
    still learns that the agent refused something."""

    TYPE: ClassVar[str]
    id: str | None  #: None: the message could not be read far enough to name its task
    agent_id: str
    code: str  #: one of REJECT_CODES
    reason: str

    def __post_init__(self) -> None:
        _check(self.code in REJECT_CODES, "code", f"code must be one of {sorted(REJECT_CODES)}")


#: The two streams of a script's output, as ``output`` chunks name them.
OUTPUT_STREAMS = ("stdout", "stderr")


@message("output")
class OutputChunk:
    """Agent -> master on ``<prefix>/output/<agent_id>/<task_id>``: a piece of live output.

    ``seq`` counts the task's chunks (both streams) from 0; ``offset`` is where ``data``
    starts in its stream. ``skipped`` bytes of the stream, just before ``offset``, were
    never sent (the agent fell behind and kept the head and a rolling tail): a gap that
    ``skipped`` does not explain was lost on the way, and the final ``result`` fills it.
    """

    TYPE: ClassVar[str]
    id: str  #: the task id
    agent_id: str
    seq: int
    stream: str  #: "stdout" or "stderr"
    offset: int
    data: bytes
    skipped: int = 0

    def __post_init__(self) -> None:
        _check_id_pair(self.id, self.agent_id)
        _check(self.seq >= 0, "seq", "seq must be >= 0")
        _check(self.stream in OUTPUT_STREAMS, "stream", "stream must be stdout or stderr")
        _check(self.offset >= 0, "offset", "offset must be >= 0")
        _check(0 <= self.skipped <= self.offset, "skipped", "skipped must be between 0 and offset")


@message("output_end")
class OutputEnd:
    """Agent -> master on ``<prefix>/output/<agent_id>/<task_id>``: the live output is over.

    The totals and sha256 digests cover every byte each stream produced (sent, skipped or
    lost): a follower holding ``stdout_bytes`` bytes with that digest has the whole stream.
    """

    TYPE: ClassVar[str]
    id: str
    agent_id: str
    seq: int  #: one more than the last chunk's
    stdout_bytes: int
    stderr_bytes: int
    stdout_sha256: str
    stderr_sha256: str
    skipped: int = 0  #: bytes of both streams never sent live

    def __post_init__(self) -> None:
        _check_id_pair(self.id, self.agent_id)
        _check(self.seq >= 0, "seq", "seq must be >= 0")
        for name in ("stdout", "stderr"):
            _check(getattr(self, f"{name}_bytes") >= 0, f"{name}_bytes", f"{name}_bytes must be >= 0")
            sha = getattr(self, f"{name}_sha256")
            _check(is_sha256(sha), f"{name}_sha256", f"{name}_sha256 must be 64 lowercase hex digits")
        _check(self.skipped >= 0, "skipped", "skipped must be >= 0")


_JOB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_job_name(name: str) -> bool:
    """A job name: letters, digits, ``.``, ``_`` and ``-``, not starting with ``.`` or ``-``."""
    return isinstance(name, str) and _JOB_NAME.match(name) is not None and "\n" not in name


def is_sha256(text: str) -> bool:
    return isinstance(text, str) and _SHA256.match(text) is not None and "\n" not in text


@message("submit")
class Submit:
    """User -> master on ``<prefix>/submit``: start a rollout.

    Exactly one of ``script`` (base64 on the wire, as in the design document),
    ``script_text`` (plain text) and ``job`` (a job saved on the master; ``version`` picks
    one, else its default version) is given. With a job, the job's defaults fill the
    fields left at their defaults here (``targets`` may then be empty). ``targets`` are selectors (see
    docs/protocol.md). The reply goes to the MQTT v5 response topic when the request
    has one, else to ``<prefix>/submit/reply/<request_id>``.
    """

    TYPE: ClassVar[str]
    targets: list[str] = field(default_factory=list)  #: required unless ``job`` names a job with targets
    script: bytes | None = None
    script_text: str | None = None
    request_id: str | None = None
    name: str = ""
    timeout: float = 0
    parallel: int | str | None = None  #: None: 1, but not "explicit" (the master's unplanned_target_limit)
    fail_rate: float | str | None = None
    fail_count: int = -1
    on_abort: str = "kill"
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    output_cap: int | None = None
    delivery_timeout: float | None = None  #: seconds for an agent to accept; None = master default
    job: str | None = None  #: run this saved job instead of a script
    version: int | None = None  #: the job's version; None = its default version
    stream: bool = True  #: targets send their output live while it runs; False: only in the result
    #: a rollout plan: text ("1,pause,5,20%,rest") or a list of step objects; the master
    #: checks it (mschedule_master/plan.py, docs/rollout.md "Plans")
    plan: str | list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.script, self.script_text, self.job))
        _check(given == 1, "script", "give exactly one of script, script_text, job")
        if self.job is None:
            _check(self.version is None, "version", "version needs a job")
            _check(len(self.script_bytes) > 0, "script", "script is empty")
            _check(len(self.script_bytes) <= MAX_SCRIPT_BYTES, "script", f"script exceeds {MAX_SCRIPT_BYTES} bytes")
            _check(len(self.targets) > 0, "targets", "targets is empty")
        else:
            _check(is_job_name(self.job), "job", "job must be a name of letters, digits, '.', '_' or '-' (at most 128)")
            _check(self.version is None or self.version >= 1, "version", "version must be >= 1")
        _check(all(t.strip() for t in self.targets), "targets", "a target selector is empty")
        _check(self.request_id is None or _topic_level_ok(self.request_id), "request_id", "bad request_id")
        _check(self.timeout >= 0, "timeout", "timeout must be >= 0 (0 = no limit)")
        if self.parallel is not None:
            validate_parallel(self.parallel)
        validate_fail_rate(self.fail_rate)
        _check(self.plan is None or len(self.plan) > 0, "plan", "plan is empty")
        _check(self.fail_count >= -1, "fail_count", "fail_count must be >= -1 (-1 = no limit)")
        _check(self.on_abort in ON_ABORT, "on_abort", f"on_abort must be one of {sorted(ON_ABORT)}")
        _check(
            self.output_cap is None or 0 <= self.output_cap <= MAX_OUTPUT_CAP,
            "output_cap",
            f"output_cap must be between 0 and {MAX_OUTPUT_CAP}",
        )
        _check(
            self.delivery_timeout is None or self.delivery_timeout > 0, "delivery_timeout", "delivery_timeout must be > 0"
        )
        _check_env_cwd(self.env, self.cwd)

    @property
    def script_bytes(self) -> bytes:
        if self.script is not None:
            return self.script
        return (self.script_text or "").encode()

    def digest(self) -> str:
        """sha256 (hex) of the request in a canonical form: every field but ``request_id``,
        defaults written out, the script as bytes whichever way it came. Two requests with
        one digest ask for the same thing."""
        import hashlib  # here: the agent never needs it (hashlib costs its RSS 1.4-5 MB)

        doc = to_payload(self)
        doc.update(request_id=None, script=_b64(self.script_bytes), script_text=None)
        if self.stream:
            del doc["stream"]  # the default: digests from before the field existed still match
        if doc["parallel"] is None:  # as before the field could be left out: the same request, the same digest
            doc["parallel"] = 1
        if doc["plan"] is None:
            del doc["plan"]
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def validate_parallel(value: int | str) -> None:
    """``parallel`` is an integer >= 1 or ``"N%"`` with 0 < N <= 100."""
    if isinstance(value, str):
        pct = parse_percent(value)
        _check(pct is not None and 0 < pct <= 100, "parallel", "parallel must be an integer >= 1 or 'N%' (0 < N <= 100)")
    else:
        _check(value >= 1, "parallel", "parallel must be an integer >= 1 or 'N%'")


def validate_fail_rate(value: float | str | None) -> None:
    """``fail_rate`` is -1 / None (no limit), a fraction 0..1, or ``"N%"`` with 0 <= N <= 100."""
    if value is None:
        return
    if isinstance(value, str):
        pct = parse_percent(value)
        _check(pct is not None and 0 <= pct <= 100, "fail_rate", "fail_rate must be -1, a fraction 0..1 or 'N%'")
    else:
        _check(value == -1 or 0 <= value <= 1, "fail_rate", "fail_rate must be -1, a fraction 0..1 or 'N%'")


@message("submit_reply")
class SubmitReply:
    """Master -> user: the answer to a ``submit``."""

    TYPE: ClassVar[str]
    ok: bool
    request_id: str | None = None
    task_id: str | None = None
    targets: list[str] = field(default_factory=list)  #: resolved agent ids
    error: str | None = None
    field: str | None = None


@message("progress")
class Progress:
    """Master -> users on ``<prefix>/tasks/<task_id>/progress``: targets changed state.

    One per task per batch the master applied: ``agent_id``, ``target_state`` and ``code``
    are the last change's; ``changes`` (omitted when there is one) holds every target the
    batch changed, agent id -> ``{"state", "code"}``."""

    TYPE: ClassVar[str]
    task_id: str
    state: str  #: the task's state
    counts: dict[str, int]  #: targets per state
    ts: float
    agent_id: str | None = None
    target_state: str | None = None
    code: int | None = None
    changes: dict[str, Any] | None = None  #: agent id -> {state, code}; None (omitted) for one change

    def __post_init__(self) -> None:
        _check_ids(task_id=self.task_id)


@message("summary")
class Summary:
    """Master -> users, retained on ``<prefix>/tasks/<task_id>/summary`` when a task ends."""

    TYPE: ClassVar[str]
    task_id: str
    state: str
    counts: dict[str, int]
    ts: float
    reason: str = ""
    targets: dict[str, Any] = field(default_factory=dict)  #: agent id -> {state, code}

    def __post_init__(self) -> None:
        _check_ids(task_id=self.task_id)


@message("master_status")
class MasterStatus:
    """Master -> masters, retained on ``<prefix>/master/status`` (``offline`` is its last will).

    A master that finds another one ``online`` there refuses to start; one that sees
    another instance take over its client id exits.
    """

    TYPE: ClassVar[str]
    state: str  #: "online" or "offline"
    instance: str  #: random per process
    client_id: str
    pid: int
    host: str
    at: float

    def __post_init__(self) -> None:
        _check(self.state in ("online", "offline"), "state", "state must be 'online' or 'offline'")


@message("master_challenge")
class MasterChallenge:
    """Master -> masters on ``<prefix>/master/challenge``: whoever is online, prove it.

    A retained ``online`` status may be stale (a broker restored from an old snapshot):
    only an answer carrying this fresh ``nonce`` proves that its master is alive.
    """

    TYPE: ClassVar[str]
    nonce: str  #: random per challenge
    instance: str  #: the asking master's instance; answers go to ``<prefix>/master/probe/<instance>``

    def __post_init__(self) -> None:
        _check_ids(nonce=self.nonce, instance=self.instance)


@message("master_answer")
class MasterAnswer:
    """Master -> the challenger on ``<prefix>/master/probe/<instance>``: alive, with its nonce."""

    TYPE: ClassVar[str]
    nonce: str  #: the challenge's nonce
    instance: str  #: the answering master's instance
    client_id: str
    pid: int
    host: str
    started_at: float  #: when the answering master started (the older master yields)

    def __post_init__(self) -> None:
        _check_ids(nonce=self.nonce, instance=self.instance)


#: The version of the signed header (:class:`SignedHeader`). An agent that enforces
#: signatures refuses a header with a lower one (no downgrade); unsigned messages are v1.
SIGNED_PROTOCOL = 2

#: Message types that travel signed to an agent that verifies signatures.
SIGNED_TYPES = frozenset({"task", "kill"})


@message("signed")
class Signed:
    """Master -> agent, on the tasks or control topic: a task or kill with its signature.

    Nothing here is trusted until checked (mschedule_agent/signing.py): ``sig`` is an
    Ed25519 signature over the UTF-8 bytes of ``header`` (checked before ``header`` is
    parsed); the header names the audience, the validity window and the sha256 of
    ``body``, the inner message's wire bytes (checked before ``body`` is parsed).
    """

    TYPE: ClassVar[str]
    kid: str  #: the signer's key id (a lookup hint: the header repeats it, signed)
    header: str  #: JSON text of a SignedHeader; its UTF-8 bytes are what ``sig`` signs
    sig: bytes  #: 64 bytes, base64 on the wire
    body: str  #: the inner task/kill message, exactly as encode() wrote it (UTF-8 JSON text)

    def __post_init__(self) -> None:
        _check(_topic_level_ok(self.kid), "kid", "kid must be a non-empty key id")
        _check(len(self.sig) == 64, "sig", "sig must be 64 bytes (Ed25519)")


@dataclass(frozen=True, slots=True)
class SignedHeader:
    """What a signature covers besides the body's hash: who the message is for and when."""

    protocol: int  #: SIGNED_PROTOCOL of the signer
    kid: str  #: the signing key's id
    type: str  #: the inner message's type: "task" or "kill"
    id: str  #: the inner message's task id
    aud: str  #: the agent id it is for (audience)
    not_before: float  #: epoch seconds
    expires_at: float  #: epoch seconds
    body_sha256: str  #: sha256 (hex) of the body's bytes
    script_sha256: str | None = None  #: sha256 (hex) of a task's script
    #: An operator's approval of the job version the task runs (JSON text of an Approval),
    #: signed offline by ``approval_kid``; agents with ``require_approval`` need it.
    approval: str | None = None
    approval_kid: str | None = None
    approval_sig: bytes | None = None  #: Ed25519 signature of ``approval``'s UTF-8 bytes

    def __post_init__(self) -> None:
        _check_numbers(self)
        _check_ids(id=self.id, aud=self.aud, kid=self.kid)
        parts = (self.approval, self.approval_kid, self.approval_sig)
        _check(all(p is None for p in parts) or all(p is not None for p in parts), "approval",
               "approval, approval_kid and approval_sig go together")  # fmt: skip
        _check(self.type in SIGNED_TYPES, "type", f"type must be one of {sorted(SIGNED_TYPES)}")
        _check(is_sha256(self.body_sha256), "body_sha256", "body_sha256 must be 64 lowercase hex digits")
        sha = self.script_sha256
        _check(sha is None or is_sha256(sha), "script_sha256", "script_sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True, slots=True)
class Approval:
    """What an operator's offline key signs: this job version's script may run."""

    kid: str  #: the operator's key id
    job: str
    version: int
    script_sha256: str
    #: the environment and directory the script runs with: a script's behaviour depends on them
    #: (bash runs functions it finds in BASH_FUNC_* variables), so they are approved with it
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    approves: str = "job_version"

    def __post_init__(self) -> None:
        _check_numbers(self)
        _check_ids(kid=self.kid)
        _check(self.approves == "job_version", "approves", "approves must be 'job_version'")
        _check(is_sha256(self.script_sha256), "script_sha256", "script_sha256 must be 64 lowercase hex digits")


def encode_approval(approval: Approval) -> str:
    return orjson.dumps(to_payload(approval)).decode("utf-8")  # type: ignore[arg-type]


def decode_approval(text: str) -> Approval:
    return _decode_text(Approval, text, "approval", "approval")


def _decode_text(cls: type[_Payload], text: str, what: str, field: str) -> _Payload:
    """A bare JSON object (a signed header, an approval: no envelope) as ``cls``."""
    data = text.encode("utf-8")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"{what}: malformed JSON: {e}", data, e, field=field) from e
    return from_payload(cls, doc, data, from_orjson=True)


def encode_signed(kid: str, header: str, sig: bytes, body_json: bytes) -> bytes:
    """``encode(Signed(kid, header, sig, body))`` when ``body_json`` is ``orjson.dumps(body)``:
    a fan-out escapes its one body once, not once per agent (a test keeps the two equal)."""
    Signed(kid=kid, header=header, sig=sig, body="")  # the same checks
    head = orjson.dumps({"v": PROTOCOL_VERSION, "type": "signed", "payload": {"kid": kid, "header": header,
                                                                               "sig": _b64(sig), "body": ""}})
    assert head.endswith(b'"body":""}}')
    data = head[: -len(b'""}}')] + body_json + b"}}"
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(len(data))
    return data


def json_string(text: str) -> bytes:
    """``text`` as a JSON string (for :func:`encode_signed`)."""
    return orjson.dumps(text)


def encode_header(header: SignedHeader) -> str:
    """The header's JSON text (what is signed, as UTF-8)."""
    return orjson.dumps(to_payload(header)).decode("utf-8")  # type: ignore[arg-type]


def decode_header(text: str) -> SignedHeader:
    """Parse a header whose signature has been verified. Raises DecodeError."""
    return _decode_text(SignedHeader, text, "signed header", "header")



Message = (
    Register
    | Offline
    | Heartbeat
    | Task
    | Kill
    | ResultAck
    | Ack
    | Started
    | Result
    | Reject
    | OutputChunk
    | OutputEnd
    | Submit
    | SubmitReply
    | Progress
    | Summary
    | MasterStatus
    | MasterChallenge
    | MasterAnswer
    | Signed
)

# --------------------------------------------------------------------------- encode / decode

_Msg = typing.TypeVar("_Msg", bound=Message)
_Payload = typing.TypeVar("_Payload")  #: a message, or a signed header or approval (not sent alone)
_Msg2 = typing.TypeVar("_Msg2", bound=Message)
_Msg3 = typing.TypeVar("_Msg3", bound=Message)
_Msg4 = typing.TypeVar("_Msg4", bound=Message)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, name: str) -> bytes:
    if not text:  # most results carry no output
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise _FieldError(name, "not valid base64") from e


class _Schema:
    """Per-class field table built once from the type hints."""

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        self.fields = [f for f in dataclasses.fields(cls)]
        self.types = {f.name: hints[f.name] for f in self.fields}
        self.required = {
            f.name for f in self.fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        self.byte_fields = [n for n, t in self.types.items() if bytes in _options(t)]
        self.options = {n: _options(t) for n, t in self.types.items()}  #: field -> the types it may hold
        self.names = frozenset(self.types)
        #: field -> the JSON value types that _convert_to returns as they are (found by
        #: converting a sample of each): such a value is taken without a call
        self.plain = {n: _plain_types(n, o) for n, o in self.options.items()}
        #: a class made by :func:`message`: (name, slot setter, default, default factory) per
        #: field, for :func:`_build`; None for other classes (built by calling them)
        self.slots: list[tuple[str, Callable[[Any, Any], None], Any, Callable[[], Any] | None]] | None = None
        self.own_check = _OWN_CHECKS.get(cls)
        if cls in _OWN_CHECKS and all(f.init for f in self.fields):
            self.slots = [
                (f.name, cls.__dict__[f.name].__set__, f.default,
                 None if f.default_factory is dataclasses.MISSING else f.default_factory)
                for f in self.fields
            ]  # fmt: skip


_SAMPLES: tuple[Any, ...] = ("x", 1, 1.5, True, None)  #: one value of each JSON scalar type


def _plain_types(name: str, options: tuple[Any, ...]) -> frozenset[type]:
    plain = set()
    for sample in _SAMPLES:
        try:
            if _convert_to(sample, options, name) is sample:
                plain.add(type(sample))
        except (_FieldError, TypeError, ValueError):  # not a value this field takes as it is
            pass
    return frozenset(plain)


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    s = _SCHEMAS.get(cls)
    if s is None:
        s = _SCHEMAS[cls] = _Schema(cls)
    return s


def _options(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` (decoded JSON) against type ``tp``; return it converted."""
    return _convert_to(value, _options(tp), name)


_SCALARS = frozenset({str, int, float, bool})


def _convert_to(value: Any, options: tuple[Any, ...], name: str) -> Any:
    """Check ``value`` against the types ``options`` (a field's, see _Schema); return it converted."""
    kind = type(value)
    if kind is options[0] and kind in _SCALARS:  # what _try_convert would return for the first option
        return value
    if value is None:
        _check(type(None) in options, name, "must not be null")
        return None
    for opt in options:
        ok, out = _try_convert(value, opt, name)
        if ok:
            return out
    raise _FieldError(name, f"has the wrong type ({type(value).__name__})")


def _try_convert(value: Any, opt: Any, name: str) -> tuple[bool, Any]:
    if opt is type(None):
        return False, None
    if opt is bool:
        return isinstance(value, bool), value
    if opt is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if opt is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, None
    if opt is str:
        return isinstance(value, str), value
    if opt is bytes:
        if isinstance(value, str):
            return True, _unb64(value, name)
        return False, None
    origin = typing.get_origin(opt)
    if origin is list:
        (item,) = typing.get_args(opt)
        if not isinstance(value, list):
            return False, None
        return True, [_convert(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(opt)
        if not isinstance(value, dict):
            return False, None
        if vt is Any:
            return True, dict(value)
        return True, {k: _convert(v, vt, f"{name}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported field type {opt!r}")  # a bug in this module, not bad input


def to_payload(msg: Message) -> dict[str, Any]:
    """The ``payload`` object of a message (bytes fields as base64)."""
    s = _schema(type(msg))
    out = {f.name: getattr(msg, f.name) for f in s.fields}
    for name in _OMITTED_WHEN_NONE.intersection(out):
        if out[name] is None:
            del out[name]
    for name in s.byte_fields:
        if out[name] is not None:
            out[name] = _b64(out[name])
    return out


def encode(msg: Message) -> bytes:
    """Encode a message to its wire bytes. Raises MessageTooLarge past MAX_MESSAGE_BYTES."""
    data = orjson.dumps({"v": PROTOCOL_VERSION, "type": msg.TYPE, "payload": to_payload(msg)})
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(len(data))
    return data


def encode_result_ack(task_id: str, agent_id: str) -> bytes:
    """``encode(ResultAck(id=task_id, agent_id=agent_id))``, the same bytes and the same
    checks, without building the message: the master sends one per result it stores."""
    _check_id_pair(task_id, agent_id)
    return orjson.dumps({"v": PROTOCOL_VERSION, "type": "result_ack", "payload": {"id": task_id, "agent_id": agent_id}})


def _result_from_design_document(payload: dict[str, Any]) -> dict[str, Any]:
    """The design document's result has no ``state``: derive it from ``code``
    (0 -> SUCCEED, any other integer -> FAILED). Without a usable code it stays missing."""
    code = payload.get("code")
    if "state" in payload or type(code) is not int:
        return payload
    return {**payload, "state": TargetState.SUCCEED if code == 0 else TargetState.FAILED}


#: Payload rewrites applied before validation, for fields older senders leave out.
_UPGRADES: dict[type, typing.Callable[[dict[str, Any]], dict[str, Any]]] = {
    Result: _result_from_design_document,
}


_UNREAD: Any = object()  #: from_payload's msg_id when its caller has not read it


def _build(cls: type, s: _Schema, payload: dict[str, Any], from_orjson: bool) -> Any:
    """``cls(**converted payload)`` for a message class, with the same checks, in one pass and
    without the frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field: the
    dataclass call was ~40 % of decoding a result). The numbers check is left out for what
    orjson parsed: it yields only finite floats and integers in the 64-bit range it checks."""
    obj: Any = object.__new__(cls)
    options, plain, get = s.options, s.plain, payload.get
    for name, setter, default, factory in s.slots or ():
        value = get(name, _ABSENT)
        if value is _ABSENT:
            value = default if factory is None else factory()
        elif type(value) not in plain[name]:
            value = _convert_to(value, options[name], name)
        setter(obj, value)
    if not from_orjson:
        _check_numbers(obj)
    if s.own_check is not None:
        s.own_check(obj)
    return obj


_ABSENT: Any = object()


def from_payload(
    cls: type[_Payload], payload: Any, data: bytes = b"", msg_id: str | None = _UNREAD, *, from_orjson: bool = False
) -> _Payload:
    """Build and validate a ``cls`` from a payload object (used by decode and the HTTP API);
    ``msg_id``: the payload's readable id when the caller has it already; ``from_orjson``:
    the payload is what orjson parsed (see :func:`_build`)."""
    type_name = getattr(cls, "TYPE", cls.__name__)
    if msg_id is _UNREAD:
        msg_id = _readable_id(payload)
    if not isinstance(payload, dict):
        raise DecodeError("payload must be a JSON object", data, msg_type=type_name, field="payload")
    s = _schema(cls)
    upgrade = _UPGRADES.get(cls)
    if upgrade is not None:
        payload = upgrade(payload)
    try:
        keys = payload.keys()
        if not s.names.issuperset(keys):
            unknown = sorted(set(keys) - s.names)
            raise _FieldError(unknown[0], f"unknown field(s): {', '.join(unknown)}")
        if not s.required.issubset(keys):
            missing = sorted(s.required - set(keys))
            raise _FieldError(missing[0], f"missing field(s): {', '.join(missing)}")
        if s.slots is not None:
            return typing.cast(_Payload, _build(cls, s, payload, from_orjson))
        options, plain = s.options, s.plain
        kwargs = {}
        for name, value in payload.items():  # a value _convert_to would return as it is is taken so
            kwargs[name] = value if type(value) in plain[name] else _convert_to(value, options[name], name)
        return cls(**kwargs)
    except _FieldError as e:
        raise DecodeError(
            f"invalid {type_name}: {e.field}: {e.text}", data, e, field=e.field, msg_type=type_name, msg_id=msg_id
        ) from e


_ENVELOPE = frozenset({"v", "type", "payload"})


def decode(data: bytes) -> Message:
    """Decode wire bytes into one of the message dataclasses, or raise DecodeError."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}", data[:1024])
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"malformed JSON: {e}", data, e) from e
    if not isinstance(doc, dict):
        raise DecodeError("message must be a JSON object", data)
    type_name = doc.get("type")
    payload = doc.get("payload")
    msg_id = _readable_id(payload)
    if not isinstance(type_name, str):
        raise DecodeError("message has no 'type'", data, field="type", msg_id=msg_id)
    version = doc.get("v", PROTOCOL_VERSION)  # the design document's envelope has no version: v1
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {version!r}", data, field="v", msg_type=type_name, msg_id=msg_id)
    extra = sorted(set(doc) - _ENVELOPE) if not _ENVELOPE.issuperset(doc) else None
    if extra:
        raise DecodeError(f"unknown envelope field(s): {', '.join(extra)}", data, field=extra[0], msg_id=msg_id)
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise DecodeError(f"unknown message type {type_name!r}", data, field="type", msg_type=type_name, msg_id=msg_id)
    return from_payload(cls, payload, data, msg_id, from_orjson=True)


def peek(data: bytes, name: str) -> str | None:
    """The string ``payload.<name>`` of a message that may not decode, when it is readable
    (any JSON orjson accepts; anything else, e.g. nesting deeper than its limit, is None)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    payload = doc.get("payload") if isinstance(doc, dict) else None
    value = payload.get(name) if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def peek_text(text: str, name: str) -> str | None:
    """The string field ``name`` of a flat JSON object in ``text``, when readable (used only
    to address a reject to the task an unverifiable signed header claims to be)."""
    try:
        doc = orjson.loads(text.encode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        return None
    value = doc.get(name) if isinstance(doc, dict) else None
    return value if isinstance(value, str) and _topic_level_ok(value) else None


@typing.overload
def decode_as(data: bytes, cls: type[_Msg], /) -> _Msg: ...
@typing.overload
def decode_as(data: bytes, c1: type[_Msg], c2: type[_Msg2], /) -> _Msg | _Msg2: ...
@typing.overload
def decode_as(data: bytes, c1: type[_Msg], c2: type[_Msg2], c3: type[_Msg3], /) -> _Msg | _Msg2 | _Msg3: ...
@typing.overload
def decode_as(
    data: bytes, c1: type[_Msg], c2: type[_Msg2], c3: type[_Msg3], c4: type[_Msg4], /
) -> _Msg | _Msg2 | _Msg3 | _Msg4: ...
@typing.overload
def decode_as(data: bytes, /, *classes: type[_Msg]) -> _Msg: ...
def decode_as(data: bytes, /, *classes: type[Any]) -> Message:
    """Decode and insist on one of ``classes`` (e.g. only Task/Kill on an agent's topics).
    To a type checker the result is of the classes given (their union, for up to four)."""
    wanted: tuple[type[Message], ...] = classes
    msg = decode(data)
    if not isinstance(msg, wanted):
        names = ", ".join(c.TYPE for c in wanted)
        raise DecodeError(
            f"unexpected message type {msg.TYPE!r} here (expected {names})",
            data,
            field="type",
            msg_type=msg.TYPE,
            msg_id=getattr(msg, "id", None),
        )
    return msg


# --------------------------------------------------------------------------- topics


def check_level(name: str, what: str = "name") -> str:
    if not _topic_level_ok(name):
        raise TopicError(f"{what} {name!r} cannot be a topic level")
    return name


#: Topics kept parsed per Topics (emptied when full): the status, heartbeat and results
#: topics of ~33,000 agents, ~27 MB at most. A hit costs 0.08 us, a parse 2.4 us.
PARSED_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic name, built from one prefix (default ``mschedule``).

    Agents always use the plain form. At a central broker, an agent from datacenter
    ``bj`` appears under ``<prefix>/dc/bj/...`` (the edge bridge remaps it); ``dc()``
    gives the Topics for that datacenter.
    """

    prefix: str = DEFAULT_PREFIX
    #: parse()'s answers by topic: a master parses each message's topic, and an agent's
    #: status, heartbeat and results topics come back again and again (bounded: PARSED_KEPT)
    _parsed: dict[str, TopicInfo | None] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "+#\x00") or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise TopicError(f"bad topic prefix {self.prefix!r}")

    def dc(self, name: str | None) -> Topics:
        if name is None:
            return self
        return Topics(f"{self.prefix}/dc/{check_level(name, 'datacenter')}")

    def status(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{check_level(agent_id, 'agent id')}/status"

    def heartbeat(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{check_level(agent_id, 'agent id')}/heartbeat"

    def tasks(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{check_level(agent_id, 'agent id')}/tasks"

    def control(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{check_level(agent_id, 'agent id')}/control"

    def results(self, agent_id: str) -> str:
        return f"{self.prefix}/results/{check_level(agent_id, 'agent id')}"

    def output(self, agent_id: str, task_id: str) -> str:
        """Live output of one task on one agent (``output`` chunks, then ``output_end``)."""
        return f"{self.prefix}/output/{check_level(agent_id, 'agent id')}/{check_level(task_id, 'task id')}"

    def submit(self) -> str:
        return f"{self.prefix}/submit"

    def submit_reply(self, request_id: str) -> str:
        return f"{self.prefix}/submit/reply/{check_level(request_id, 'request id')}"

    def task_progress(self, task_id: str) -> str:
        return f"{self.prefix}/tasks/{check_level(task_id, 'task id')}/progress"

    def task_summary(self, task_id: str) -> str:
        return f"{self.prefix}/tasks/{check_level(task_id, 'task id')}/summary"

    def master_status(self) -> str:
        return f"{self.prefix}/master/status"

    def master_challenge(self) -> str:
        """Where a master asks whoever claims to be online to prove it (``master_challenge``)."""
        return f"{self.prefix}/master/challenge"

    def master_probe(self, instance: str) -> str:
        """A master's start-up probe pings itself here to know the retained status has arrived."""
        return f"{self.prefix}/master/probe/{check_level(instance, 'instance')}"

    # subscriptions -------------------------------------------------------------
    def agent_subscriptions(self, agent_id: str) -> list[str]:
        """What an agent subscribes to on its own broker."""
        return [self.tasks(agent_id), self.control(agent_id)]

    def master_subscriptions(self) -> list[str]:
        """What the master subscribes to: local agents and every bridged datacenter."""
        p = self.prefix
        return [
            f"{p}/agents/+/status",
            f"{p}/agents/+/heartbeat",
            f"{p}/results/+",
            f"{p}/dc/+/agents/+/status",
            f"{p}/dc/+/agents/+/heartbeat",
            f"{p}/dc/+/results/+",
            f"{p}/submit",
        ]

    def output_subscriptions(self) -> list[str]:
        """The master's live-output subscriptions (taken at QoS 0: see docs/protocol.md)."""
        p = self.prefix
        return [f"{p}/output/+/+", f"{p}/dc/+/output/+/+"]

    def parse(self, topic: str) -> TopicInfo | None:
        """Classify a topic under this prefix; None when it is not one of ours."""
        parsed = self._parsed
        try:
            return parsed[topic]
        except KeyError:
            pass
        info = self._parse(topic)
        if len(parsed) >= PARSED_KEPT:
            parsed.clear()
        parsed[topic] = info
        return info

    def _parse(self, topic: str) -> TopicInfo | None:
        p = self.prefix + "/"
        if not topic.startswith(p):
            return None
        parts = topic[len(p):].split("/")
        dc = None
        if len(parts) >= 2 and parts[0] == "dc":
            dc, parts = parts[1], parts[2:]
            if not _topic_level_ok(dc):
                return None
        if len(parts) >= 2 and parts[0] in ("agents", "results") and not _topic_level_ok(parts[1]):
            return None
        if len(parts) == 3 and parts[0] == "agents" and parts[2] in _AGENT_KINDS:
            return TopicInfo(kind=parts[2], agent_id=parts[1], dc=dc)
        if len(parts) == 2 and parts[0] == "results":
            return TopicInfo(kind="results", agent_id=parts[1], dc=dc)
        if len(parts) == 3 and parts[0] == "output" and _topic_level_ok(parts[1]) and _topic_level_ok(parts[2]):
            return TopicInfo(kind="output", agent_id=parts[1], dc=dc, task_id=parts[2])
        if parts == ["submit"] and dc is None:
            return TopicInfo(kind="submit", agent_id=None, dc=None)
        return None


_AGENT_KINDS = frozenset({"status", "heartbeat", "tasks", "control"})


@dataclass(frozen=True, slots=True)
class TopicInfo:
    kind: str  #: status, heartbeat, tasks, control, results, output or submit
    agent_id: str | None
    dc: str | None  #: datacenter the message was bridged from; None = the master's own broker
    task_id: str | None = None  #: the task of an ``output`` topic
