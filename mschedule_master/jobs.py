"""Jobs: saved scripts with immutable versions (the design document's 4th requirement).

This module is the pure domain: what a job's content is, its canonical form and sha256,
its defaults (the ``submit`` fields a run takes from the job), the diff between two
versions, and the job files of ``mschedule job push``/``pull`` (a script, and its
defaults in a TOML side file ``<script>.toml``: see docs/jobs.md). No I/O but the
directory read/write helpers at the end; the store side is :mod:`.jobstore`.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mschedule_agent import protocol
from mschedule_agent.protocol import MAX_SCRIPT_BYTES, DecodeError, Submit, is_job_name

from . import plan

#: The ``submit`` fields a job may give defaults for, in the order they are shown.
DEFAULT_FIELDS = (
    "targets", "name", "timeout", "parallel", "fail_rate", "fail_count", "on_abort", "env", "cwd", "output_cap",
    "delivery_timeout", "plan",
)  # fmt: skip

#: Target states a ``rerun --failed`` runs again: failed, or never run to the end.
RERUN_STATES = frozenset({"FAILED", "TIMEOUT", "KILLED", "INTERRUPTED", "LOST", "UNREACHABLE", "REJECTED", "CANCELLED"})

#: Files in a jobs directory that are not job scripts.
SIDE_SUFFIX = ".toml"
_NOT_JOBS = (".md", ".txt", SIDE_SUFFIX)


class JobError(ValueError):
    """Bad job content; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class JobFileError(JobError):
    """A job file that cannot be loaded: the message names the file and the line."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}", "defaults")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True, slots=True)
class JobContent:
    """What a save stores: the script, a description and the defaults. Versions of equal
    content have equal :attr:`sha256`."""

    script: bytes
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def script_sha256(self) -> str:
        return hashlib.sha256(self.script).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(canonical(self)).hexdigest()


@dataclass(frozen=True, slots=True)
class Version:
    """One immutable version of a job."""

    job: str
    version: int
    content: JobContent
    content_sha256: str
    script_sha256: str
    author: str
    message: str
    created_at: float


@dataclass(frozen=True, slots=True)
class JobSummary:
    name: str
    latest: int
    default_version: int | None  #: pinned default; None = the latest
    description: str
    updated_at: float  #: when the latest version was saved
    author: str  #: who saved the latest version

    @property
    def effective_default(self) -> int:
        return self.default_version or self.latest


def canonical(content: JobContent) -> bytes:
    """The bytes whose sha256 identifies a job's content (key order and number spelling
    do not matter: the defaults are normalised first)."""
    doc = {"description": content.description, "defaults": content.defaults, "script_sha256": content.script_sha256}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_name(name: str) -> str:
    if not is_job_name(name):
        raise JobError(f"bad job name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)", "name")
    return name


def make_content(script: bytes, description: str = "", defaults: dict[str, Any] | None = None) -> JobContent:
    """Validated, normalised content. Raises JobError."""
    if not script:
        raise JobError("script is empty", "script")
    if len(script) > MAX_SCRIPT_BYTES:
        raise JobError(f"script exceeds {MAX_SCRIPT_BYTES} bytes", "script")
    if not isinstance(description, str):
        raise JobError("description must be a string", "description")
    return JobContent(script=script, description=description.strip(), defaults=normalize_defaults(defaults or {}))


def normalize_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    """Check the defaults as ``submit`` fields; return them with nulls left out and
    numbers as ``submit`` keeps them. Raises JobError naming the field."""
    if not isinstance(defaults, dict):
        raise JobError("defaults must be an object", "defaults")
    unknown = sorted(set(defaults) - set(DEFAULT_FIELDS))
    if unknown:
        raise JobError(f"unknown default(s): {', '.join(unknown)} (known: {', '.join(DEFAULT_FIELDS)})", unknown[0])
    given = {k: v for k, v in defaults.items() if v is not None}
    spec = to_submit(given, {"script_text": "x", "targets": given.get("targets") or ["x"]})
    if spec.plan is not None:
        try:
            plan.parse(spec.plan)
        except plan.PlanError as e:
            raise JobError(str(e), "plan") from None
    return {k: getattr(spec, k) for k in DEFAULT_FIELDS if k in given}


def to_submit(fields: dict[str, Any], extra: dict[str, Any]) -> Submit:
    try:
        spec = protocol.from_payload(Submit, {**fields, **extra})
    except DecodeError as e:
        message = e.message.removeprefix("invalid submit: ")
        if e.field and message.startswith(f"{e.field}: {e.field} "):  # "parallel: parallel must be ..."
            message = message[len(e.field) + 2 :]
        raise JobError(message, e.field) from None
    assert isinstance(spec, Submit)
    return spec


def build_submit(v: Version, overrides: dict[str, Any], request_id: str | None = None) -> Submit:
    """The ``submit`` that runs version ``v``: its defaults, then ``overrides`` (any
    ``submit`` field but the script's). Raises JobError."""
    bad = sorted(set(overrides) & {"script", "script_text", "job", "version", "request_id"})
    if bad:
        raise JobError(f"a job run takes no {bad[0]}", bad[0])
    fields = {**v.content.defaults, **{k: val for k, val in overrides.items() if val is not None}}
    fields.setdefault("name", f"{v.job}@{v.version}")
    if not fields.get("targets"):
        raise JobError(f"job {v.job}@{v.version} has no default targets: give targets", "targets")
    return to_submit(fields, {"script": base64.b64encode(v.content.script).decode("ascii"), "request_id": request_id})


def overrides_of(spec: Submit) -> dict[str, Any]:
    """The fields of a job ``submit`` (over MQTT) that are not at their defaults: those
    override the job's defaults (a field left at its default takes the job's)."""
    out = {}
    for f in dataclasses.fields(Submit):
        if f.name in ("script", "script_text", "job", "version", "request_id"):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(spec, f.name)
        if value != default:
            out[f.name] = value
    return out


# ------------------------------------------------------------------ diff


def render(content: JobContent) -> list[str]:
    """A version as text lines (description, defaults as TOML, script) for diffs."""
    lines = [f"# description: {content.description}"] if content.description else []
    lines += defaults_toml(content.defaults).splitlines()
    lines.append(f"# ---- script (sha256 {content.script_sha256})")
    lines += content.script.decode("utf-8", "replace").splitlines()
    return lines


def diff(a: Version, b: Version) -> str:
    """A unified diff from version ``a`` to version ``b`` ("" when equal)."""
    return "\n".join(
        difflib.unified_diff(
            render(a.content), render(b.content), f"{a.job}@{a.version}", f"{b.job}@{b.version}", lineterm=""
        )
    )


# ------------------------------------------------------------------ job files (push / pull)


def defaults_toml(defaults: dict[str, Any], description: str = "") -> str:
    """The side file's text: ``description`` and the defaults, ``[env]`` last."""
    out = [f"description = {_toml_value(description)}"] if description else []
    for key in DEFAULT_FIELDS:
        if key in defaults and key != "env":
            out.append(f"{key} = {_toml_value(defaults[key])}")
    if defaults.get("env"):
        out.append("")
        out.append("[env]")
        out += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in sorted(defaults["env"].items())]
    return "\n".join(out) + ("\n" if out else "")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: a plan's step ({batch = 1, fail_count = 0})
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")


