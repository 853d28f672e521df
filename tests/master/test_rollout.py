"""The rollout engine, pure: a table per rule, an injected clock, no sleeps, no I/O."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mschedule_master.rollout import (
    ABORT_STANDS,
    PROVISIONAL,
    Dispatch,
    Limits,
    Rollout,
    SendKill,
    TargetChanged,
    TargetSnapshot,
    TaskChanged,
    Timing,
)
from mschedule_master.states import TargetState, TaskState, check_target_transition

T = TargetState
FAILURES = [T.FAILED, T.TIMEOUT, T.LOST, T.UNREACHABLE, T.INTERRUPTED, T.REJECTED]
TIMING = Timing(delivery_timeout=30, redeliver_interval=5, ack_grace=2, lost_grace=20, kill_resend=4)


def ids(n: int) -> list[str]:
    return [f"a{i:02d}" for i in range(n)]


class Run:
    """Drives a Rollout and checks every action it returns against a mirror of the targets."""

    def __init__(self, n: int = 5, timing: Timing = TIMING, **limits) -> None:
        self.r = Rollout("t1", ids(n), Limits(**limits), timing=timing, now=0.0)
        self.mirror = {a: T.WAITING for a in ids(n)}
        self.task = TaskState.WAITING
        self.actions: list = []
        self.max_active = 0
        self.revived: set[str] = set()  #: targets a late report made active again (beyond the window)

    def do(self, actions: list) -> list:
        for a in actions:
            if isinstance(a, TargetChanged):
                assert self.mirror[a.agent_id] == a.old
                check_target_transition(a.old, a.new)
                assert a.revised == (a.old in PROVISIONAL), "only a provisional verdict is revised"
                self.mirror[a.agent_id] = a.new
                if a.revised and a.new.active:
                    self.revived.add(a.agent_id)
            elif isinstance(a, TaskChanged):
                assert a.old == self.task and (a.new != a.old or a.revised)
                assert not self.task.final or a.revised, "a final task changes again only on a revision"
                self.task = a.new
            elif isinstance(a, Dispatch) and not a.redeliver:
                assert self.mirror[a.agent_id] == T.DISPATCHED, "persist DISPATCHED before publishing"
        active = sum(1 for s in self.mirror.values() if s.active)
        self.max_active = max(self.max_active, active)
        assert active <= self.r.window + len(self.revived)
        assert self.r.state == self.task
        assert self.r.counts() == {s.value: list(self.mirror.values()).count(s) for s in TargetState}
        assert self.r.counts(nonzero=True) == {k: n for k, n in self.r.counts().items() if n}
        self.actions += actions
        return actions

    def start(self, now: float = 0.0) -> list:
        return self.do(self.r.start(now))

    def final(self, agent: str, state: TargetState, now: float = 1.0) -> list:
        return self.do(self.r.on_final(agent, state, now))

    def finish_active(self, state: TargetState, now: float = 1.0) -> list:
        """Report ``state`` for every currently active target (in seq order)."""
        out = []
        for a in [a for a, s in self.mirror.items() if s.active]:
            out += self.final(a, state, now)
        return out

    def active(self) -> list[str]:
        return [a for a, s in self.mirror.items() if s.active]

    def tick(self, now: float) -> list:
        return self.do(self.r.tick(now))

    def of(self, kind: type, actions: list | None = None) -> list:
        return [a for a in (self.actions if actions is None else actions) if isinstance(a, kind)]


def only(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


# ------------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    ("parallel", "n", "window"),
    [
        (1, 10, 1),
        (3, 10, 3),
        (50, 10, 50),
        ("10%", 5, 1),
        ("50%", 10, 5),
        ("33%", 10, 3),
        ("100%", 7, 7),
        ("12.5%", 8, 1),
        ("0.5%", 10, 1),
        ("25%", 10_000, 2_500),
    ],
)
def test_window_is_parallel_or_the_floor_of_a_percentage_with_a_minimum_of_one(parallel, n, window):
    assert Limits(parallel=parallel).window(n) == window


@pytest.mark.parametrize(
    ("fail_rate", "fail_count", "n", "failures", "tripped"),
    [
        (0.2, -1, 10, 2, False),
        (0.2, -1, 10, 3, True),
        ("20%", -1, 10, 3, True),
        ("20%", -1, 10, 2, False),
        (None, 0, 10, 1, True),
        (None, 0, 10, 0, False),
        (None, 2, 10, 2, False),
        (None, 2, 10, 3, True),
        (0, -1, 10, 10, False),  # the design document's default pair: no limit at all
        (-1, -1, 10, 10, False),
        (None, -1, 10, 10, False),
        (1.0, -1, 10, 10, False),
        ("100%", -1, 1, 1, False),
        (0.5, -1, 1, 1, True),
        (0, 2, 10, 1, True),  # with a count limit, fail_rate 0 is a real zero-tolerance rate
        (0.57, -1, 100, 57, False),  # exact: 0.57 * 100 is 56.99999999999999 in floats
        (0.57, -1, 100, 58, True),
        (0.1, 5, 3, 1, True),  # rate trips first
        (0.9, 1, 10, 2, True),  # count trips first
    ],
)
def test_limits_trip_when_failures_exceed_count_or_rate_times_targets(fail_rate, fail_count, n, failures, tripped):
    assert Limits(fail_rate=fail_rate, fail_count=fail_count).tripped(failures, n) is tripped


@pytest.mark.parametrize(
    ("limits", "failures", "n", "reason"),
    [
        (Limits(fail_count=0), 1, 10, "fail_count 0 exceeded: 1 failure"),
        (Limits(fail_count=2), 3, 10, "fail_count 2 exceeded: 3 failures"),
        (Limits(fail_rate=0.2), 3, 10, "fail_rate 0.2 exceeded: 3 of 10 targets failed"),
        (Limits(fail_rate="20%"), 3, 10, "fail_rate 20% exceeded: 3 of 10 targets failed"),
        (Limits(fail_rate="20%"), 2, 10, None),
    ],
)
def test_trip_reason_names_the_limit_and_the_failures(limits, failures, n, reason):
    assert limits.trip_reason(failures, n) == reason


@pytest.mark.parametrize(
    ("limits", "n", "least"),
    [
        (Limits(fail_rate=0.2), 10, 3),
        (Limits(fail_count=0), 10, 1),
        (Limits(fail_count=4, fail_rate="10%"), 10, 2),
        (Limits(), 10, None),
        (Limits(fail_rate=1), 10, None),
        (Limits(fail_count=10), 10, None),
    ],
)
def test_first_tripping_is_the_smallest_aborting_number_of_failures(limits, n, least):
    assert limits.first_tripping(n) == least


@pytest.mark.parametrize(
    "kwargs",
    [
        {"parallel": 0},
        {"parallel": "0%"},
        {"parallel": "ten"},
        {"fail_rate": 1.5},
        {"fail_rate": -0.5},
        {"fail_rate": "lots"},
        {"fail_count": -2},
        {"on_abort": "panic"},
    ],
)
def test_limits_refuse_nonsense(kwargs):
    with pytest.raises(ValueError):
        Limits(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"delivery_timeout": 0}, {"redeliver_interval": 0}, {"redeliver_max": 0}, {"kill_resend": -1}]
)
def test_timing_refuses_intervals_that_would_never_advance(kwargs):
    with pytest.raises(ValueError):
        Timing(**kwargs)


def test_a_rollout_needs_targets_and_distinct_ones():
    with pytest.raises(ValueError):
        Rollout("t", [], Limits(), now=0)
    with pytest.raises(ValueError):
        Rollout("t", ["a", "a"], Limits(), now=0)


# ------------------------------------------------------------------------ start and window


def test_start_dispatches_the_first_window_in_order_with_an_expiry():
    run = Run(5, parallel=2)
    actions = run.start(100.0)
    assert actions[0] == TaskChanged(TaskState.WAITING, TaskState.RUNNING, "")
    assert only(actions, Dispatch) == [Dispatch("a00", 130.0), Dispatch("a01", 130.0)]
    assert run.r.targets["a00"].dispatched_at == 100.0
    assert run.r.targets["a00"].expires_at == 130.0
    assert run.r.start(101.0) == [], "start twice does nothing"


@pytest.mark.parametrize(("n", "parallel", "first"), [(10, 1, 1), (10, 3, 3), (10, "50%", 5), (3, 10, 3), (10, "1%", 1)])
def test_start_dispatches_min_of_window_and_targets(n, parallel, first):
    run = Run(n, parallel=parallel)
    assert len(only(run.start(), Dispatch)) == first


@pytest.mark.parametrize("parallel", [1, 2, 3, "30%", 10])
def test_sliding_window_dispatches_the_next_target_as_soon_as_one_finishes(parallel):
    run = Run(10, parallel=parallel)
    run.start()
    order = [a.agent_id for a in run.of(Dispatch)]
    clock = 1.0
    while run.active():
        before = len(run.of(Dispatch))
        victim = run.active()[-1]  # finish out of order: the newest first
        clock += 1
        run.do(run.r.on_started(victim, clock))
        new = run.final(victim, T.SUCCEED, clock)
        if before < 10:
            assert len(only(new, Dispatch)) == 1, "exactly one replacement"
        order += [a.agent_id for a in only(new, Dispatch)]
    assert order == ids(10), "dispatch follows seq order"
    assert run.max_active == min(Limits(parallel=parallel).window(10), 10)
    assert run.task == TaskState.SUCCEED
    assert run.r.reason == "all 10 targets succeeded"


# ------------------------------------------------------------------------ thresholds


@pytest.mark.parametrize(
    ("n", "limits", "failed_at_abort", "reason"),
    [
        (10, {"fail_rate": 0.2}, 3, "fail_rate 0.2 exceeded: 3 of 10 targets failed"),
        (10, {"fail_rate": "20%"}, 3, "fail_rate 20% exceeded: 3 of 10 targets failed"),
        (10, {"fail_count": 0}, 1, "fail_count 0 exceeded: 1 failure"),
        (10, {"fail_count": 3}, 4, "fail_count 3 exceeded: 4 failures"),
        (10, {"fail_count": 4, "fail_rate": 0.1}, 2, "fail_rate 0.1 exceeded: 2 of 10 targets failed"),
        (1, {"fail_count": 0}, 1, "fail_count 0 exceeded: 1 failure"),
        (1, {"fail_rate": 0.5}, 1, "fail_rate 0.5 exceeded: 1 of 1 targets failed"),
    ],
)
@pytest.mark.parametrize("failure", FAILURES)
def test_rollout_aborts_at_the_failure_that_exceeds_a_limit(n, limits, failed_at_abort, reason, failure):
    run = Run(n, parallel=1, **limits)
    run.start()
    for i in range(failed_at_abort):
        assert run.r.aborted is False
        run.final(ids(n)[i], failure, now=float(i + 1))
    assert run.r.aborted is True
    c = run.r.counts()
    assert c[failure.value] == failed_at_abort
    assert c["CANCELLED"] == n - failed_at_abort
    assert run.task == TaskState.FAILED
    assert run.r.reason == reason
    assert not run.of(Dispatch)[failed_at_abort:], "nothing dispatched after the abort"


@pytest.mark.parametrize(
    ("limits", "n"),
    [({"fail_rate": "100%"}, 10), ({"fail_rate": 1}, 4), ({}, 10), ({"fail_rate": 0, "fail_count": -1}, 5), ({"fail_count": 10}, 10)],
)
def test_rollout_without_a_reachable_limit_runs_every_target_and_ends_failed(limits, n):
    run = Run(n, parallel=2, **limits)
    run.start()
    for _ in range(n):
        run.finish_active(T.FAILED)
    assert run.r.counts()["FAILED"] == n
    assert run.r.aborted is False
    assert run.task == TaskState.FAILED
    assert run.r.reason == f"{n} of {n} targets did not succeed: FAILED {n}"


@pytest.mark.parametrize("neither", [T.KILLED, T.CANCELLED])
def test_killed_and_cancelled_targets_are_no_failures_but_the_task_does_not_succeed(neither):
    run = Run(2, parallel=2, fail_count=0)
    run.start()
    run.final("a00", neither)
    assert run.r.failures == 0 and not run.r.aborted
    run.final("a01", T.SUCCEED)
    assert run.task == TaskState.FAILED
    assert run.r.reason == f"1 of 2 targets did not succeed: {neither.value} 1"


def test_abort_with_on_abort_kill_kills_every_active_target_and_ends_when_they_report():
    run = Run(10, parallel=3, fail_count=0, on_abort="kill")
    run.start()
    run.do(run.r.on_ack("a01", 1))
    run.do(run.r.on_started("a02", 1))
    actions = run.final("a00", T.FAILED, 2)
    assert only(actions, SendKill) == [SendKill("a01"), SendKill("a02")]
    assert run.r.counts()["CANCELLED"] == 7
    assert run.task == TaskState.RUNNING, "waits for the killed targets to report"
    run.final("a01", T.KILLED, 3)
    assert run.task == TaskState.RUNNING
    run.final("a02", T.KILLED, 3)
    assert run.task == TaskState.FAILED
    assert run.r.reason == "fail_count 0 exceeded: 1 failure"


def test_abort_with_on_abort_drain_lets_active_targets_finish_but_dispatches_nothing_more():
    run = Run(10, parallel=3, fail_count=0, on_abort="drain")
    run.start()
    actions = run.final("a00", T.FAILED, 2)
    assert not only(actions, SendKill) and not only(actions, Dispatch)
    run.final("a01", T.SUCCEED, 3)
    assert run.task == TaskState.RUNNING
    run.final("a02", T.FAILED, 4)
    assert run.task == TaskState.FAILED
    assert run.r.counts() == {**run.r.counts(), "SUCCEED": 1, "FAILED": 2, "CANCELLED": 7}
    assert run.r.reason == "fail_count 0 exceeded: 1 failure"
    assert len(run.of(Dispatch)) == 3


def test_an_unacked_dispatch_killed_by_an_abort_becomes_cancelled_at_its_expiry():
    run = Run(3, parallel=2, fail_count=0)
    run.start(0)
    assert only(run.final("a00", T.FAILED, 1), SendKill) == [SendKill("a01")]
    assert not only(run.tick(10), Dispatch), "no redelivery of a task being killed"
    run.tick(31.9)
    assert run.mirror["a01"] == T.DISPATCHED
    run.tick(32)
    assert run.mirror["a01"] == T.CANCELLED
    assert run.task == TaskState.FAILED


# ------------------------------------------------------------------------ kill


def test_kill_cancels_waiting_targets_and_kills_active_ones_then_ends_killed():
    run = Run(6, parallel=2)
    run.start(0)
    run.do(run.r.on_started("a00", 1))
    actions = run.do(run.r.kill(2, reason="oops"))
    assert only(actions, SendKill) == [SendKill("a00"), SendKill("a01")]
    assert run.r.counts()["CANCELLED"] == 4
    assert all(a.reason == "task killed: oops" for a in only(actions, TargetChanged))
    assert run.task == TaskState.RUNNING
    assert run.do(run.r.kill(3)) == [], "a second kill changes nothing"
    run.final("a00", T.KILLED, 4)
    run.final("a01", T.KILLED, 4)
    assert run.task == TaskState.KILLED
    assert run.r.reason == "oops"


def test_kill_is_resent_every_kill_resend_until_the_target_reports():
    run = Run(2, parallel=2)
    run.start(0)
    run.do(run.r.on_started("a00", 1))
    run.do(run.r.on_ack("a01", 1))
    run.do(run.r.kill(10))
    assert run.r.next_deadline() == 14
    assert run.tick(13.9) == []
    assert only(run.tick(14), SendKill) == [SendKill("a00"), SendKill("a01")]
    run.final("a01", T.KILLED, 15)
    assert only(run.tick(18), SendKill) == [SendKill("a00")]
    run.final("a00", T.SUCCEED, 19)  # finished before the kill landed: a success is a success
    assert run.r.next_deadline() is None
    assert run.task == TaskState.KILLED


def test_kill_before_start_cancels_everything_and_ends_killed_at_once():
    run = Run(3)
    actions = run.do(run.r.kill(0))
    assert run.r.counts()["CANCELLED"] == 3
    assert actions[-1] == TaskChanged(TaskState.WAITING, TaskState.KILLED, "killed by user")
    assert run.r.start(1) == []


def test_kill_after_the_task_ended_does_nothing():
    run = Run(1)
    run.start()
    run.final("a00", T.SUCCEED)
    assert run.r.kill(5) == []
    assert run.task == TaskState.SUCCEED


def test_a_killed_unacked_dispatch_that_expires_is_cancelled_not_unreachable():
    run = Run(1)
    run.start(0)
    run.do(run.r.kill(1))
    run.tick(32)
    assert run.mirror["a00"] == T.CANCELLED
    assert run.task == TaskState.KILLED


def test_a_kill_owed_to_an_offline_agent_stays_pending_and_is_resent_with_back_off_up_to_lost_max():
    """KILL_PENDING: the target stays RUNNING with its kill owed (the task is not KILLED while
    its script may still run), re-sent after as long as the agent has been away (at most
    redeliver_max apart), until lost_max gives up on it."""
    run = Run(1)
    run.start(0)
    run.do(run.r.on_started("a00", 1))
    run.do(run.r.on_agent_offline("a00", 2))
    assert only(run.do(run.r.kill(3)), SendKill) == [SendKill("a00")]
    sent = []
    now = 3.0
    while now < 601.9:
        now = run.r.next_deadline()
        assert now is not None
        if now >= 602:
            break
        if only(run.tick(now), SendKill):
            sent.append(now)
    assert sent[:5] == [7, 12, 22, 42, 62] and all(b - a == 20 for a, b in zip(sent[4:], sent[5:], strict=False))
    assert run.mirror["a00"] == T.RUNNING and run.task == TaskState.RUNNING
    (lost,) = only(run.tick(602), TargetChanged)
    assert run.mirror["a00"] == T.LOST and "kill not confirmed" in lost.reason
    assert run.task == TaskState.KILLED


def test_a_kill_owed_to_an_agent_that_comes_back_ends_with_what_the_agent_reports():
    run = Run(2, parallel=2)
    run.start(0)
    for a in ("a00", "a01"):
        run.do(run.r.on_started(a, 1))
        run.do(run.r.on_agent_offline(a, 2))
    run.do(run.r.kill(3))
    run.tick(100)  # well past lost_grace (20): still owed, not LOST
    assert run.mirror == {"a00": T.RUNNING, "a01": T.RUNNING} and run.task == TaskState.RUNNING
    run.do(run.r.on_agent_online("a00", 101))
    run.final("a00", T.KILLED, 101.5)
    assert run.task == TaskState.RUNNING  # a01's kill is still owed
    run.final("a01", T.SUCCEED, 102)  # it finished before the kill landed
    assert run.task == TaskState.KILLED


def test_kill_during_a_drain_stops_it_but_the_task_stays_failed():
    run = Run(3, parallel=2, fail_count=0, on_abort="drain")
    run.start()
    run.final("a00", T.FAILED)
    assert only(run.do(run.r.kill(2)), SendKill) == [SendKill("a01")]
    run.final("a01", T.KILLED)
    assert run.task == TaskState.FAILED
    assert run.r.reason == "fail_count 0 exceeded: 1 failure"


# ------------------------------------------------------------------------ delivery


@pytest.mark.parametrize(
    ("delivery_timeout", "interval", "cap", "times"),
    [
        (30, 5, 20, (5, 10, 20)),  # gaps 5, 5, 10; a copy at 40 would come after expires_at
        (60, 5, 20, (5, 10, 20, 40)),  # the defaults: 4 copies where a fixed interval sent 11
        (100, 5, 20, (5, 10, 20, 40, 60, 80)),  # gaps double up to the cap, then stay there
        (30, 5, 5, (5, 10, 15, 20, 25)),  # cap = interval: the old fixed interval
        (30, 5, 1, (5, 10, 15, 20, 25)),  # a cap below the interval is the interval
        (12, 5, 20, (5, 10)),
    ],
)
def test_an_unacked_dispatch_is_redelivered_with_back_off_and_the_same_expiry(delivery_timeout, interval, cap, times):
    timing = dataclasses.replace(
        TIMING, delivery_timeout=delivery_timeout, redeliver_interval=interval, redeliver_max=cap
    )
    run = Run(1, timing=timing)
    run.start(0)
    sent = []
    while (d := run.r.next_deadline()) is not None and d < delivery_timeout:
        sent += [(d, a) for a in run.tick(d)]
    assert sent == [(float(s), Dispatch("a00", float(delivery_timeout), redeliver=True)) for s in times]
    assert run.r.next_deadline() == delivery_timeout + TIMING.ack_grace


def test_back_off_survives_a_restore_from_the_stored_times():
    run = Run(1, timing=dataclasses.replace(TIMING, delivery_timeout=100))
    run.start(0)
    run.tick(5), run.tick(10), run.tick(20)
    snap = dataclasses.replace(run.r.targets["a00"])
    r = Rollout.restore("t", Limits(), targets=[snap], task_state=TaskState.RUNNING, timing=run.r.timing)
    assert r.next_deadline() == 40, "the gap after a copy at 20 is 20, from dispatched_at and last_sent_at"


def test_an_ack_stops_redelivery_and_expiry():
    run = Run(1)
    run.start(0)
    assert run.do(run.r.on_ack("a00", 3)) == []
    assert run.r.next_deadline() is None
    assert run.tick(1000) == []
    assert run.mirror["a00"] == T.DISPATCHED


@pytest.mark.parametrize(("now", "state"), [(31.99, T.DISPATCHED), (32.0, T.UNREACHABLE), (500.0, T.UNREACHABLE)])
def test_an_unacked_dispatch_becomes_unreachable_after_expiry_plus_grace(now, state):
    run = Run(1)
    run.start(0)
    run.tick(now)
    assert run.mirror["a00"] == state


def test_unreachable_is_a_failure_and_frees_the_window():
    run = Run(3, parallel=1, fail_count=1)
    run.start(0)
    actions = run.tick(32)
    assert run.r.failures == 1
    assert only(actions, Dispatch) == [Dispatch("a01", 62.0)]


def test_a_late_tick_resolves_expiry_without_redelivering():
    run = Run(1)
    run.start(0)
    actions = run.tick(1000)
    assert not only(actions, Dispatch)
    assert run.task == TaskState.FAILED


def test_redelivery_stops_before_the_expiry():
    run = Run(1, timing=dataclasses.replace(TIMING, delivery_timeout=12))
    run.start(0)
    assert only(run.tick(5), Dispatch) and only(run.tick(10), Dispatch)
    assert run.r.next_deadline() == 14, "a copy at 15 would arrive after expires_at=12"


# ------------------------------------------------------------------------ LOST


@pytest.mark.parametrize(
    ("how_far", "online_at", "expected"),
    [
        ("started", None, T.LOST),
        ("acked", None, T.LOST),
        ("started", 21.9, T.RUNNING),
        ("acked", 15.0, T.DISPATCHED),
        ("dispatched", None, T.DISPATCHED),  # unacked: waits for its delivery expiry instead
    ],
)
def test_an_agent_offline_past_lost_grace_loses_its_running_target(how_far, online_at, expected):
    run = Run(1)
    run.start(0)
    if how_far == "started":
        run.do(run.r.on_started("a00", 1))
    elif how_far == "acked":
        run.do(run.r.on_ack("a00", 1))
    run.do(run.r.on_agent_offline("a00", 2))
    if online_at is not None:
        run.do(run.r.on_agent_online("a00", online_at))
    run.tick(21.99)
    assert run.mirror["a00"] in (T.RUNNING, T.DISPATCHED)
    run.tick(22)
    assert run.mirror["a00"] == expected


def test_an_unacked_target_offline_becomes_unreachable_at_its_expiry():
    run = Run(1)
    run.start(0)
    run.do(run.r.on_agent_offline("a00", 1))
    run.tick(31)
    assert run.mirror["a00"] == T.DISPATCHED
    run.tick(32)
    assert run.mirror["a00"] == T.UNREACHABLE


def test_a_second_offline_does_not_restart_the_grace_period():
    run = Run(1)
    run.start(0)
    run.do(run.r.on_started("a00", 1))
    run.do(run.r.on_agent_offline("a00", 2))
    run.do(run.r.on_agent_offline("a00", 10))
    run.tick(22)
    assert run.mirror["a00"] == T.LOST


def test_an_ack_from_an_agent_thought_offline_cancels_the_lost_timer():
    run = Run(1)
    run.start(0)
    run.do(run.r.on_agent_offline("a00", 1))
    run.do(run.r.on_ack("a00", 2))
    assert run.r.targets["a00"].offline_since is None
    assert run.r.next_deadline() is None


# ------------------------------------------------------------------------ agent events


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        ("final", T.FAILED),  # a second result for a finished target
        ("final", T.SUCCEED),
        ("waiting", T.SUCCEED),  # a result for a target never dispatched
        ("unknown", T.SUCCEED),  # an agent that is not a target
        ("started", T.REJECTED),  # out of sequence
        ("started", T.UNREACHABLE),
        ("acked", T.UNREACHABLE),  # an "expired" reject cannot follow an ack
    ],
)
def test_on_final_ignores_what_makes_no_sense(setup, event):
    run = Run(2, parallel=1)
    run.start(0)
    agent = {"final": "a00", "waiting": "a01", "unknown": "zz", "started": "a00", "acked": "a00"}[setup]
    if setup == "final":
        run.final("a00", T.SUCCEED)
    elif setup == "started":
        run.do(run.r.on_started("a00", 1))
    elif setup == "acked":
        run.do(run.r.on_ack("a00", 1))
    counts = run.r.counts()
    assert run.r.on_final(agent, event, 2) == []
    assert run.r.counts() == counts


@pytest.mark.parametrize("state", [T.WAITING, T.DISPATCHED, T.RUNNING])
def test_on_final_refuses_a_state_that_is_not_final(state):
    run = Run(1)
    run.start()
    with pytest.raises(ValueError):
        run.r.on_final("a00", state, 1)


@pytest.mark.parametrize("state", [T.SUCCEED, T.FAILED, T.TIMEOUT, T.KILLED, T.INTERRUPTED, T.REJECTED, T.UNREACHABLE, T.CANCELLED])
def test_on_final_applies_any_final_state_to_a_dispatched_target(state):
    run = Run(1)
    run.start()
    actions = run.do(run.r.on_final("a00", state, 5, reason="why"))
    assert actions[0] == TargetChanged("a00", T.DISPATCHED, state, "why")
    assert run.r.targets["a00"].finished_at == 5


def test_on_started_moves_dispatched_to_running_and_implies_the_ack():
    run = Run(1)
    run.start(0)
    assert run.do(run.r.on_started("a00", 3)) == [TargetChanged("a00", T.DISPATCHED, T.RUNNING, "")]
    assert run.r.targets["a00"].acked and run.r.targets["a00"].started_at == 3
    assert run.r.next_deadline() is None, "no redelivery, no expiry once started"
    assert run.r.on_started("a00", 4) == []


@pytest.mark.parametrize("method", ["on_ack", "on_started", "on_agent_offline", "on_agent_online"])
def test_events_for_unknown_agents_are_ignored(method):
    run = Run(1)
    run.start()
    assert getattr(run.r, method)("nobody", 1) == []


def test_counts_list_every_state_with_zeros():
    run = Run(3)
    assert run.r.counts() == {s.value: (3 if s is T.WAITING else 0) for s in TargetState}


def test_pop_dirty_reports_targets_whose_fields_changed_without_a_state_change():
    run = Run(2, parallel=2)
    run.start()
    assert run.r.pop_dirty() == ["a00", "a01"]
    run.do(run.r.on_ack("a01", 1))
    assert run.r.pop_dirty() == ["a01"]
    assert run.r.pop_dirty() == []


def test_take_dirty_is_pop_dirty_unordered():
    run = Run(3, parallel=3)
    run.start()
    assert run.r.take_dirty() == {"a00", "a01", "a02"}
    run.do(run.r.on_ack("a02", 1))
    assert run.r.take_dirty() == {"a02"}
    assert run.r.take_dirty() == set() and run.r.pop_dirty() == []


def test_nonzero_counts_follow_every_move_and_are_the_callers_own():
    run = Run(2, parallel=1)
    first = run.r.counts(nonzero=True)
    first["WAITING"] = 99  # the caller's copy: the rollout's cached counts stay right
    assert run.r.counts(nonzero=True) == {"WAITING": 2}
    run.start()
    assert run.r.counts(nonzero=True) == {"WAITING": 1, "DISPATCHED": 1}
    run.do(run.r.on_final("a00", T.SUCCEED, 2))
    assert run.r.counts(nonzero=True) == {"DISPATCHED": 1, "SUCCEED": 1}


# ------------------------------------------------------------------------ deadlines


def test_ticking_at_each_next_deadline_always_makes_progress_and_ends():
    """Agents that never answer: ticking at next_deadline() must end the task in few steps."""
    run = Run(20, parallel=4, fail_count=-1)
    run.start(0)
    steps = 0
    while (d := run.r.next_deadline()) is not None:
        run.tick(d)
        steps += 1
        assert steps < 1000
    assert run.task == TaskState.FAILED
    assert run.r.counts()["UNREACHABLE"] == 20
    assert run.r.next_deadline() is None


def test_next_deadline_is_the_earliest_pending_one():
    run = Run(3, parallel=3)
    run.start(0)
    run.do(run.r.on_ack("a00", 0))
    run.do(run.r.on_ack("a01", 0))
    run.do(run.r.on_agent_offline("a00", 1))  # LOST at 21
    run.do(run.r.on_ack("a02", 0))
    assert run.r.next_deadline() == 21
    run.do(run.r.kill(2))  # kill resend at 6
    assert run.r.next_deadline() == 6


# ------------------------------------------------------------------------ restore


def snapshot(r: Rollout) -> list[TargetSnapshot]:
    return [dataclasses.replace(t) for t in r.targets.values()]


def test_restore_then_resume_redelivers_unacked_and_fills_the_window():
    run = Run(6, parallel=3)
    run.start(0)
    run.do(run.r.on_ack("a00", 1))
    run.do(run.r.on_started("a01", 1))
    run.final("a01", T.SUCCEED, 2)  # a03 dispatched at 2
    r2 = Rollout.restore("t1", Limits(parallel=3), targets=snapshot(run.r), task_state=TaskState.RUNNING, timing=TIMING)
    assert r2.counts() == run.r.counts()
    actions = r2.resume(10)
    assert only(actions, Dispatch) == [Dispatch("a02", 30.0, redeliver=True), Dispatch("a03", 32.0, redeliver=True)]
    assert not only(actions, SendKill)
    r2.on_final("a00", T.SUCCEED, 11)
    assert r2.targets["a04"].state == T.DISPATCHED


def test_resume_resends_owed_kills_and_ends_a_killed_task_as_killed():
    run = Run(4, parallel=2)
    run.start(0)
    run.do(run.r.on_started("a00", 1))
    run.do(run.r.kill(2))
    r2 = Rollout.restore("t1", Limits(parallel=2), targets=snapshot(run.r), task_state=TaskState.RUNNING, timing=TIMING)
    assert r2.killed and not r2.aborted
    actions = r2.resume(5)
    assert only(actions, SendKill) == [SendKill("a00"), SendKill("a01")]
    assert not only(actions, Dispatch)
    r2.on_final("a00", T.KILLED, 6)
    r2.on_final("a01", T.KILLED, 6)
    assert r2.state == TaskState.KILLED and r2.reason == "killed by user"


def test_restore_infers_an_abort_from_the_stored_failures_and_finishes_it():
    run = Run(5, parallel=2, fail_count=0)
    run.start(0)
    targets = snapshot(run.r)
    targets[0].state = T.FAILED  # the crash came after the failure was stored, before the abort was
    r2 = Rollout.restore("t1", Limits(parallel=2, fail_count=0), targets=targets, task_state=TaskState.RUNNING, timing=TIMING)
    assert r2.aborted
    actions = r2.resume(3)
    assert r2.counts()["CANCELLED"] == 3
    assert only(actions, SendKill) == [SendKill("a01")]
    r2.on_final("a01", T.KILLED, 4)
    assert r2.state == TaskState.FAILED and r2.reason == "fail_count 0 exceeded: 1 failure"


def test_restore_of_a_waiting_task_starts_it_on_resume():
    r = Rollout.restore(
        "t1", Limits(parallel=2), targets=[TargetSnapshot(a, seq=i) for i, a in enumerate(ids(3))], task_state=TaskState.WAITING
    )
    assert [a.agent_id for a in only(r.resume(0), Dispatch)] == ["a00", "a01"]
    assert r.state == TaskState.RUNNING


def test_restore_of_a_finished_task_does_nothing():
    targets = [TargetSnapshot("a00", T.SUCCEED)]
    r = Rollout.restore("t1", Limits(), targets=targets, task_state=TaskState.SUCCEED, reason="done")
    assert r.resume(0) == [] and r.kill(0) == [] and r.next_deadline() is None


def test_resume_ends_a_task_whose_targets_all_finished_before_the_crash():
    targets = [TargetSnapshot("a00", T.SUCCEED, seq=0), TargetSnapshot("a01", T.SUCCEED, seq=1)]
    r = Rollout.restore("t1", Limits(), targets=targets, task_state=TaskState.RUNNING)
    assert r.resume(0) == [TaskChanged(TaskState.RUNNING, TaskState.SUCCEED, "all 2 targets succeeded")]


def test_resume_expires_a_dispatch_whose_deadline_passed_while_the_master_was_down():
    run = Run(1)
    run.start(0)
    r2 = Rollout.restore("t1", Limits(), targets=snapshot(run.r), task_state=TaskState.RUNNING, timing=TIMING)
    actions = r2.resume(100)
    assert not only(actions, Dispatch)
    assert r2.targets["a00"].state == T.UNREACHABLE and r2.state == TaskState.FAILED


# ------------------------------------------------------------------------ scale


def test_ten_thousand_targets_roll_out_in_time_linear_in_the_events():
    n = 10_000
    r = Rollout("big", [f"a{i}" for i in range(n)], Limits(parallel=100, fail_rate="50%"), now=0)
    began = time.process_time()
    queue = deque(a.agent_id for a in r.start(0) if isinstance(a, Dispatch))
    clock, done = 0.0, 0
    while queue:
        clock += 0.001
        agent = queue.popleft()
        r.on_ack(agent, clock)
        r.on_started(agent, clock)
        out = r.on_final(agent, T.FAILED if done % 4 == 0 else T.SUCCEED, clock)
        r.tick(clock)
        r.pop_dirty()
        queue.extend(a.agent_id for a in out if isinstance(a, Dispatch))
        done += 1
    cpu = time.process_time() - began
    assert done == n
    assert r.state == TaskState.FAILED and r.counts()["FAILED"] == n // 4
    assert cpu < 5, f"{n} targets took {cpu:.2f}s of CPU (about 0.1 s expected)"


def test_an_abort_in_a_big_rollout_cancels_the_rest_in_one_call():
    n = 10_000
    r = Rollout("big", [f"a{i}" for i in range(n)], Limits(parallel=10, fail_count=0), now=0)
    r.start(0)
    actions = r.on_final("a0", T.FAILED, 1)
    assert r.counts()["CANCELLED"] == n - 10
    assert len(only(actions, SendKill)) == 9


def test_restore_with_killed_true_ends_killed_even_if_failures_tripped_a_limit():
    run = Run(3, parallel=2, fail_count=0)
    run.start(0)
    run.do(run.r.kill(1, reason="stop"))
    run.final("a00", T.FAILED, 2)  # the killed script exited non-zero instead of being killed
    targets = snapshot(run.r)
    r2 = Rollout.restore(
        "t1", Limits(parallel=2, fail_count=0), targets=targets, task_state=TaskState.RUNNING, reason="stop", killed=True
    )
    assert r2.killed and not r2.aborted
    r2.resume(3)
    r2.on_final("a01", T.KILLED, 4)
    assert (r2.state, r2.reason) == (TaskState.KILLED, "stop")
    assert run.task == TaskState.RUNNING


# ------------------------------------------------------------------------ properties

EVENTS = st.tuples(
    st.sampled_from(["ack", "started", "final", "offline", "online", "tick", "kill"]),
    st.integers(0, 11),
    st.sampled_from(list(TargetState)),
    st.floats(0, 40),
)
LIMITS = st.fixed_dictionaries(
    {
        "parallel": st.one_of(st.integers(1, 5), st.sampled_from(["10%", "50%", "100%"])),
        "fail_count": st.integers(-1, 3),
        "fail_rate": st.sampled_from([None, -1, 0, 0.25, "50%", 1]),
        "on_abort": st.sampled_from(["kill", "drain"]),
    }
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 12), limits=LIMITS, events=st.lists(EVENTS, max_size=60))
def test_any_event_sequence_keeps_the_invariants_and_the_rollout_always_ends(n, limits, events):
    run = Run(n, **limits)
    run.start(0)
    now = 0.0
    for kind, idx, state, dt in events:
        now += dt
        agent = ids(n)[idx % n]
        stopped = run.r.aborted or run.r.killed
        if kind == "final":
            if not state.final:
                continue
            actions = run.final(agent, state, now)
        elif kind == "tick":
            actions = run.tick(now)
            assert (run.r.next_deadline() or math.inf) > now
        elif kind == "kill":
            actions = run.do(run.r.kill(now))
        else:
            actions = run.do(getattr(run.r, f"on_{kind}" if kind in ("ack", "started") else f"on_agent_{kind}")(agent, now))
        if stopped:
            assert not [a for a in only(actions, Dispatch) if not a.redeliver], "nothing new after abort or kill"
        unfinished = sum(1 for s in run.mirror.values() if not s.final)
        assert run.task.final == (unfinished == 0), "the task ends exactly when its last target does"
    # every agent now answers everything with success: the rollout must end
    for _ in range(3 * n + 5):
        if run.task.final:
            break
        for agent in run.active():
            run.final(agent, T.SUCCEED, now)
    assert run.task.final
    if run.task == TaskState.SUCCEED:
        assert set(run.mirror.values()) == {T.SUCCEED}
    if run.r.failures and not run.r.killed:
        assert run.task == TaskState.FAILED
    assert run.r.next_deadline() is None


def test_failures_reported_after_a_kill_do_not_turn_the_kill_into_an_abort():
    run = Run(3, parallel=2, fail_count=0)
    run.start(0)
    run.do(run.r.kill(1, reason="stop"))
    run.final("a00", T.FAILED, 2)  # the script exited non-zero on SIGTERM
    run.final("a01", T.KILLED, 2)
    assert (run.task, run.r.reason, run.r.aborted) == (TaskState.KILLED, "stop", False)


def test_resume_gives_a_dispatch_stored_without_expiry_a_fresh_one_instead_of_waiting_forever():
    targets = [TargetSnapshot("a00", T.DISPATCHED, seq=0, dispatched_at=0.0)]
    r = Rollout.restore("t1", Limits(), targets=targets, task_state=TaskState.RUNNING, timing=TIMING)
    assert only(r.resume(100), Dispatch) == [Dispatch("a00", 130.0, redeliver=True)]
    assert r.next_deadline() == 120, "out for 100 s already: the back-off gap is at its cap (20)"
    r.tick(132)
    assert r.targets["a00"].state == T.UNREACHABLE


# ------------------------------------------------------------------------ provisional verdicts


def _judged(state: TargetState, n: int = 2) -> Run:
    """a00 judged ``state`` (UNREACHABLE: never acked; LOST: started, then offline) with a01 still active."""
    run = Run(n, parallel=n)
    run.start(0)
    if state is T.LOST:
        run.do(run.r.on_started("a00", 1))
        run.do(run.r.on_agent_offline("a00", 2))
        run.do(run.r.on_ack("a01", 1))
        run.tick(22)
    else:
        run.do(run.r.on_ack("a01", 1))
        run.tick(32)
    assert run.mirror["a00"] == state and run.r.failures == 1
    return run


@pytest.mark.parametrize(
    ("verdict", "event", "state", "failures"),
    [
        (T.UNREACHABLE, ("ack",), T.DISPATCHED, 0),
        (T.UNREACHABLE, ("started",), T.RUNNING, 0),
        (T.UNREACHABLE, ("final", T.SUCCEED), T.SUCCEED, 0),
        (T.UNREACHABLE, ("final", T.FAILED), T.FAILED, 1),
        (T.UNREACHABLE, ("final", T.REJECTED), T.REJECTED, 1),
        (T.UNREACHABLE, ("final", T.UNREACHABLE), T.UNREACHABLE, 1),  # an "expired" reject confirms it
        (T.LOST, ("ack",), T.RUNNING, 0),  # it had started: an ack proves it still holds the run
        (T.LOST, ("started",), T.RUNNING, 0),
        (T.LOST, ("final", T.SUCCEED), T.SUCCEED, 0),
        (T.LOST, ("final", T.INTERRUPTED), T.INTERRUPTED, 1),
        (T.LOST, ("final", T.TIMEOUT), T.TIMEOUT, 1),
    ],
)
def test_a_late_report_replaces_a_provisional_verdict_with_what_the_agent_says(verdict, event, state, failures):
    run = _judged(verdict)
    if event[0] == "final":
        actions = run.final("a00", event[1], 40)
    else:
        actions = run.do(getattr(run.r, f"on_{event[0]}")("a00", 40))
    assert run.mirror["a00"] == state
    assert run.r.failures == failures
    changed = only(actions, TargetChanged)
    assert all(c.revised for c in changed) and len(changed) == (state != verdict)
    assert run.task == TaskState.RUNNING  # a01 is still running
    if state.active:
        assert run.r.targets["a00"].acked and run.r.next_deadline() is None, "no expiry, no LOST clock"


def test_a_late_succeed_no_longer_counts_against_the_limits_still_to_be_decided():
    run = Run(3, parallel=1, fail_count=1)
    run.start(0)
    run.tick(32)  # a00 UNREACHABLE: 1 failure, a01 dispatched
    run.final("a00", T.SUCCEED, 33)  # it had run after all
    assert run.r.failures == 0
    run.final("a01", T.FAILED, 34)  # 1 failure: not > 1
    assert not run.r.aborted and run.mirror["a02"] == T.DISPATCHED
    run.final("a02", T.SUCCEED, 35)
    assert run.task == TaskState.FAILED and run.r.reason == "1 of 3 targets did not succeed: FAILED 1"


@pytest.mark.parametrize(
    ("late", "task", "reason"),
    [
        (T.SUCCEED, TaskState.SUCCEED, "the target succeeded"),
        (T.FAILED, TaskState.FAILED, "1 of 1 targets did not succeed: FAILED 1"),
    ],
)
def test_a_late_result_after_the_task_ended_recomputes_its_verdict(late, task, reason):
    run = Run(1)
    run.start(0)
    run.tick(32)
    assert run.task == TaskState.FAILED
    (changed,) = only(run.final("a00", late, 50), TaskChanged)
    assert changed == TaskChanged(TaskState.FAILED, task, reason, revised=True)
    assert run.r.revised and run.r.next_deadline() is None


def test_a_late_ack_after_the_task_ended_reopens_it_until_the_result():
    run = Run(1)
    run.start(0)
    run.tick(32)
    (reopened,) = only(run.do(run.r.on_ack("a00", 50)), TaskChanged)
    assert (reopened.old, reopened.new, reopened.revised) == (TaskState.FAILED, TaskState.RUNNING, True)
    run.do(run.r.on_started("a00", 51))
    run.do(run.r.on_agent_offline("a00", 52))
    assert run.r.next_deadline() == 72, "the reopened target has its LOST clock again"
    (ended,) = only(run.final("a00", T.SUCCEED, 60), TaskChanged)
    assert ended == TaskChanged(TaskState.RUNNING, TaskState.SUCCEED, "the target succeeded", revised=True)


def test_an_abort_on_a_verdict_since_revised_stands_and_says_so():
    run = Run(3, parallel=1, fail_count=0)
    run.start(0)
    run.tick(32)  # a00 UNREACHABLE -> abort: a01, a02 CANCELLED
    assert run.task == TaskState.FAILED and run.r.reason == "fail_count 0 exceeded: 1 failure"
    (changed,) = only(run.final("a00", T.SUCCEED, 40), TaskChanged)
    assert changed.new == TaskState.FAILED and changed.revised
    assert changed.reason == "fail_count 0 exceeded: 1 failure" + ABORT_STANDS
    assert run.mirror == {"a00": T.SUCCEED, "a01": T.CANCELLED, "a02": T.CANCELLED}


@pytest.mark.parametrize("how", ["kill", "abort"])
def test_a_target_revived_in_a_rollout_that_kills_its_active_targets_is_sent_a_kill(how):
    run = Run(2, parallel=2, fail_count=0 if how == "abort" else -1)
    run.start(0)
    run.do(run.r.on_started("a01", 1))
    if how == "kill":
        run.do(run.r.kill(5))
        run.final("a01", T.KILLED, 6)
    run.tick(32)  # a00 UNREACHABLE (CANCELLED if killed: no revision then)
    if how == "kill":
        assert run.mirror["a00"] == T.CANCELLED
        assert run.do(run.r.on_ack("a00", 40)) == []
        return
    assert run.r.aborted
    actions = run.do(run.r.on_started("a00", 40))
    assert SendKill("a00") in actions and run.mirror["a00"] == T.RUNNING


def test_a_revision_of_a_restored_finished_task_recomputes_it():
    targets = [TargetSnapshot("a00", T.UNREACHABLE, seq=0), TargetSnapshot("a01", T.SUCCEED, seq=1)]
    reason = "1 of 2 targets did not succeed: UNREACHABLE 1"
    r = Rollout.restore("t1", Limits(), targets=targets, task_state=TaskState.FAILED, reason=reason, timing=TIMING)
    (changed,) = only(r.on_final("a00", T.SUCCEED, 100), TaskChanged)
    assert changed == TaskChanged(TaskState.FAILED, TaskState.SUCCEED, "all 2 targets succeeded", revised=True)


def test_a_restored_abort_whose_failures_were_revised_is_still_an_abort():
    targets = [
        TargetSnapshot("a00", T.SUCCEED, seq=0),  # UNREACHABLE at the abort, revised since
        TargetSnapshot("a01", T.RUNNING, seq=1, acked=True),
        TargetSnapshot("a02", T.CANCELLED, seq=2),
    ]
    r = Rollout.restore("t1", Limits(parallel=2, fail_count=0, on_abort="drain"), targets=targets,
                        task_state=TaskState.RUNNING, timing=TIMING, killed=False)  # fmt: skip
    assert r.aborted and not r.killed
    r.resume(100)
    (ended,) = only(r.on_final("a01", T.SUCCEED, 101), TaskChanged)
    assert ended.new == TaskState.FAILED and ended.reason.startswith("fail_count 0 exceeded")


# ------------------------------------------------------------------------ the listening clock


@pytest.mark.parametrize(
    ("setup", "deaf", "due_before", "due_after"),
    [
        ("unacked", 10, 5, 20),  # expiry 32 -> 42; the copy due at 5 backs off (out for 10 s: gap 10)
        ("offline", 10, 22, 32),  # LOST at 22 -> 32
        ("acked", 10, None, None),  # no clock runs: nothing moves
    ],
)
def test_defer_moves_every_running_clock_by_the_time_the_master_could_not_hear(setup, deaf, due_before, due_after):
    run = Run(1)
    run.start(0)
    if setup != "unacked":
        run.do(run.r.on_started("a00", 1))
    if setup == "offline":
        run.do(run.r.on_agent_offline("a00", 2))
    assert run.r.next_deadline() == due_before
    run.r.pop_dirty()
    run.r.defer(deaf)
    assert run.r.next_deadline() == due_after
    assert (run.r.pop_dirty() == ["a00"]) == (setup != "acked"), "moved clocks must be persisted"


def test_a_deferred_unacked_dispatch_expires_later_and_is_redelivered_with_the_moved_expiry():
    run = Run(1)
    run.start(0)
    run.r.defer(10)
    assert run.tick(32) == [Dispatch("a00", 40.0, redeliver=True)] and run.mirror["a00"] == T.DISPATCHED
    run.tick(41.99)
    assert run.mirror["a00"] == T.DISPATCHED
    run.tick(42)
    assert run.mirror["a00"] == T.UNREACHABLE


LOST_MAX = dataclasses.replace(TIMING, lost_max=100)


@pytest.mark.parametrize(
    ("offline_at", "bridge_down_at", "bridge_up_at", "lost_at"),
    [
        (2, None, None, 22),  # plain offline: lost_grace 20
        (2, 2, None, 102),  # the bridge never comes back: lost_max 100 from its outage
        (2, 2, 50, 70),  # back at 50: the whole grace counts from then
        (2, 10, 50, 62),  # 8 s counted before the outage, 12 after it
        (30, 10, 50, 70),  # offline during the outage (the registry's doing): counted from 50
    ],
)
def test_the_lost_clock_stops_while_the_agents_datacenter_cannot_be_heard(offline_at, bridge_down_at, bridge_up_at, lost_at):
    run = Run(1, timing=LOST_MAX)
    run.start(0)
    run.do(run.r.on_started("a00", 1))
    events = [(offline_at, "offline")]
    if bridge_down_at is not None:
        events.append((bridge_down_at, "down"))
    if bridge_up_at is not None:
        events.append((bridge_up_at, "up"))
    for at, what in sorted(events):
        if what == "offline":
            run.do(run.r.on_agent_offline("a00", at, unheard=bridge_down_at is not None and bridge_down_at <= at and (bridge_up_at is None or at < bridge_up_at)))
        else:
            run.do(run.r.on_agent_heard("a00", at, heard=what == "up"))
    assert run.r.next_deadline() == lost_at
    run.tick(lost_at - 0.01)
    assert run.mirror["a00"] == T.RUNNING
    run.tick(lost_at)
    assert run.mirror["a00"] == T.LOST
    if bridge_down_at is not None and bridge_up_at is None:
        assert "lost_max 100s" in only(run.actions, TargetChanged)[-1].reason


# ---------------------------------------------------------------------- flow control (docs/rollout.md "Flow control")

HANDOFF = Timing(delivery_timeout=10, ack_grace=1, redeliver_interval=20)


def _handoff(n: int = 2) -> Rollout:
    return Rollout("t1", ids(n), Limits(parallel=n), timing=HANDOFF, now=0, handoff=True)


def test_with_handoff_a_dispatch_starts_no_clock_until_the_broker_took_the_copy():
    r = _handoff()
    assert only(r.start(0), Dispatch) == [Dispatch("a00", None), Dispatch("a01", None)]
    assert r.next_deadline() is None and r.tick(1000) == [], "queued for ever: no verdict on our own queue"
    assert r.targets["a00"].state is T.DISPATCHED and r.targets["a00"].expires_at is None


@pytest.mark.parametrize(
    ("handed", "unreachable_at"),
    [({"a00": 4, "a01": 9}, {"a00": 15, "a01": 20}), ({"a01": 0, "a00": 30}, {"a01": 11, "a00": 41})],
)
def test_with_handoff_the_delivery_clock_counts_from_the_puback(handed, unreachable_at):
    r = _handoff()
    r.start(0)
    for agent, at in sorted(handed.items(), key=lambda kv: kv[1]):
        assert r.on_handed(agent, at) == []
        assert (r.targets[agent].expires_at, r.targets[agent].dispatched_at) == (at + 10, at)
    for agent, at in sorted(unreachable_at.items(), key=lambda kv: kv[1]):
        r.tick(at - 0.01)
        assert r.targets[agent].state is T.DISPATCHED
        r.tick(at)
        assert r.targets[agent].state is T.UNREACHABLE


def test_with_handoff_a_second_puback_or_one_after_the_ack_moves_nothing():
    r = _handoff()
    r.start(0)
    r.on_handed("a00", 4)
    r.on_handed("a00", 8)
    assert r.targets["a00"].expires_at == 14
    r.on_ack("a01", 5)
    r.on_handed("a01", 6)
    assert r.targets["a01"].expires_at is None and r.next_deadline() == 15


def test_with_handoff_an_agent_offline_while_its_copy_is_held_has_delivery_timeout_to_return():
    r = _handoff()
    r.start(0)
    r.on_agent_offline("a01", 2)
    assert r.next_deadline() == 13
    r.defer(3)  # the master could not hear for 3 s: the wait moves too
    changes = only(r.tick(16), TargetChanged)
    assert [(c.agent_id, c.new) for c in changes] == [("a01", T.UNREACHABLE)]
    assert changes[0].reason == "agent offline for more than delivery_timeout 10s; never sent"


def test_with_handoff_an_agent_back_online_waits_for_its_copy_again():
    r = _handoff()
    r.start(0)
    r.on_agent_offline("a01", 2)
    r.on_agent_online("a01", 12)
    assert r.next_deadline() is None
    r.on_handed("a01", 30)
    assert r.next_deadline() == 41


def test_with_handoff_a_kill_of_a_copy_that_never_left_cancels_it_at_its_expiry():
    r = _handoff(1)
    r.start(0)
    assert only(r.kill(5), SendKill) == [SendKill("a00")]
    assert r.targets["a00"].expires_at == 15
    assert [(c.new, c.reason) for c in only(r.tick(16), TargetChanged)] == [
        (T.CANCELLED, "killed before the agent accepted it")
    ]


def test_with_handoff_resume_queues_a_copy_again_for_a_target_stored_without_a_clock():
    targets = [TargetSnapshot("a00", T.DISPATCHED, seq=0, dispatched_at=0.0)]
    r = Rollout.restore("t1", Limits(), targets=targets, task_state=TaskState.RUNNING, timing=HANDOFF, handoff=True)
    assert only(r.resume(100), Dispatch) == [Dispatch("a00", None)]
    assert r.next_deadline() is None


def _deadline_as_it_was(t, tm):
    """rollout._deadline before it stopped building lists: the reference it must equal."""
    from mschedule_master import rollout as ro

    if t.state not in (T.DISPATCHED, T.RUNNING):
        return None
    times = []
    if t.state is T.DISPATCHED and not t.acked:
        times.append(ro._expiry(t, tm))
    for at in (ro._lost_at(t, tm), ro._redeliver_at(t, tm)):
        if at is not None:
            times.append(at)
    if t.kill_requested:
        times.append(ro._kill_resend_at(t, tm) if t.kill_sent_at is not None else -math.inf)
    finite = [x for x in times if x != math.inf]
    return min(finite) if finite else None


_MAYBE_TIME = st.one_of(st.none(), st.floats(min_value=0, max_value=1000, allow_nan=False))


@settings(max_examples=400, deadline=None)
@given(
    state=st.sampled_from(list(TargetState)), acked=st.booleans(), kill=st.booleans(),
    dispatched_at=_MAYBE_TIME, last_sent_at=_MAYBE_TIME, expires_at=_MAYBE_TIME, kill_sent_at=_MAYBE_TIME,
    offline_since=_MAYBE_TIME, unheard_since=_MAYBE_TIME,
)  # fmt: skip
def test_the_next_deadline_of_a_target_is_the_least_of_its_finite_clocks(
    state, acked, kill, dispatched_at, last_sent_at, expires_at, kill_sent_at, offline_since, unheard_since
):
    from mschedule_master.rollout import _deadline

    t = TargetSnapshot(
        "a00", state, dispatched_at=dispatched_at, last_sent_at=last_sent_at, expires_at=expires_at, acked=acked,
        kill_requested=kill, kill_sent_at=kill_sent_at, offline_since=offline_since, unheard_since=unheard_since,
    )  # fmt: skip
    for tm in (TIMING, LOST_MAX):
        assert _deadline(t, tm) == _deadline_as_it_was(t, tm)
