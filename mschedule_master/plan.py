"""Rollout plans: an ordered list of steps, each a batch of targets or a pause.

Pure: parsing, validation, and resolving a plan against a task's target count into
:class:`Stage` s that :mod:`rollout` walks through. No I/O, no clock. The exact rules and
their edge tables are in docs/rollout.md ("Plans").

A plan comes in one of two forms, both normalised to the same :class:`Plan`:

- text, as ``mschedule run --plan`` takes it: ``"1,pause,5,20%,rest"``, ``"pause 10m"``;
- JSON, a list of step objects: ``{"batch": 5, "parallel": 2, "fail_count": 0,
  "fail_rate": "10%", "min_finished": 3, "ignore": ["UNREACHABLE"]}``,
  ``{"pause": true}`` (until approved) or ``{"pause": "10m"}`` / ``{"pause": 600}``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from mschedule_agent.protocol import parse_percent

from .states import TARGET_FAILURES, TargetState

#: Most steps a plan may have (a plan is something a person reads).
MAX_STEPS = 100
#: Longest timed pause: a week.
MAX_PAUSE = 7 * 24 * 3600.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BATCH_KEYS = frozenset({"batch", "parallel", "fail_count", "fail_rate", "min_finished", "ignore"})


class PlanError(ValueError):
    """A plan that cannot be used; ``field`` is always ``"plan"``."""

    field = "plan"


def _fraction(value: float | int) -> Fraction:
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def _percent(value: str) -> Fraction | None:
    if parse_percent(value) is None:
        return None
    return Fraction(value.strip()[:-1].strip()) / 100


def parse_duration(text: str) -> float:
    """``"90"``/``"90s"`` -> 90, ``"10m"`` -> 600, ``"1.5h"`` -> 5400, ``"1d"`` -> 86400."""
    m = _DURATION.match(text)
    if m is None:
        raise PlanError(f"bad duration {text!r}: use seconds or a number with s, m, h or d (10m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Batch:
    """Dispatch the next ``size`` targets: an integer N, ``"N%"`` of the task's targets
    (floor, at least 1) or ``"rest"``. Its own limits judge only its own targets."""

    size: int | str
    parallel: int | str | None = None  #: None: the task's window; "N%" of this batch's size
    fail_count: int = -1  #: -1: no count limit for this step
    fail_rate: float | str | None = None  #: None / -1: no rate limit; 0..1 or "N%" of its finished targets
    min_finished: int = 0  #: the rate is judged only once this many of its targets finished
    ignore: frozenset[TargetState] = frozenset()  #: failure kinds that do not count toward its limits

    def __post_init__(self) -> None:
        if isinstance(self.size, str):
            if self.size != "rest":
                pct = _percent(self.size)
                if pct is None or not 0 < pct <= 1:
                    raise PlanError(f"a batch is an integer >= 1, 'N%' (0 < N <= 100) or 'rest', got {self.size!r}")
        elif isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise PlanError(f"a batch is an integer >= 1, 'N%' (0 < N <= 100) or 'rest', got {self.size!r}")
        if self.parallel is not None:
            if isinstance(self.parallel, str):
                pct = _percent(self.parallel)
                if pct is None or not 0 < pct <= 1:
                    raise PlanError(f"a step's parallel is an integer >= 1 or 'N%', got {self.parallel!r}")
            elif isinstance(self.parallel, bool) or not isinstance(self.parallel, int) or self.parallel < 1:
                raise PlanError(f"a step's parallel is an integer >= 1 or 'N%', got {self.parallel!r}")
        if isinstance(self.fail_count, bool) or not isinstance(self.fail_count, int) or self.fail_count < -1:
            raise PlanError(f"a step's fail_count is an integer >= -1, got {self.fail_count!r}")
        if self.rate() is None and self.fail_rate not in (None, -1):
            raise PlanError(f"a step's fail_rate is -1, a fraction 0..1 or 'N%', got {self.fail_rate!r}")
        if isinstance(self.min_finished, bool) or not isinstance(self.min_finished, int) or self.min_finished < 0:
            raise PlanError(f"a step's min_finished is an integer >= 0, got {self.min_finished!r}")
        if not self.ignore <= TARGET_FAILURES:
            raise PlanError("a step may ignore only failure states: " + ", ".join(sorted(s.value for s in TARGET_FAILURES)))

    def rate(self) -> Fraction | None:
        """The step's rate limit as an exact fraction; None for none (absent or -1).
        Unlike the task's, a step's ``fail_rate 0`` is a real zero tolerance."""
        value = self.fail_rate
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, str):
            pct = _percent(value)
            return pct if pct is not None and 0 <= pct <= 1 else None
        if not isinstance(value, int | float) or value == -1 or not 0 <= value <= 1:
            return None
        return _fraction(value)

    def counts(self, state: TargetState) -> bool:
        """Whether a target ending in ``state`` counts as a failure toward this step's limits."""
        return state.failure and state not in self.ignore

    def trip_reason(self, failures: int, finished: int, *, ended: bool) -> str | None:
        """Why ``failures`` among ``finished`` of this step's targets stop the plan, or None.

        ``fail_count``: as soon as failures > fail_count. ``fail_rate``: as soon as
        failures > fail_rate x finished, judged once ``min_finished`` targets finished
        (and always when the step has ended, ``ended``)."""
        if self.fail_count != -1 and failures > self.fail_count:
            return f"fail_count {self.fail_count} exceeded: {failures} failure{'' if failures == 1 else 's'}"
        rate = self.rate()
        if rate is not None and (ended or finished >= max(1, self.min_finished)) and failures > rate * finished:
            return f"fail_rate {self.fail_rate} exceeded: {failures} of {finished} finished targets failed"
        return None

    def text(self) -> str:
        return str(self.size)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"batch": self.size}
        if self.parallel is not None:
            out["parallel"] = self.parallel
        if self.fail_count != -1:
            out["fail_count"] = self.fail_count
        if self.fail_rate not in (None, -1):
            out["fail_rate"] = self.fail_rate
        if self.min_finished:
            out["min_finished"] = self.min_finished
        if self.ignore:
            out["ignore"] = sorted(s.value for s in self.ignore)
        return out


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop before the next batch: for ``seconds``, or until someone approves (None).
    A timed pause can be approved early."""

    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and not 0 < self.seconds <= MAX_PAUSE:
            raise PlanError(f"a pause lasts more than 0 s and at most {format_duration(MAX_PAUSE)}, got {self.seconds!r}")

    def text(self) -> str:
        return "pause" if self.seconds is None else f"pause {format_duration(self.seconds)}"

    def to_json(self) -> dict[str, Any]:
        return {"pause": True if self.seconds is None else self.seconds}


Step = Batch | Pause


@dataclass(frozen=True, slots=True)
class Stage:
    """A plan step resolved against the task's targets: a batch covers the targets at
    positions ``start`` to ``end`` (exclusive) in dispatch order, ``window`` at a time."""

    number: int  #: 1-based step number as the user wrote it (an implicit rest: one past the last)
    step: Step
    start: int = 0
    end: int = 0
    window: int = 1

    @property
    def is_pause(self) -> bool:
        return isinstance(self.step, Pause)

    @property
    def pause_seconds(self) -> float | None:
        """A timed pause's length; None for a pause until approved, or a batch."""
        return self.step.seconds if isinstance(self.step, Pause) else None

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise PlanError("a plan needs at least one step")
        if len(self.steps) > MAX_STEPS:
            raise PlanError(f"a plan has at most {MAX_STEPS} steps")
        rest = [i for i, s in enumerate(self.steps) if isinstance(s, Batch) and s.size == "rest"]
        if rest and rest[0] != len(self.steps) - 1:
            raise PlanError("'rest' must be the last step of a plan")

    @classmethod
    def canary(cls, n: int | str) -> Plan:
        """``--canary N``: N targets, a pause until approved, then the rest."""
        return cls((Batch(n), Pause(), Batch("rest")))

    def text(self) -> str:
        """The plan as ``--plan`` takes it (step settings other than sizes left out)."""
        return ",".join(s.text() for s in self.steps)

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]

    def resolve(self, n_targets: int, default_window: int) -> list[Stage]:
        """The stages for ``n_targets`` targets, in order.

        Sizes are taken in order from what is left ("N%" of all targets, floor, at least 1;
        ``rest``: all that is left); a batch that finds nothing left is dropped. Targets the
        batches leave over form one more batch, an implicit ``rest`` with the task's window
        and no step limits. A pause is kept only if a batch follows it (there is something
        left to gate)."""
        stages: list[Stage] = []
        placed = 0
        for number, step in enumerate(self.steps, 1):
            if isinstance(step, Pause):
                stages.append(Stage(number, step))
                continue
            size = _batch_size(step.size, n_targets, n_targets - placed)
            if size <= 0:
                continue
            stages.append(Stage(number, step, placed, placed + size, _window(step, size, default_window)))
            placed += size
        if placed < n_targets:
            stages.append(Stage(len(self.steps) + 1, Batch("rest"), placed, n_targets, default_window))
        kept: list[Stage] = []
        for i, stage in enumerate(stages):
            if stage.is_pause and not any(not s.is_pause for s in stages[i + 1 :]):
                continue
            kept.append(stage)
        return kept