def parse_side_file(path: Path | str, text: str) -> tuple[str, dict[str, Any]]:
    """``(description, defaults)`` from a side file's text. Raises JobFileError with the line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_LINE.search(str(e))
        line = int(m.group(1)) if m else max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        raise JobFileError(path, line, f"unreadable defaults: {_TOML_LINE.sub('', str(e)).strip()}") from None
    description = doc.pop("description", "")
    if not isinstance(description, str):
        raise JobFileError(path, _key_line(text, "description"), "description must be a string")
    try:
        normalize_defaults(doc)
    except JobError as e:
        raise JobFileError(path, _key_line(text, e.field or ""), str(e)) from None
    return description, doc


def _key_line(text: str, key: str) -> int | None:
    top = key.split(".", 1)[0].split("[", 1)[0]
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if re.match(rf'^"?{re.escape(top)}"?\s*=', s) or s == f"[{top}]":
            return i
    return None


@dataclass(frozen=True, slots=True)
class JobFile:
    name: str
    path: str
    content: JobContent


def read_dir(directory: Path | str) -> list[JobFile]:
    """Every job of a directory: each regular file not hidden and not ``*.toml``/``*.md``/
    ``*.txt`` is a script named as its file; ``<file>.toml`` holds its defaults.
    Raises JobFileError before anything is saved."""
    d = Path(directory)
    if not d.is_dir():
        raise JobFileError(d, None, "not a directory")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    scripts = [p for p in files if not p.name.endswith(_NOT_JOBS)]
    names = {p.name for p in scripts}
    for p in files:
        if p.name.endswith(SIDE_SUFFIX) and p.name[: -len(SIDE_SUFFIX)] not in names:
            raise JobFileError(p, None, f"defaults for a job script {p.name[: -len(SIDE_SUFFIX)]!r} that is not here")
    out = []
    for p in scripts:
        if not is_job_name(p.name):
            raise JobFileError(p, None, "the file name is not a valid job name (letters, digits, '.', '_', '-')")
        side = p.with_name(p.name + SIDE_SUFFIX)
        description = ""
        defaults: dict[str, Any] = {}
        if side.exists():
            description, defaults = parse_side_file(side, _read_text(side))
        try:
            content = make_content(p.read_bytes(), description, defaults)
        except JobError as e:
            raise JobFileError(p, None, str(e)) from None
        out.append(JobFile(p.name, str(p), content))
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise JobFileError(path, line, "not UTF-8 text") from None


def write_job(directory: Path | str, name: str, content: JobContent) -> list[Path]:
    """Write a job as :func:`read_dir` reads it; a stale side file is removed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    script = d / check_name(name)
    script.write_bytes(content.script)
    if content.script.startswith(b"#!"):
        script.chmod(0o755)
    side = d / (name + SIDE_SUFFIX)
    text = defaults_toml(content.defaults, content.description)
    if text:
        side.write_text(text, encoding="utf-8")
        return [script, side]
    side.unlink(missing_ok=True)
    return [script]
