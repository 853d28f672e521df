"""Compare croniter and cronsim on daylight-saving days, and mschedule's own cron.py beside them.

Why mschedule uses cronsim (docs/schedules.md): issue 15 asks that a wall-clock time that
does not exist fire once at the next valid instant, and one that occurs twice fire once.
Run it with both libraries installed (croniter is not a dependency):

    .venv/bin/pip install croniter && .venv/bin/python scripts/cron_dst_compare.py

Each line shows the first fire times after the start, as local time = UTC.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import cronsim

from mschedule_master.cron import Cron

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"
CASES = [  # zone, start (local wall clock), expression, what the day does to it
    (BERLIN, datetime(2026, 3, 28, 12), "30 2 * * *", "02:30 does not exist on 03-29"),
    (BERLIN, datetime(2026, 10, 24, 12), "30 2 * * *", "02:30 occurs twice on 10-25"),
    (NEW_YORK, datetime(2026, 3, 7, 12), "30 2 * * *", "02:30 does not exist on 03-08"),
    (NEW_YORK, datetime(2026, 10, 31, 12), "30 1 * * *", "01:30 occurs twice on 11-01"),
    (BERLIN, datetime(2026, 3, 29, 0), "*/15 2 * * *", "02:00-02:45 do not exist on 03-29"),
    (
        BERLIN,
        datetime(2026, 10, 25, 2, 10, fold=1),
        "30 2 * * *",
        "start inside the repeated hour, after 02:30 CEST fired",
    ),
    (BERLIN, datetime(2026, 10, 25, 0), "0 * * * *", "hourly, fall back"),
]


def _show(times: list[datetime]) -> str:
    return "  ".join(f"{t:%m-%d %H:%M%z}={t.astimezone(UTC):%H:%MZ}" for t in times)


def _croniter(expr: str, start: datetime, n: int) -> list[datetime]:
    import croniter  # optional: only this comparison uses it

    it = croniter.croniter(expr, start)
    return [it.get_next(datetime) for _ in range(n)]


def _cronsim(expr: str, start: datetime, n: int) -> list[datetime]:
    return list(itertools.islice(cronsim.CronSim(expr, start), n))


def _mschedule(expr: str, start: datetime, n: int) -> list[datetime]:
    tz = start.tzinfo
    assert isinstance(tz, ZoneInfo)
    return [datetime.fromtimestamp(t, tz) for t in Cron(expr, tz.key).next_times(start.timestamp(), n)]


def main() -> None:
    for zone, wall, expr, what in CASES:
        start = wall.replace(tzinfo=ZoneInfo(zone))
        n = 5 if expr.startswith("0 *") else 3
        print(f"{zone} {expr!r}: {what}; from {_show([start])}")
        for name, fn in (("croniter", _croniter), ("cronsim", _cronsim), ("mschedule", _mschedule)):
            try:
                print(f"  {name:9} {_show(fn(expr, start, n))}")
            except ImportError:
                print(f"  {name:9} (not installed)")


if __name__ == "__main__":
    main()