def single_stage(n_targets: int, window: int) -> list[Stage]:
    """A task without a plan: one batch of every target, the task's window."""
    return [Stage(1, Batch("rest"), 0, n_targets, window)]


def _batch_size(size: int | str, n_targets: int, left: int) -> int:
    if size == "rest":
        return left
    if isinstance(size, str):
        pct = _percent(size)
        assert pct is not None  # checked by Batch
        size = max(1, math.floor(pct * n_targets))
    return min(size, left)


def _window(step: Batch, size: int, default_window: int) -> int:
    if step.parallel is None:
        return default_window
    if isinstance(step.parallel, str):
        pct = _percent(step.parallel)
        assert pct is not None
        return max(1, math.floor(pct * size))
    return step.parallel


# ---------------------------------------------------------------------- parsing


def parse(value: Any) -> Plan:
    """A plan from its text or JSON form. Raises :class:`PlanError` saying what is wrong."""
    if isinstance(value, str):
        return parse_text(value)
    if isinstance(value, list):
        return Plan(tuple(_step_from_json(s, i) for i, s in enumerate(value, 1)))
    raise PlanError("plan must be a text like '1,pause,5,20%,rest' or a list of step objects")


def parse_text(text: str) -> Plan:
    """``"1,pause,5,20%,rest"``; a timed pause is ``pause 10m``."""
    tokens = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(tokens):
        raise PlanError(f"plan {text!r} has an empty step: write steps like 1,pause,5,20%,rest")
    return Plan(tuple(_step_from_text(t) for t in tokens))


