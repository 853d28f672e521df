"""Cron expressions in a time zone: which instants they fire at. Pure; only this module imports cronsim.

cronsim parses the expression and matches it against *wall-clock* (naive) times. This
module turns those wall-clock times into instants in the schedule's zone, by one rule
(docs/schedules.md, "Daylight saving time"):

- a wall-clock time that does not exist (spring forward) fires once, at the next valid
  instant (the end of the gap); several such times collapse into that one instant;
- a wall-clock time that occurs twice (fall back) fires once, at its first occurrence.

cronsim's own time-zone mode does this for fixed-time expressions (``30 2 * * *``) but not
for the others (Debian cron's rule): ``*/15 2 * * *`` silently skips a spring-forward day,
``0 * * * *`` fires twice at 02:00 on a fall-back day, and started inside a repeated hour
it returns a time before the start. Feeding it naive times and mapping them here gives
one rule for every expression (scripts/cron_dst_compare.py shows the three side by side).
Fire times are whole epoch seconds (int).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: the ``@name`` shorthands (as Vixie/Debian cron); ``@reboot`` has no fire times and is refused
NAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = "minute hour day-of-month month day-of-week"
#: longest gap a zone's clock has ever jumped (Samoa skipped a whole day in 2011), in minutes
_MAX_GAP_MINUTES = 48 * 60
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)


class CronError(ValueError):
    """A cron expression or a time zone is not valid; ``field`` is ``"cron"`` or ``"tz"``."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Berlin``, ``UTC``), or a CronError naming it."""
    if not isinstance(name, str) or not name.strip():
        raise CronError("time zone is empty; give an IANA name such as UTC or Europe/Berlin", "tz")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}; give an IANA name such as UTC or Europe/Berlin", "tz") from None


@dataclass(frozen=True, slots=True)
class Cron:
    """A validated cron expression (5 fields or an ``@name``) in an IANA zone."""

    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        zone(self.tz)
        fields = _expand(self.expr)
        try:
            next(CronSim(fields, datetime(2000, 1, 1)))
        except CronSimError as e:
            raise CronError(f"bad cron expression {self.expr!r}: {e} (fields: {_FIELDS})", "cron") from None
        except StopIteration:
            raise CronError(f"cron expression {self.expr!r} never fires", "cron") from None

    @property
    def fields(self) -> str:
        """The five fields, with an ``@name`` expanded."""
        return _expand(self.expr)

    def after(self, instant: float) -> Iterator[int]:
        """Fire times strictly after ``instant``, ascending, without end."""
        tz = zone(self.tz)
        last = int(instant // 1)
        for wall in CronSim(self.fields, _wall(instant, tz)):
            t = _instant(wall, tz)
            if t > last and t > instant:
                last = t
                yield t

    def upto(self, instant: float) -> Iterator[int]:
        """Fire times at or before ``instant``, descending, back to the 50-year limit."""
        tz = zone(self.tz)
        # Inside a repeated hour the clock reads earlier than times that already fired:
        # start the walk later by the size of the fold, then drop what is in the future.
        fold = _offset(instant - _DAY.total_seconds(), tz) - _offset(instant, tz)
        start = _wall(instant, tz) + max(fold, timedelta(0)) + _SECOND
        previous: int | None = None
        for wall in CronSim(self.fields, start, reverse=True):
            t = _instant(wall, tz)
            if t <= instant and t != previous:
                previous = t
                yield t

    def next_times(self, after: float, n: int) -> list[int]:
        """The first ``n`` fire times after ``after`` (a preview)."""
        times: list[int] = []
        for t in self.after(after):
            if len(times) >= n:
                break
            times.append(t)
        return times


def _expand(expr: str) -> str:
    if not isinstance(expr, str) or not expr.strip():
        raise CronError(f"cron expression is empty; give 5 fields ({_FIELDS}) or one of {', '.join(NAMES)}", "cron")
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in NAMES:
            raise CronError(f"unknown cron name {text!r}; use one of {', '.join(NAMES)}", "cron")
        return NAMES[text.lower()]
    if len(text.split()) != 5:
        raise CronError(f"cron expression {expr!r} must have 5 fields ({_FIELDS})", "cron")
    return text


def _utc(instant: float) -> datetime:
    return datetime.fromtimestamp(instant, UTC)


def _wall(instant: float, tz: ZoneInfo) -> datetime:
    """The naive wall-clock reading of ``instant`` in ``tz``."""
    return _utc(instant).astimezone(tz).replace(tzinfo=None)


def _offset(instant: float, tz: ZoneInfo) -> timedelta:
    offset = _utc(instant).astimezone(tz).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def _exists(wall: datetime, tz: ZoneInfo) -> bool:
    aware = wall.replace(tzinfo=tz)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


def _instant(wall: datetime, tz: ZoneInfo) -> int:
    """The instant a wall-clock fire time fires at: its first occurrence, or the gap's end."""
    for _ in range(_MAX_GAP_MINUTES):
        if _exists(wall, tz):
            return int(wall.replace(tzinfo=tz, fold=0).timestamp())
        wall += _MINUTE
    raise AssertionError(f"no valid local time within {_MAX_GAP_MINUTES} minutes of {wall} in {tz}")
