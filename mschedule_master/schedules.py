"""Schedules: a job version on a cron, and the pure planner that decides what each fire time does.

No I/O, no logging, no clock: :func:`plan` takes ``now`` (epoch seconds) and what the store
knows (:class:`State`), and returns a :class:`Plan` of actions for the daemon to carry out.
Semantics and worked examples: docs/schedules.md.

INTERFACE CONTRACT for the store/daemon integration:

    s = Schedule(name, job, cron, tz="UTC", version="@default", overlap=Overlap.parse("queue(2)"),
                 misfire=Misfire.parse("catch_up(3, 6h)"), paused=False, overrides={...})
    p = plan(s, State(since=created_or_resumed_at, last_fire=..., running=..., queued=(...)), now)
    for a in p.actions:                # in order
        Record(fire_time, outcome)     # INSERT (schedule, fire_time, outcome); the pair is UNIQUE.
                                       # If the insert conflicts, another master (or an earlier life
                                       # of this one) owns this fire time: do nothing more for it.
                                       # a.starts: after the insert commits, start a run of the job.
        StartQueued(fire_time)         # UPDATE its row QUEUED -> FIRED (only if still QUEUED), then
                                       # start its run.
    p.wake                             # call plan() again at this time (None: paused); also call it
                                       # when a run of the schedule ends (a queued run may start).
    p.missed_earlier                   # missed fire times older than the MISSED records, not
                                       # recorded one by one (a long outage of a frequent schedule)
    next_fire_times(s, after, n)       # preview
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

from mschedule_agent.protocol import Submit

from .cron import Cron, CronError

#: ``version`` value that follows the job's default version at fire time
DEFAULT_VERSION = "@default"
#: a fire time is on time (FIRED) when the planner sees it at most this many seconds late
GRACE = 60.0
#: at most this many MISSED fire times are recorded one by one per plan; older ones are counted
MISSED_RECORDS = 100
#: the planner looks at most this many due fire times back (the count of older ones stops here)
MAX_SCAN = 100_000
#: the largest N of queue(N), allow(N) and catch_up(N, ...): a policy never launches thousands of runs
MAX_LIMIT = 1000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_POLICY = re.compile(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: run settings a schedule may override: everything a submit takes but the script itself
RUN_SETTINGS = frozenset(f.name for f in dataclasses.fields(cast(Any, Submit))) - {
    "script",
    "script_text",
    "request_id",
}


class ScheduleError(ValueError):
    """A schedule's setting is not valid: ``field`` names it (``cron``, ``tz``, ``overlap``, ...)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class Outcome(str, Enum):
    """What happened to one fire time; recorded on the schedule with that fire time."""

    FIRED = "fired"  #: a run started for it, on time (or when its turn in the queue came)
    CAUGHT_UP = "caught-up"  #: missed while the master was down; run late by the misfire policy
    MISSED = "missed"  #: missed while the master was down; not run, by the misfire policy
    SKIPPED_OVERLAP = "skipped-overlap"  #: not run: earlier runs were still going (overlap policy)
    QUEUED = "queued"  #: waits for earlier runs to end (overlap ``queue``); becomes FIRED when it starts
    #: due to run, but no run could be created (the job version or its targets are gone); the
    #: record's error says why. Set by the integration in the transaction that decided the fire
    #: time (so no one ever sees it fired first), never by the planner.
    NOT_STARTED = "not-started"

    @property
    def starts(self) -> bool:
        """A run starts for this fire time as soon as it is recorded."""
        return self in (Outcome.FIRED, Outcome.CAUGHT_UP)


#: the only change of a recorded outcome: a queued fire time starts
OUTCOME_TRANSITIONS = {Outcome.QUEUED: frozenset({Outcome.FIRED})}


def check_outcome_transition(old: Outcome, new: Outcome) -> None:
    """Raise ValueError unless a recorded ``old`` outcome may become ``new``."""
    if new not in OUTCOME_TRANSITIONS.get(old, frozenset()):
        raise ValueError(f"a fire time recorded {old.value!r} cannot become {new.value!r}")


def _policy(text: object, field_name: str, forms: str) -> tuple[str, list[str]]:
    """``"queue(2)"`` -> ("queue", ["2"]); ``"skip"`` -> ("skip", [])."""
    match = _POLICY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ScheduleError(f"{field_name} must be one of {forms}, got {text!r}", field_name)
    args = [a.strip() for a in match[2].split(",")] if match[2] is not None else []
    return match[1], args