def _step_from_text(token: str) -> Step:
    words = token.split()
    if words[0].lower() == "pause":
        if len(words) == 1:
            return Pause()
        if len(words) == 2:
            return Pause(parse_duration(words[1]))
        raise PlanError(f"bad step {token!r}: a pause is 'pause' (until approved) or 'pause 10m'")
    if len(words) != 1:
        raise PlanError(f"bad step {token!r}: a step is N, N%, rest, pause or 'pause 10m'")
    if token.lower() == "rest":
        return Batch("rest")
    if token.isdigit():
        return Batch(int(token))
    if parse_percent(token) is not None:
        return Batch(token.replace(" ", ""))
    raise PlanError(f"bad step {token!r}: a step is N, N%, rest, pause or 'pause 10m'")


def _step_from_json(doc: Any, number: int) -> Step:
    where = f"plan step {number}"
    if not isinstance(doc, dict):
        raise PlanError(f"{where} must be an object with 'batch' or 'pause'")
    if "pause" in doc:
        if set(doc) != {"pause"}:
            raise PlanError(f"{where}: a pause step has only 'pause'")
        value = doc["pause"]
        if value is True:
            return Pause()
        if isinstance(value, str):
            return Pause(parse_duration(value))
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return Pause(float(value))
        raise PlanError(f"{where}: pause is true (until approved), seconds or a duration like '10m'")
    if "batch" not in doc:
        raise PlanError(f"{where} must have 'batch' or 'pause'")
    unknown = sorted(set(doc) - _BATCH_KEYS)
    if unknown:
        raise PlanError(f"{where}: unknown field(s): {', '.join(unknown)}")
    ignore = doc.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(s, str) for s in ignore):
        raise PlanError(f"{where}: ignore is a list of failure states (TIMEOUT, UNREACHABLE, ...)")
    try:
        states = frozenset(TargetState(s.upper()) for s in ignore)
    except ValueError:
        raise PlanError(f"{where}: ignore names an unknown state: {', '.join(ignore)}") from None
    size = doc["batch"]
    if isinstance(size, str) and size.strip().lower() == "rest":
        size = "rest"
    try:
        return Batch(
            size=size, parallel=doc.get("parallel"), fail_count=doc.get("fail_count", -1),
            fail_rate=doc.get("fail_rate"), min_finished=doc.get("min_finished", 0), ignore=states,
        )  # fmt: skip
    except PlanError as e:
        raise PlanError(f"{where}: {e}") from None
