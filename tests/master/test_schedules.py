"""Schedules, pure: cron in a zone across DST days, every policy, an injected clock, no sleeps.

Follows docs/schedules.md section by section. ``Sim`` drives plan() as the daemon will:
it wakes at ``plan().wake`` or when a run ends, carries the actions out against a dict
keyed by fire time (the store's unique (schedule, fire_time)), and ends each run after
``duration`` seconds.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mschedule_master.cron import Cron, CronError
from mschedule_master.schedules import (
    DEFAULT_VERSION,
    GRACE,
    MISSED_RECORDS,
    Misfire,
    Outcome,
    Overlap,
    Plan,
    Record,
    Schedule,
    ScheduleError,
    StartQueued,
    State,
    check_outcome_transition,
    next_fire_times,
    parse_duration,
    parse_job_ref,
    plan,
)

O = Outcome  # noqa: E741  (the tables read better with one letter)
BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"
H = 3600


def utc(*args: int) -> int:
    """Epoch seconds of a UTC wall-clock time."""
    return int(datetime(*args, tzinfo=UTC).timestamp())


def local(zone: str, *args: int, fold: int = 0) -> int:
    """Epoch seconds of a wall-clock time in ``zone`` (fold=1: the second of a repeated time)."""
    return int(datetime(*args, tzinfo=ZoneInfo(zone), fold=fold).timestamp())


def sched(cron: str = "0 * * * *", tz: str = "UTC", **kw) -> Schedule:
    return Schedule("nightly", "backup", cron, tz, **kw)


class Sim:
    """Drives plan() over time as the daemon would, against an in-memory record of fire times."""

    def __init__(self, schedule: Schedule, since: float, duration: float = 60) -> None:
        self.schedule = schedule
        self.since = since
        self.duration = duration
        self.records: dict[int, Outcome] = {}
        self.started: list[tuple[int, float]] = []  #: (fire time, started at)
        self.ends: list[float] = []

    def state(self, now: float) -> State:
        queued = tuple(sorted(t for t, o in self.records.items() if o is O.QUEUED))
        last = max(self.records, default=None)
        return State(self.since, last, sum(1 for e in self.ends if e > now), queued)

    def step(self, now: float) -> Plan:
        p = plan(self.schedule, self.state(now), now)
        for a in p.actions:
            if isinstance(a, Record):
                assert a.fire_time not in self.records, f"fire time {a.fire_time} recorded twice"
                self.records[a.fire_time] = a.outcome
                if a.starts:
                    self._start(a.fire_time, now)
            else:
                check_outcome_transition(self.records[a.fire_time], O.FIRED)
                self.records[a.fire_time] = O.FIRED
                self._start(a.fire_time, now)
        return p

    def _start(self, fire_time: int, now: float) -> None:
        assert fire_time <= now, "a run started before its fire time"
        self.started.append((fire_time, now))
        self.ends.append(now + self.duration)

    def run(self, until: float, start: float | None = None, late: float = 0) -> None:
        """Wake at every wake-up (``late`` seconds after it) and run end, up to ``until``."""
        now = self.since if start is None else start
        for _ in range(10_000):
            p = self.step(now)
            events = [e for e in self.ends if e > now] + ([p.wake + late] if p.wake is not None else [])
            if not events or min(events) > until:
                return
            now = min(events)
        raise AssertionError("the simulation did not reach its end")

    def outcomes(self) -> list[tuple[int, str]]:
        return [(t, o.value) for t, o in sorted(self.records.items())]


# --------------------------------------------------------------------------- cron and zones


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("@hourly", utc(2026, 1, 1, 10, 30), [utc(2026, 1, 1, 11), utc(2026, 1, 1, 12)]),
        ("@daily", utc(2026, 1, 1, 10), [utc(2026, 1, 2), utc(2026, 1, 3)]),
        ("@midnight", utc(2026, 1, 1, 10), [utc(2026, 1, 2), utc(2026, 1, 3)]),
        ("@weekly", utc(2026, 1, 1), [utc(2026, 1, 4), utc(2026, 1, 11)]),  # Sundays
        ("@monthly", utc(2026, 1, 15), [utc(2026, 2, 1), utc(2026, 3, 1)]),
        ("@yearly", utc(2026, 1, 15), [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@annually", utc(2026, 1, 15), [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@HOURLY", utc(2026, 1, 1, 10, 30), [utc(2026, 1, 1, 11), utc(2026, 1, 1, 12)]),
        ("*/20 9-10 * * MON-FRI", utc(2026, 1, 2, 10, 30), [utc(2026, 1, 2, 10, 40), utc(2026, 1, 5, 9)]),
        ("0 0 29 2 *", utc(2026, 1, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),
    ],
)
def test_names_and_fields_give_the_fire_times_of_cron(expr: str, after: int, expected: list[int]) -> None:
    assert next_fire_times(sched(expr), after, 2) == expected


def test_a_fire_time_is_strictly_after_the_instant_it_is_asked_after() -> None:
    c = Cron("0 * * * *")
    assert c.next_times(utc(2026, 1, 1, 10), 1) == [utc(2026, 1, 1, 11)]
    assert c.next_times(utc(2026, 1, 1, 10) - 0.5, 1) == [utc(2026, 1, 1, 10)]
    assert list(itertools.islice(c.upto(utc(2026, 1, 1, 10)), 2)) == [utc(2026, 1, 1, 10), utc(2026, 1, 1, 9)]


# A wall-clock time that does not exist fires once, at the next valid instant.
SPRING = [
    # zone, expression, the day's fire times (UTC) around the gap
    (BERLIN, "30 2 * * *", 2026, 3, 29, [local(BERLIN, 2026, 3, 29, 3)]),  # 02:30 -> 03:00 CEST
    (BERLIN, "0 2 * * *", 2026, 3, 29, [local(BERLIN, 2026, 3, 29, 3)]),
    (BERLIN, "*/15 2 * * *", 2026, 3, 29, [local(BERLIN, 2026, 3, 29, 3)]),  # four times collapse to one
    (NEW_YORK, "30 2 * * *", 2026, 3, 8, [local(NEW_YORK, 2026, 3, 8, 3)]),
    (NEW_YORK, "0 2 * * *", 2026, 3, 8, [local(NEW_YORK, 2026, 3, 8, 3)]),
    (NEW_YORK, "59 2 * * *", 2026, 3, 8, [local(NEW_YORK, 2026, 3, 8, 3)]),
]


@pytest.mark.parametrize(("zone", "expr", "y", "m", "d", "expected"), SPRING)
def test_a_time_that_does_not_exist_fires_once_at_the_next_valid_instant(zone, expr, y, m, d, expected) -> None:
    day = [t for t in Cron(expr, zone).next_times(local(zone, y, m, d), 10) if t < local(zone, y, m, d + 1)]
    assert day == expected
    assert datetime.fromtimestamp(day[0], ZoneInfo(zone)).strftime("%H:%M") == "03:00"


# A wall-clock time that occurs twice fires once, at its first occurrence.
FALL = [
    (BERLIN, "30 2 * * *", 2026, 10, 25, [utc(2026, 10, 25, 0, 30)]),  # 02:30 CEST, not 02:30 CET
    (BERLIN, "0 2 * * *", 2026, 10, 25, [utc(2026, 10, 25, 0)]),
    (NEW_YORK, "30 1 * * *", 2026, 11, 1, [utc(2026, 11, 1, 5, 30)]),  # 01:30 EDT, not 01:30 EST
    (NEW_YORK, "0 1 * * *", 2026, 11, 1, [utc(2026, 11, 1, 5)]),
]


@pytest.mark.parametrize(("zone", "expr", "y", "m", "d", "expected"), FALL)
def test_a_time_that_occurs_twice_fires_once(zone, expr, y, m, d, expected) -> None:
    times = Cron(expr, zone).next_times(local(zone, y, m, d), 2)
    assert times[:1] == expected
    assert times[1] - times[0] == 25 * H  # the next day's, in the zone's standard time


@pytest.mark.parametrize(
    ("zone", "day", "fires"),
    [
        (BERLIN, (2026, 3, 29), 23),  # 02:00 does not exist: it is 03:00's fire time
        (BERLIN, (2026, 10, 25), 24),  # 02:00 occurs twice, fires once
        (NEW_YORK, (2026, 3, 8), 23),
        (NEW_YORK, (2026, 11, 1), 24),
        (BERLIN, (2026, 6, 1), 24),
    ],
)
def test_hourly_fires_once_per_wall_clock_hour_on_dst_days(zone: str, day: tuple[int, int, int], fires: int) -> None:
    start = local(zone, *day) - 1
    end = int((datetime(*day, tzinfo=ZoneInfo(zone)) + timedelta(days=1)).timestamp())
    times = [t for t in Cron("@hourly", zone).next_times(start, 30) if t < end]
    assert len(times) == fires
    assert len(set(times)) == len(times)


def test_a_preview_from_inside_the_repeated_hour_never_goes_back_in_time() -> None:
    inside = local(BERLIN, 2026, 10, 25, 2, 10, fold=1)  # 02:10 CET, after 02:30 CEST fired
    assert Cron("30 2 * * *", BERLIN).next_times(inside, 1) == [local(BERLIN, 2026, 10, 26, 2, 30)]
    # ...and looking back from there finds the 02:30 CEST that already fired
    assert next(Cron("30 2 * * *", BERLIN).upto(inside)) == utc(2026, 10, 25, 0, 30)


DST_WEEKS = [utc(2026, 3, 27), utc(2026, 10, 23), utc(2026, 3, 6), utc(2026, 10, 30)]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["30 2 * * *", "0 2 * * *", "*/15 * * * *", "0 * * * *", "*/20 1-3 * * *", "45 1 * * SUN"]),
    st.sampled_from([BERLIN, NEW_YORK]),
    st.sampled_from(DST_WEEKS),
    st.integers(0, 4 * 24 * H),
)
def test_after_and_upto_agree_on_one_increasing_sequence(expr: str, zone: str, week: int, offset: int) -> None:
    c = Cron(expr, zone)
    x = week + offset
    nxt = c.next_times(x, 3)
    assert nxt == sorted(set(nxt)) and nxt[0] > x
    assert next(c.upto(nxt[0])) == nxt[0]  # what after() yields, upto() finds
    assert next(c.upto(nxt[0] - 1)) <= x  # and nothing lies between x and it
    prev = next(c.upto(x))
    assert prev <= x and c.next_times(prev, 1) == nxt[:1]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "field", "says"),
    [
        ({"cron": ""}, "cron", "empty"),
        ({"cron": "* * * *"}, "cron", "5 fields"),
        ({"cron": "0 * * * * *"}, "cron", "5 fields"),
        ({"cron": "61 * * * *"}, "cron", "Bad minute"),
        ({"cron": "0 25 * * *"}, "cron", "Bad hour"),
        ({"cron": "0 0 31 2 *"}, "cron", "Bad day-of-month"),
        ({"cron": "@reboot"}, "cron", "unknown cron name"),
        ({"cron": "@fortnightly"}, "cron", "@hourly"),
        ({"tz": "Mars/Olympus"}, "tz", "unknown time zone 'Mars/Olympus'"),
        ({"tz": ""}, "tz", "empty"),
        ({"tz": "../etc/passwd"}, "tz", "unknown time zone"),
        ({"name": ""}, "name", "name must be"),
        ({"name": "a b"}, "name", "name must be"),
        ({"job": ""}, "job", "job must be"),
        ({"job": "backup@2"}, "job", "job must be"),
        ({"version": 0}, "version", ">= 1 or @default"),
        ({"version": "2"}, "version", ">= 1 or @default"),
        ({"version": True}, "version", ">= 1 or @default"),
        ({"overlap": "skip"}, "overlap", "Overlap.parse"),
        ({"misfire": "skip"}, "misfire", "Misfire.parse"),
        ({"paused": "yes"}, "paused", "true or false"),
        ({"overrides": []}, "overrides", "mapping"),
        ({"overrides": {"script": "rm -rf /"}}, "overrides.script", "unknown run setting script"),
        ({"overrides": {"parallel": 0}}, "overrides.parallel", "parallel"),
        ({"overrides": {"timeout": "soon"}}, "overrides.timeout", "overrides.timeout"),
        ({"overrides": {"targets": "all"}}, "overrides.targets", "list of selectors"),
        ({"overrides": {"targets": []}}, "overrides.targets", "targets is empty"),
        ({"overrides": {"env": {"A": 1}}}, "overrides.env", "strings"),
        ({"overrides": {"on_abort": "explode"}}, "overrides.on_abort", "on_abort"),
    ],
)
def test_a_bad_setting_is_refused_with_an_error_naming_its_field(kwargs: dict, field: str, says: str) -> None:
    args = {"name": "nightly", "job": "backup", "cron": "@daily", **kwargs}
    with pytest.raises(ScheduleError) as e:
        Schedule(**args)
    assert e.value.field == field
    assert says in str(e.value)


def test_a_schedule_keeps_what_it_was_given() -> None:
    s = Schedule(
        "db.vacuum-1",
        "vacuum",
        "30 2 * * *",
        BERLIN,
        version=3,
        overlap=Overlap.parse("queue(2)"),
        misfire=Misfire.parse("catch_up(3, 6h)"),
        paused=True,
        overrides={"targets": ["role=db"], "parallel": "25%", "timeout": 600, "env": {"FULL": "1"}},
    )
    assert (s.version, str(s.overlap), str(s.misfire), s.paused) == (3, "queue(2)", "catch_up(3, 6h)", True)
    assert Schedule("n", "j", "@daily").version == DEFAULT_VERSION == "@default"
    assert Schedule("n", "j", "@daily").tz == "UTC"
    assert (str(Overlap()), str(Misfire())) == ("skip", "run_once")  # the defaults


def test_a_bad_cron_is_a_value_error_naming_its_field_also_from_cron_itself() -> None:
    with pytest.raises(CronError) as e:
        Cron("0 0 * * 8")
    assert e.value.field == "cron" and "Bad day-of-week" in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    ("text", "policy", "limit", "concurrency", "queue_size"),
    [
        ("skip", "skip", 1, 1, 0),
        ("queue", "queue", 1, 1, 1),
        ("queue(3)", "queue", 3, 1, 3),
        (" allow( 4 ) ", "allow", 4, 4, 0),
    ],
)
def test_overlap_policies_parse(text: str, policy: str, limit: int, concurrency: int, queue_size: int) -> None:
    o = Overlap.parse(text)
    assert (o.policy, o.limit, o.concurrency, o.queue_size) == (policy, limit, concurrency, queue_size)
    assert Overlap.parse(str(o)) == o


@pytest.mark.parametrize(
    ("text", "policy", "limit", "deadline"),
    [
        ("skip", "skip", None, None),
        ("run_once", "run_once", None, None),
        ("catch_up(3, 6h)", "catch_up", 3, 6 * H),
        ("catch_up(10,90m)", "catch_up", 10, 90 * 60),
        ("catch_up(1, 45s)", "catch_up", 1, 45),
        ("catch_up(2, 2d)", "catch_up", 2, 2 * 86400),
        ("catch_up(2, 120)", "catch_up", 2, 120),
    ],
)
def test_misfire_policies_parse(text: str, policy: str, limit: int | None, deadline: float | None) -> None:
    m = Misfire.parse(text)
    assert (m.policy, m.limit, m.deadline) == (policy, limit, deadline)
    assert Misfire.parse(str(m)) == m


@pytest.mark.parametrize(
    ("cls", "text", "says"),
    [
        (Overlap, "skipp", "overlap must be one of skip, queue, queue(N), allow(N)"),
        (Overlap, "allow", "overlap must be one of"),  # allow needs its N
        (Overlap, "allow(0)", "1..1000"),
        (Overlap, "queue(-1)", "1..1000"),
        (Overlap, "queue(two)", "1..1000"),
        (Overlap, "queue(1001)", "1..1000"),
        (Overlap, "skip(2)", "overlap must be one of"),
        (Overlap, "", "overlap must be one of"),
        (Misfire, "run-once", "misfire must be one of skip, run_once, catch_up(N, DEADLINE)"),
        (Misfire, "catch_up", "misfire must be one of"),  # needs N and a deadline
        (Misfire, "catch_up(3)", "misfire must be one of"),
        (Misfire, "catch_up(0, 1h)", "1..1000"),
        (Misfire, "catch_up(5000, 1h)", "1..1000"),
        (Misfire, "catch_up(3, 0s)", "duration > 0"),
        (Misfire, "catch_up(3, 1w)", "duration > 0"),
        (Misfire, "run_once(2)", "misfire must be one of"),
    ],
)
def test_a_bad_policy_is_refused_with_an_error_naming_its_field(cls, text: str, says: str) -> None:
    with pytest.raises(ScheduleError) as e:
        cls.parse(text)
    assert e.value.field == cls.__name__.lower()
    assert says in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"policy": "queue", "limit": 0}, "1..1000"),
        ({"policy": "allow", "limit": 1001}, "1..1000"),
        ({"policy": "skip", "limit": 2}, "skip takes no limit"),
        ({"policy": "allow", "limit": True}, "1..1000"),
    ],
)
def test_an_overlap_built_directly_is_checked_too(kwargs: dict, says: str) -> None:
    with pytest.raises(ScheduleError, match=says):
        Overlap(**kwargs)


def test_a_misfire_built_directly_is_checked_too() -> None:
    with pytest.raises(ScheduleError, match="needs a deadline"):
        Misfire("catch_up", 3)
    with pytest.raises(ScheduleError, match="takes no limit"):
        Misfire("skip", 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backup", ("backup", "@default")),
        ("backup@default", ("backup", "@default")),
        ("backup@3", ("backup", 3)),
        (" backup@12 ", ("backup", 12)),
    ],
)
def test_a_job_reference_names_a_version_or_the_default(text: str, expected: tuple) -> None:
    assert parse_job_ref(text) == expected


@pytest.mark.parametrize(
    ("text", "field"), [("", "job"), ("backup@0", "version"), ("backup@v2", "version"), ("backup@", "version")]
)
def test_a_bad_job_reference_is_refused(text: str, field: str) -> None:
    with pytest.raises(ScheduleError) as e:
        parse_job_ref(text)
    assert e.value.field == field


def test_durations_read_as_seconds() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "1.5m", "6h", "2d")] == [90, 90, 90, 6 * H, 2 * 86400]


# --------------------------------------------------------------------------- the planner


def test_a_fire_time_fires_when_its_time_comes_and_the_plan_says_when_to_wake() -> None:
    s = sched("0 * * * *")
    since = utc(2026, 1, 1, 9, 30)
    assert plan(s, State(since), utc(2026, 1, 1, 9, 59, 59)) == Plan((), utc(2026, 1, 1, 10))
    p = plan(s, State(since), utc(2026, 1, 1, 10, 0, 2))
    assert p == Plan((Record(utc(2026, 1, 1, 10), O.FIRED),), utc(2026, 1, 1, 11))
    assert p.actions[0].starts


def test_a_recorded_fire_time_never_fires_again() -> None:
    s = sched("0 * * * *")
    t = utc(2026, 1, 1, 10)
    for now in (t, t + 1, t + GRACE, t + 3599):  # a restart, a second master, a late tick
        assert plan(s, State(utc(2026, 1, 1), last_fire=t), now).actions == ()


def test_two_masters_planning_the_same_schedule_decide_the_same_fire_time() -> None:
    # so the unique (schedule, fire_time) lets exactly one of their inserts through
    s, state, t = sched(), State(utc(2026, 1, 1, 9, 30)), utc(2026, 1, 1, 10)
    assert plan(s, state, t + 1).actions == plan(s, state, t + 30).actions == (Record(t, O.FIRED),)


def test_a_clock_stepped_back_behind_the_last_fire_time_fires_nothing_until_after_it() -> None:
    last = utc(2026, 1, 1, 10)
    assert plan(sched(), State(utc(2026, 1, 1), last_fire=last), last - 1800) == Plan((), utc(2026, 1, 1, 11))


def test_a_fire_time_at_or_before_since_does_not_belong_to_the_schedule() -> None:
    t = utc(2026, 1, 1, 10)
    assert plan(sched(), State(since=t), t + 5).actions == ()


def test_a_paused_schedule_does_nothing_and_does_not_wake_but_still_previews() -> None:
    s = sched(paused=True)
    state = State(utc(2026, 1, 1), last_fire=utc(2026, 1, 1, 5), queued=(utc(2026, 1, 1, 6),))
    assert plan(s, state, utc(2026, 1, 1, 10)) == Plan((), None)
    assert next_fire_times(s, utc(2026, 1, 1, 10), 2) == [utc(2026, 1, 1, 11), utc(2026, 1, 1, 12)]


def test_resuming_does_not_count_the_paused_fire_times_as_missed() -> None:
    resumed = utc(2026, 1, 1, 10, 30)  # paused since 05:00: 06:00..10:00 were the operator's choice
    p = plan(sched(), State(since=resumed, last_fire=utc(2026, 1, 1, 5)), utc(2026, 1, 1, 10, 45))
    assert p == Plan((), utc(2026, 1, 1, 11))


# The master is down across three fire times (01:00, 02:00, 03:00) and comes back at 03:30.
DOWN = [
    ("skip", [(1, "missed"), (2, "missed"), (3, "missed")]),
    ("run_once", [(1, "missed"), (2, "missed"), (3, "caught-up")]),
    ("catch_up(5, 6h)", [(1, "caught-up"), (2, "caught-up"), (3, "caught-up")]),
    ("catch_up(2, 6h)", [(1, "missed"), (2, "caught-up"), (3, "caught-up")]),
    ("catch_up(5, 2h)", [(1, "missed"), (2, "caught-up"), (3, "caught-up")]),  # 01:00 is 2.5 h old
    ("catch_up(5, 10m)", [(1, "missed"), (2, "missed"), (3, "missed")]),
]


@pytest.mark.parametrize(("misfire", "expected"), DOWN)
def test_a_master_down_across_three_fire_times_applies_the_misfire_policy(misfire: str, expected: list) -> None:
    s = sched("0 * * * *", misfire=Misfire.parse(misfire), overlap=Overlap.parse("allow(5)"))
    p = plan(s, State(since=utc(2026, 1, 1, 0, 30)), utc(2026, 1, 1, 3, 30))
    assert [(r.fire_time, r.outcome.value) for r in p.actions] == [(utc(2026, 1, 1, h), o) for h, o in expected]
    assert p.wake == utc(2026, 1, 1, 4)


# ...and comes back at 04:00:10, in time for the 04:00 fire time.
DOWN_BACK_ON_TIME = [
    ("skip", ["missed", "missed", "missed", "fired"]),
    ("run_once", ["missed", "missed", "missed", "fired"]),  # the on-time run is the one run
    ("catch_up(5, 6h)", ["caught-up", "caught-up", "caught-up", "fired"]),
    ("catch_up(1, 6h)", ["missed", "missed", "caught-up", "fired"]),
]


@pytest.mark.parametrize(("misfire", "expected"), DOWN_BACK_ON_TIME)
def test_a_master_back_at_a_fire_time_fires_it_and_applies_the_policy_to_the_missed(misfire, expected) -> None:
    s = sched("0 * * * *", misfire=Misfire.parse(misfire), overlap=Overlap.parse("allow(5)"))
    p = plan(s, State(since=utc(2026, 1, 1, 0, 30)), utc(2026, 1, 1, 4, 0, 10))
    assert [r.outcome.value for r in p.actions] == expected
    assert [r.fire_time for r in p.actions] == [utc(2026, 1, 1, h) for h in (1, 2, 3, 4)]


def test_a_fire_time_seen_later_than_the_grace_is_a_misfire() -> None:
    s = sched("0 * * * *", misfire=Misfire.parse("skip"))
    t = utc(2026, 1, 1, 10)
    assert plan(s, State(t - 60), t + GRACE).actions == (Record(t, O.FIRED),)
    assert plan(s, State(t - 60), t + GRACE + 1).actions == (Record(t, O.MISSED),)
    assert plan(s, State(t - 60), t + 5, grace=1).actions == (Record(t, O.MISSED),)


@pytest.mark.parametrize("misfire", ["skip", "run_once", "catch_up(3, 1d)"])
def test_a_master_down_across_three_fire_times_in_a_simulation(misfire: str) -> None:
    s = sched("0 * * * *", misfire=Misfire.parse(misfire), overlap=Overlap.parse("queue(5)"))
    sim = Sim(s, since=utc(2026, 1, 1, 0, 30), duration=600)
    sim.run(until=utc(2026, 1, 1, 0, 59))
    sim.run(start=utc(2026, 1, 1, 3, 30), until=utc(2026, 1, 1, 5, 30))  # down from 00:59 to 03:30
    assert dict(sim.outcomes())[utc(2026, 1, 1, 4)] == "fired"
    ran = [t for t, _ in sim.started]
    assert len(ran) == len(set(ran)), "a fire time ran twice"
    assert {"skip": 2, "run_once": 3, "catch_up(3, 1d)": 5}[misfire] == len(ran)


def test_a_long_outage_of_a_frequent_schedule_records_the_recent_misses_and_counts_the_rest() -> None:
    s = sched("* * * * *", misfire=Misfire.parse("run_once"))
    now = utc(2026, 3, 1, 12, 0, 30)
    t0 = time.perf_counter()
    p = plan(s, State(since=utc(2025, 9, 1)), now)  # six months of minutes: more than MAX_SCAN
    elapsed = time.perf_counter() - t0
    assert p.actions[-1] == Record(utc(2026, 3, 1, 12), O.FIRED)  # on time: it is the one run
    assert [r.outcome for r in p.actions[:-1]] == [O.MISSED] * MISSED_RECORDS
    assert p.actions[0].fire_time == utc(2026, 3, 1, 12) - MISSED_RECORDS * 60
    assert p.missed_earlier == 100_000 - MISSED_RECORDS - 1  # counted up to MAX_SCAN
    assert elapsed < 20, f"planning took {elapsed:.1f} s"
    p = plan(s, State(since=utc(2026, 3, 1, 11)), now)  # an hour: every miss recorded
    assert (len(p.actions), p.missed_earlier) == (60, 0)


# Overlap: an hourly schedule whose job runs 2.5 hours; every fire time on time.
LONG_JOB = [
    ("skip", ["fired", "skipped-overlap", "skipped-overlap", "fired", "skipped-overlap", "skipped-overlap"], [1, 4]),
    # 02:00 waits until 01:00's run ends at 03:30; 03:00 finds the queue full; at 06:30 06:00 still waits
    ("queue(1)", ["fired", "fired", "skipped-overlap", "fired", "skipped-overlap", "queued"], [1, 2, 4]),
    ("queue(3)", ["fired", "fired", "fired", "queued", "queued", "queued"], [1, 2, 3]),
    ("allow(2)", ["fired", "fired", "skipped-overlap", "fired", "fired", "skipped-overlap"], [1, 2, 4, 5]),
    ("allow(3)", ["fired"] * 6, [1, 2, 3, 4, 5, 6]),
]


@pytest.mark.parametrize(("overlap", "outcomes", "ran"), LONG_JOB)
def test_overlap_with_a_long_running_job(overlap: str, outcomes: list[str], ran: list[int]) -> None:
    s = sched("0 * * * *", overlap=Overlap.parse(overlap))
    sim = Sim(s, since=utc(2026, 1, 1, 0, 30), duration=2.5 * H)
    sim.run(until=utc(2026, 1, 1, 6, 30))
    assert sim.outcomes() == [(utc(2026, 1, 1, h), o) for h, o in zip(range(1, 7), outcomes, strict=True)]
    assert [t for t, _ in sim.started] == [utc(2026, 1, 1, h) for h in ran]
    if overlap.startswith("queue"):  # a queued run starts as soon as the one before it ends
        starts = dict(sim.started)
        assert starts[utc(2026, 1, 1, 2)] == utc(2026, 1, 1, 3, 30)


def test_a_queued_fire_time_waits_while_paused_and_starts_after_resume() -> None:
    q = utc(2026, 1, 1, 2)
    state = State(utc(2026, 1, 1), last_fire=q, running=0, queued=(q,))
    assert plan(sched(overlap=Overlap.parse("queue"), paused=True), state, utc(2026, 1, 1, 2, 30)).actions == ()
    p = plan(sched(overlap=Overlap.parse("queue")), state, utc(2026, 1, 1, 2, 30))
    assert p.actions == (StartQueued(q),)


def test_a_queued_fire_time_starts_before_a_new_one_and_keeps_the_queue_in_order() -> None:
    s = sched(overlap=Overlap.parse("queue(2)"))
    state = State(
        utc(2026, 1, 1), last_fire=utc(2026, 1, 1, 2), running=0, queued=(utc(2026, 1, 1, 1), utc(2026, 1, 1, 2))
    )
    p = plan(s, state, utc(2026, 1, 1, 3, 0, 1))
    assert p.actions == (StartQueued(utc(2026, 1, 1, 1)), Record(utc(2026, 1, 1, 3), O.QUEUED))


def test_catch_up_under_skip_runs_one_at_a_time_and_under_queue_runs_them_in_turn() -> None:
    misfire = Misfire.parse("catch_up(3, 1d)")
    since, now = utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 3, 30)
    skip = plan(sched(misfire=misfire), State(since), now)
    assert [r.outcome for r in skip.actions] == [O.CAUGHT_UP, O.SKIPPED_OVERLAP, O.SKIPPED_OVERLAP]
    queue = plan(sched(misfire=misfire, overlap=Overlap.parse("queue(2)")), State(since), now)
    assert [r.outcome for r in queue.actions] == [O.CAUGHT_UP, O.QUEUED, O.QUEUED]


def test_only_a_queued_outcome_may_change_and_only_to_fired() -> None:
    check_outcome_transition(O.QUEUED, O.FIRED)
    for old in O:
        for new in O:
            if (old, new) != (O.QUEUED, O.FIRED):
                with pytest.raises(ValueError, match="cannot become"):
                    check_outcome_transition(old, new)


# Daily at a time the DST day skips or repeats: exactly one run that day, at the right instant.
DST_DAYS = [
    (BERLIN, "30 2 * * *", (2026, 3, 28), [(3, 28, 2, 30), (3, 29, 3, 0), (3, 30, 2, 30)]),
    (BERLIN, "30 2 * * *", (2026, 10, 24), [(10, 24, 2, 30), (10, 25, 2, 30), (10, 26, 2, 30)]),
    (NEW_YORK, "30 2 * * *", (2026, 3, 7), [(3, 7, 2, 30), (3, 8, 3, 0), (3, 9, 2, 30)]),
    (NEW_YORK, "30 1 * * *", (2026, 10, 31), [(10, 31, 1, 30), (11, 1, 1, 30), (11, 2, 1, 30)]),
]


@pytest.mark.parametrize(("zone", "expr", "first_day", "fired"), DST_DAYS)
def test_a_daily_schedule_fires_once_a_day_across_the_dst_day(zone, expr, first_day, fired) -> None:
    s = sched(expr, zone)
    sim = Sim(s, since=local(zone, *first_day), duration=60)
    sim.run(until=local(zone, *first_day) + 3 * 86400 - 1)
    tz = ZoneInfo(zone)
    walls = [datetime.fromtimestamp(t, tz) for t, _ in sim.started]
    assert [(w.month, w.day, w.hour, w.minute) for w in walls] == fired
    assert {o for _, o in sim.outcomes()} == {"fired"}


@pytest.mark.parametrize(
    ("zone", "day"), [(BERLIN, (2026, 10, 25)), (NEW_YORK, (2026, 11, 1)), (BERLIN, (2026, 3, 29))]
)
def test_a_master_woken_late_on_a_dst_day_still_fires_each_time_once(zone: str, day: tuple[int, int, int]) -> None:
    s = sched("*/30 * * * *", zone, overlap=Overlap.parse("allow(3)"))
    sim = Sim(s, since=local(zone, *day) - 1, duration=60)
    until = local(zone, *day) + 86400
    sim.run(until=until, late=7)
    ran = [t for t, _ in sim.started]
    expected = [t for t in Cron("*/30 * * * *", zone).next_times(local(zone, *day) - 1, 60) if t + 7 <= until]
    assert ran == expected and len(expected) >= 46
    assert all(started == t + 7 for t, started in sim.started)
    assert {o for _, o in sim.outcomes()} == {"fired"}


DOCS = "docs/schedules.md"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Cron("* * * *"),
        lambda: Cron("61 * * * *"),
        lambda: Cron("@reboot"),
        lambda: Cron("* * * * *", "Mars/Olympus"),
        lambda: Overlap.parse("allow"),
        lambda: Misfire.parse("catch_up(3)"),
        lambda: sched(overrides={"parallel": 0}),
    ],
)
def test_the_errors_quoted_in_the_docs_are_the_errors_given(make) -> None:
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) in (Path(__file__).parents[2] / DOCS).read_text().splitlines()