def _count(text: str, field_name: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ScheduleError(f"{field_name}: {what} must be a whole number 1..{MAX_LIMIT}, got {text!r}", field_name)
    return int(text)


def _bad_limit(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT


def parse_duration(text: str, field_name: str = "duration") -> float:
    """``"90"``, ``"90s"``, ``"30m"``, ``"6h"``, ``"2d"`` -> seconds (> 0)."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or float(match[1]) <= 0:
        raise ScheduleError(f"{field_name}: give a duration > 0 such as 90s, 30m, 6h or 2d, got {text!r}", field_name)
    return float(match[1]) * _UNIT[match[2]]


def _duration_text(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNIT[unit] == 0:
            return f"{int(seconds // _UNIT[unit])}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Overlap:
    """What a fire time does while earlier runs of the schedule are still going."""

    policy: str = "skip"  #: ``skip``, ``queue`` (at most ``limit`` waiting), ``allow`` (at most ``limit`` running)
    limit: int = 1

    FORMS = "skip, queue, queue(N), allow(N)"

    def __post_init__(self) -> None:
        if self.policy not in ("skip", "queue", "allow"):
            raise ScheduleError(f"overlap must be one of {self.FORMS}, got {self.policy!r}", "overlap")
        if _bad_limit(self.limit):
            message = f"overlap: the limit must be a whole number 1..{MAX_LIMIT}, got {self.limit!r}"
            raise ScheduleError(message, "overlap")
        if self.policy == "skip" and self.limit != 1:
            raise ScheduleError("overlap: skip takes no limit", "overlap")

    @classmethod
    def parse(cls, text: str) -> Overlap:
        """``skip`` (the default), ``queue`` (= ``queue(1)``), ``queue(N)``, ``allow(N)``."""
        name, args = _policy(text, "overlap", cls.FORMS)
        if name == "skip" and not args:
            return cls("skip")
        if name == "queue" and len(args) <= 1:
            return cls("queue", _count(args[0], "overlap", "the queue length") if args else 1)
        if name == "allow" and len(args) == 1:
            return cls("allow", _count(args[0], "overlap", "the number of concurrent runs"))
        raise ScheduleError(f"overlap must be one of {cls.FORMS}, got {text!r}", "overlap")

    def __str__(self) -> str:
        return "skip" if self.policy == "skip" else f"{self.policy}({self.limit})"

    @property
    def concurrency(self) -> int:
        """How many runs of the schedule may go at once."""
        return self.limit if self.policy == "allow" else 1

    @property
    def queue_size(self) -> int:
        """How many fire times may wait for a free run slot."""
        return self.limit if self.policy == "queue" else 0


@dataclass(frozen=True, slots=True)
class Misfire:
    """What fire times missed while the master was down (or too late to be on time) do."""

    policy: str = "run_once"  #: ``skip`` them, ``run_once`` for all of them, ``catch_up`` each
    limit: int | None = None  #: catch_up: run at most this many, the most recent ones
    deadline: float | None = None  #: catch_up: only those at most this many seconds old

    FORMS = "skip, run_once, catch_up(N, DEADLINE) such as catch_up(3, 6h)"

    def __post_init__(self) -> None:
        if self.policy not in ("skip", "run_once", "catch_up"):
            raise ScheduleError(f"misfire must be one of {self.FORMS}, got {self.policy!r}", "misfire")
        if self.policy != "catch_up":
            if self.limit is not None or self.deadline is not None:
                raise ScheduleError(f"misfire: {self.policy} takes no limit or deadline", "misfire")
            return
        if _bad_limit(self.limit):
            message = f"misfire: catch_up needs a limit N in 1..{MAX_LIMIT}, got {self.limit!r}"
            raise ScheduleError(message, "misfire")
        if isinstance(self.deadline, bool) or not isinstance(self.deadline, int | float) or not self.deadline > 0:
            raise ScheduleError(f"misfire: catch_up needs a deadline > 0 seconds, got {self.deadline!r}", "misfire")

    @classmethod
    def parse(cls, text: str) -> Misfire:
        """``skip``, ``run_once`` (the default) or ``catch_up(N, DEADLINE)``, DEADLINE as ``90s``, ``6h``, ``2d``."""
        name, args = _policy(text, "misfire", cls.FORMS)
        if name in ("skip", "run_once") and not args:
            return cls(name)
        if name == "catch_up" and len(args) == 2:
            return cls(name, _count(args[0], "misfire", "the catch-up limit"), parse_duration(args[1], "misfire"))
        raise ScheduleError(f"misfire must be one of {cls.FORMS}, got {text!r}", "misfire")

    def __str__(self) -> str:
        if self.policy != "catch_up":
            return self.policy
        assert self.deadline is not None
        return f"catch_up({self.limit}, {_duration_text(self.deadline)})"

    def to_run(self, missed: list[int], on_time: bool, now: float) -> list[int]:
        """Which of the ``missed`` fire times (ascending) run late."""
        if self.policy == "skip" or not missed:
            return []
        if self.policy == "run_once":
            return [] if on_time else missed[-1:]
        assert self.limit is not None and self.deadline is not None
        return [t for t in missed if now - t <= self.deadline][-self.limit :]


def parse_job_ref(text: str) -> tuple[str, int | str]:
    """``"backup"`` -> ("backup", "@default"); ``"backup@3"`` -> ("backup", 3)."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError("job is empty; give JOB or JOB@VERSION", "job")
    job, at, version = text.strip().partition("@")
    if not at or version == DEFAULT_VERSION[1:]:
        return job, DEFAULT_VERSION
    if not version.isdigit() or int(version) < 1:
        raise ScheduleError(f"version must be a number >= 1 or @default, got {version!r} in {text!r}", "version")
    return job, int(version)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A job at a version, run on a cron expression in a time zone, with its policies."""

    name: str
    job: str
    cron: str  #: 5 fields or an ``@hourly``-style name
    tz: str = "UTC"  #: IANA time zone the cron reads its wall clock in
    version: int | str = DEFAULT_VERSION  #: a pinned version (>= 1), or ``@default`` at fire time
    overlap: Overlap = field(default_factory=Overlap)
    misfire: Misfire = field(default_factory=Misfire)
    paused: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  #: run settings over the job version's defaults

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ScheduleError(
                f"name must be 1-100 letters, digits, '.', '_' or '-' (not first), got {self.name!r}", "name"
            )
        if not isinstance(self.job, str) or not self.job or any(c.isspace() or c in "@/" for c in self.job):
            raise ScheduleError(f"job must be a job name (no blanks, '@' or '/'), got {self.job!r}", "job")
        if self.version != DEFAULT_VERSION and (
            isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1
        ):
            raise ScheduleError(f"version must be a number >= 1 or @default, got {self.version!r}", "version")
        try:
            Cron(self.cron, self.tz)
        except CronError as e:
            raise ScheduleError(str(e), e.field) from None
        if not isinstance(self.overlap, Overlap):
            raise ScheduleError(f"overlap must be an Overlap (see Overlap.parse), got {self.overlap!r}", "overlap")
        if not isinstance(self.misfire, Misfire):
            raise ScheduleError(f"misfire must be a Misfire (see Misfire.parse), got {self.misfire!r}", "misfire")
        if not isinstance(self.paused, bool):
            raise ScheduleError(f"paused must be true or false, got {self.paused!r}", "paused")
        _check_overrides(self.overrides)

    @property
    def timing(self) -> Cron:
        """The validated cron expression in its zone."""
        return Cron(self.cron, self.tz)


def _check_overrides(overrides: object) -> None:
    if not isinstance(overrides, dict):
        raise ScheduleError(f"overrides must be a mapping of run settings, got {overrides!r}", "overrides")
    unknown = sorted(str(k) for k in overrides if k not in RUN_SETTINGS)
    if unknown:
        raise ScheduleError(
            f"overrides: unknown run setting {', '.join(unknown)}; known: {', '.join(sorted(RUN_SETTINGS))}",
            f"overrides.{unknown[0]}",
        )
    targets = overrides.get("targets", ["all"])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ScheduleError(f"overrides.targets: give a list of selectors, got {targets!r}", "overrides.targets")
    env = overrides.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ScheduleError(f"overrides.env: give a mapping of names to strings, got {env!r}", "overrides.env")
    for name, value in overrides.items():  # one at a time, so a wrong type is named too
        try:  # the run settings check themselves, as a submit would
            Submit(**{"targets": ["all"], name: value, "script_text": "#!/bin/sh\n"})
        except (ValueError, TypeError) as e:
            where = f"overrides.{getattr(e, 'field', None) or name}"
            raise ScheduleError(f"{where}: {e}", where) from None


@dataclass(frozen=True, slots=True)
class State:
    """What the store knows about a schedule when :func:`plan` runs."""

    since: float  #: created or last resumed at: fire times at or before it are not this schedule's
    last_fire: int | None = None  #: the latest fire time recorded for it (any outcome)
    running: int = 0  #: its runs still going
    queued: tuple[int, ...] = ()  #: its fire times recorded QUEUED and not started, oldest first


@dataclass(frozen=True, slots=True)
class Record:
    """A new fire time and what happened to it: insert it; (schedule, fire_time) is unique."""

    fire_time: int
    outcome: Outcome

    @property
    def starts(self) -> bool:
        """Start a run once the insert has committed (never if it conflicted)."""
        return self.outcome.starts


@dataclass(frozen=True, slots=True)
class StartQueued:
    """A queued fire time's turn came: its record QUEUED -> FIRED, then start its run."""

    fire_time: int


Action = Record | StartQueued


@dataclass(frozen=True, slots=True)
class Plan:
    """What :func:`plan` decided: the actions to carry out in order, and when to plan again."""

    actions: tuple[Action, ...] = ()
    wake: int | None = None  #: the next fire time: call plan() again then; None while paused
    missed_earlier: int = 0  #: missed fire times older than the MISSED records (counted up to MAX_SCAN)


def next_fire_times(schedule: Schedule, after: float, n: int) -> list[int]:
    """The next ``n`` fire times strictly after ``after`` (paused or not): a preview."""
    return schedule.timing.next_times(after, n)


def plan(schedule: Schedule, state: State, now: float, *, grace: float = GRACE) -> Plan:
    """Decide every fire time due since the last recorded one, and when to look again."""
    if schedule.paused:
        return Plan()
    anchor = state.since if state.last_fire is None else max(state.since, state.last_fire)
    keep = MISSED_RECORDS + (schedule.misfire.limit or 0) + 1
    due, older = _due(schedule.timing, anchor, now, keep)
    on_time = bool(due) and now - due[-1] <= grace
    missed = due[:-1] if on_time else due
    late = schedule.misfire.to_run(missed, on_time, now)
    runs = [(t, Outcome.CAUGHT_UP) for t in late] + ([(due[-1], Outcome.FIRED)] if on_time else [])
    actions, records = _overlap(schedule.overlap, state, runs)
    run_times = {t for t, _ in runs}
    not_run = [t for t in missed if t not in run_times]
    records += [Record(t, Outcome.MISSED) for t in not_run[-MISSED_RECORDS:]]
    records.sort(key=lambda r: r.fire_time)
    wake = next(schedule.timing.after(max(now, anchor)), None)
    return Plan((*actions, *records), wake, older + max(0, len(not_run) - MISSED_RECORDS))


def _due(cron: Cron, anchor: float, now: float, keep: int) -> tuple[list[int], int]:
    """The ``keep`` latest fire times in (anchor, now], ascending, and how many older ones there are."""
    recent: list[int] = []
    older = 0
    for t in cron.upto(now):
        if t <= anchor or len(recent) + older >= MAX_SCAN:
            break
        if len(recent) < keep:
            recent.append(t)
        else:
            older += 1
    recent.reverse()
    return recent, older


def _overlap(overlap: Overlap, state: State, runs: list[tuple[int, Outcome]]) -> tuple[list[Action], list[Record]]:
    """Start queued fire times into free slots, then each new run: start, queue or skip it."""
    slots = max(0, overlap.concurrency - state.running)
    queue = list(state.queued)
    actions: list[Action] = []
    while slots and queue:
        actions.append(StartQueued(queue.pop(0)))
        slots -= 1
    records: list[Record] = []
    for t, outcome in runs:
        if slots and not queue:
            records.append(Record(t, outcome))
            slots -= 1
        elif len(queue) < overlap.queue_size:
            records.append(Record(t, Outcome.QUEUED))
            queue.append(t)
        else:
            records.append(Record(t, Outcome.SKIPPED_OVERLAP))
    return actions, records
