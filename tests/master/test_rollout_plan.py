"""Rollout plans, pure: parsing, resolving, steps, pauses, step limits and gates (docs/rollout.md, "Plans")."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mschedule_master.plan import Batch, Pause, Plan, PlanError, parse, parse_duration
from mschedule_master.rollout import Dispatch, Limits, Progress, Rollout, SendKill, TargetChanged, TaskChanged, Timing
from mschedule_master.states import TASK_TRANSITIONS, TargetState, TaskState, TaskTransitionError, check_task_transition

T = TargetState
K = TaskState
TIMING = Timing(delivery_timeout=30, redeliver_interval=5, ack_grace=2, lost_grace=20, kill_resend=4)


def ids(n: int) -> list[str]:
    return [f"a{i:02d}" for i in range(n)]


def rollout(n: int, plan: str | list | None, **limits) -> Rollout:
    return Rollout("t1", ids(n), Limits(**limits), timing=TIMING, now=0.0, plan=parse(plan) if plan is not None else None)


def dispatched(actions: list) -> list[str]:
    return [a.agent_id for a in actions if isinstance(a, Dispatch) and not a.redeliver]


def task_changes(actions: list) -> list[tuple[TaskState, TaskState]]:
    return [(a.old, a.new) for a in actions if isinstance(a, TaskChanged)]


def active(r: Rollout) -> list[str]:
    return [a for a, t in r.targets.items() if t.state.active]


def finish_active(r: Rollout, state: TargetState, now: float = 1.0) -> list:
    out: list = []
    for a in active(r):
        out += r.on_final(a, state, now)
    return out


def run_through(r: Rollout, outcomes: list[TargetState], now: float = 1.0) -> list:
    """Report ``outcomes`` one by one for the active target with the lowest seq."""
    out: list = []
    for state in outcomes:
        act = active(r)
        assert act, f"nothing active (task {r.state.value}: {r.reason})"
        out += r.on_final(act[0], state, now)
    return out


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "json"),
    [
        ("1,pause,5,20%,rest", [{"batch": 1}, {"pause": True}, {"batch": 5}, {"batch": "20%"}, {"batch": "rest"}]),
        ("pause 10m, 3", [{"pause": 600.0}, {"batch": 3}]),
        (" 2 , PAUSE 90 , Rest ", [{"batch": 2}, {"pause": 90.0}, {"batch": "rest"}]),
        ("12.5%", [{"batch": "12.5%"}]),
    ],
)
def test_text_plans_parse_to_their_json_form(text: str, json: list) -> None:
    assert parse(text).to_json() == json
    assert parse(json) == parse(text), "the JSON form parses back to the same plan"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty step"),
        ("1,,2", "empty step"),
        ("0", "integer >= 1"),
        ("-1", "bad step"),
        ("0%", "'N%'"),
        ("101%", "'N%'"),
        ("abc", "bad step"),
        ("pause 5x", "bad duration"),
        ("pause 0", "more than 0 s"),
        ("pause 8d", "at most 7d"),
        ("pause 1 2", "a pause is"),
        ("rest,1", "'rest' must be the last"),
        ([], "at least one step"),
        ([{"batch": 1, "colour": "red"}], "unknown field(s): colour"),
        ([{"pause": True, "batch": 1}], "only 'pause'"),
        ([{"pause": False}], "pause is true"),
        ([{"batch": True}], "integer >= 1"),
        ([{"batch": 2, "parallel": 0}], "parallel is an integer"),
        ([{"batch": 2, "fail_count": -2}], "fail_count is an integer >= -1"),
        ([{"batch": 2, "fail_rate": 1.5}], "fail_rate is -1"),
        ([{"batch": 2, "fail_rate": "x%"}], "fail_rate is -1"),
        ([{"batch": 2, "min_finished": -1}], "min_finished"),
        ([{"batch": 2, "ignore": ["SUCCEED"]}], "only failure states"),
        ([{"batch": 2, "ignore": ["NOPE"]}], "unknown state"),
        ([{"batch": 2, "ignore": "TIMEOUT"}], "ignore is a list"),
        (["1"], "must be an object"),
        ({"batch": 1}, "plan must be"),
        ("1," * 101, "empty step"),
        (",".join(["1"] * 101), "at most 100 steps"),
    ],
)
def test_bad_plans_are_refused_with_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(PlanError) as e:
        parse(value)
    assert message in str(e.value)
    assert e.value.field == "plan"


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1d", 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_canary_is_n_then_a_pause_until_approved_then_the_rest() -> None:
    assert Plan.canary(2) == Plan((Batch(2), Pause(), Batch("rest")))
    assert Plan.canary(2).text() == "2,pause,rest"


# ---------------------------------------------------------------------- resolving


@pytest.mark.parametrize(
    ("text", "n", "stages"),
    [
        # (step number, "pause" or (start, end), window); the task window is 3
        ("1,pause,5,20%,rest", 100, [(1, (0, 1), 3), (2, "pause", 0), (3, (1, 6), 3), (4, (6, 26), 3), (5, (26, 100), 3)]),
        ("1,pause", 10, [(1, (0, 1), 3), (2, "pause", 0), (3, (1, 10), 3)]),  # the implicit rest
        ("1,5", 100, [(1, (0, 1), 3), (2, (1, 6), 3), (3, (6, 100), 3)]),  # the listed 5 is a step of its own
        ("5,10", 8, [(1, (0, 5), 3), (2, (5, 8), 3)]),  # clipped; the empty leftover dropped
        ("1,pause,rest", 1, [(1, (0, 1), 3)]),  # a pause with nothing after it is dropped
        ("10,pause", 10, [(1, (0, 10), 3)]),
        ("1%,rest", 10, [(1, (0, 1), 3), (2, (1, 10), 3)]),  # N% floors, at least 1
        ("50%,50%,50%", 5, [(1, (0, 2), 3), (2, (2, 4), 3), (3, (4, 5), 3)]),  # of all targets, not of what is left
        ("pause,2", 4, [(1, "pause", 0), (2, (0, 2), 3), (3, (2, 4), 3)]),
        ("pause,pause 1m,rest", 2, [(1, "pause", 0), (2, "pause", 0), (3, (0, 2), 3)]),
    ],
)
def test_plans_resolve_against_the_target_count(text: str, n: int, stages: list) -> None:
    got = [
        (s.number, "pause" if s.is_pause else (s.start, s.end), 0 if s.is_pause else s.window)
        for s in parse(text).resolve(n, 3)
    ]
    assert got == stages


@pytest.mark.parametrize(("parallel", "size", "window"), [(None, 10, 3), (4, 10, 4), ("50%", 10, 5), ("10%", 5, 1)])
def test_a_steps_parallel_is_its_own_or_the_tasks_window(parallel: object, size: int, window: int) -> None:
    (stage, _) = parse([{"batch": size, "parallel": parallel}] if parallel else [{"batch": size}]).resolve(size + 1, 3)
    assert stage.window == window


# ---------------------------------------------------------------------- walking the plan


def test_canary_of_one_pauses_until_approved_then_runs_the_rest() -> None:
    r = Rollout("t1", ids(5), Limits(parallel=2), timing=TIMING, now=0.0, plan=Plan.canary(1))
    acts = r.start(0)
    assert dispatched(acts) == ["a00"] and r.window == 2
    acts = r.on_final("a00", T.SUCCEED, 3)
    assert task_changes(acts) == [(K.RUNNING, K.PAUSED)]
    assert r.state is K.PAUSED and r.paused and r.paused_at == 3
    assert r.reason == "paused at step 2 until approved; next: 4 targets"
    assert r.next_deadline() is None and r.tick(10_000) == [], "a pause until approved never ends by itself"
    acts = r.approve(20, "alice")
    assert task_changes(acts) == [(K.PAUSED, K.RUNNING)]
    assert [a.reason for a in acts if isinstance(a, TaskChanged)] == ["approved by alice"]
    assert dispatched(acts) == ["a01", "a02"], "the rest, with the step's window"
    finish_active(r, T.SUCCEED, 21)
    acts = finish_active(r, T.SUCCEED, 22)
    acts += finish_active(r, T.SUCCEED, 23)
    assert r.state is K.SUCCEED and r.reason == "all 5 targets succeeded"
    assert r.progress == Progress(stage=2, paused_at=None, aborted=None)


def test_a_timed_pause_ends_at_its_time_and_can_be_approved_early() -> None:
    r = rollout(3, "1,pause 10m,rest")
    r.start(0)
    r.on_final("a00", T.SUCCEED, 5)
    assert r.pause_ends_at == 605 and r.next_deadline() == 605
    assert r.tick(604.9) == []
    acts = r.tick(605)
    assert task_changes(acts) == [(K.PAUSED, K.RUNNING)] and dispatched(acts) == ["a01"]
    assert [a.reason for a in acts if isinstance(a, TaskChanged)] == ["pause of 10m over"]
    early = rollout(3, "1,pause 10m,rest")
    early.start(0)
    early.on_final("a00", T.SUCCEED, 5)
    acts = early.approve(6, "bob")
    assert dispatched(acts) == ["a01"] and early.next_deadline() != 605


def test_a_step_starts_only_when_the_previous_has_ended() -> None:
    r = rollout(10, "2,3,rest", parallel=10)
    assert dispatched(r.start(0)) == ["a00", "a01"], "the window is 10, but step 1 has 2 targets"
    assert dispatched(r.on_final("a00", T.SUCCEED, 1)) == []
    assert dispatched(r.on_final("a01", T.FAILED, 1)) == ["a02", "a03", "a04"], "no limits: a failure is no gate"
    finish_active(r, T.SUCCEED, 2)
    assert len(active(r)) == 5 and r.stage == 2


def test_a_plan_that_opens_with_a_pause_starts_paused() -> None:
    r = rollout(2, "pause,rest")
    acts = r.start(0)
    assert task_changes(acts) == [(K.WAITING, K.PAUSED)] and dispatched(acts) == []
    acts = r.approve(1, "carol")
    assert task_changes(acts) == [(K.PAUSED, K.RUNNING)] and dispatched(acts) == ["a00"]


def test_two_pauses_in_a_row_need_two_approvals() -> None:
    r = rollout(2, "1,pause,pause,rest")
    r.start(0)
    r.on_final("a00", T.SUCCEED, 1)
    acts = r.approve(2, "a")
    assert task_changes(acts) == [(K.PAUSED, K.RUNNING), (K.RUNNING, K.PAUSED)] and dispatched(acts) == []
    assert dispatched(r.approve(3, "b")) == ["a01"]


def test_approve_when_not_paused_does_nothing() -> None:
    r = rollout(3, "1,pause,rest")
    r.start(0)
    assert r.approve(1, "eve") == [] and not r.paused


def test_a_person_aborts_a_paused_plan_the_rest_is_cancelled() -> None:
    r = rollout(4, "1,pause,rest")
    r.start(0)
    r.on_final("a00", T.SUCCEED, 1)
    acts = r.abort(2, "aborted by dave")
    assert [(a.agent_id, a.new) for a in acts if isinstance(a, TargetChanged)] == [
        ("a01", T.CANCELLED), ("a02", T.CANCELLED), ("a03", T.CANCELLED),
    ]  # fmt: skip
    assert task_changes(acts) == [(K.PAUSED, K.FAILED)] and r.reason == "aborted by dave"
    assert r.abort(3, "again") == [] and r.approve(3, "x") == []


def test_a_person_aborts_a_running_plan_active_targets_follow_on_abort() -> None:
    r = rollout(4, "2,rest", parallel=2)
    r.start(0)
    acts = r.abort(1, "aborted by dave")
    assert [a.agent_id for a in acts if isinstance(a, SendKill)] == ["a00", "a01"]
    assert r.state is K.RUNNING, "ends once the killed targets report"
    finish_active(r, T.KILLED, 2)
    assert r.state is K.FAILED and r.reason == "aborted by dave"
    drain = rollout(4, "2,pause,rest", parallel=2, on_abort="drain")
    drain.start(0)
    assert not any(isinstance(a, SendKill) for a in drain.abort(1, "aborted by dave"))


def test_a_kill_while_paused_ends_the_task_killed() -> None:
    r = rollout(3, "1,pause,rest")
    r.start(0)
    r.on_final("a00", T.SUCCEED, 1)
    acts = r.kill(2)
    assert task_changes(acts) == [(K.PAUSED, K.KILLED)] and r.counts(nonzero=True) == {"SUCCEED": 1, "CANCELLED": 2}
    assert not r.paused and r.next_deadline() is None


# ---------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("plan", "limits", "n", "outcomes", "aborts_after", "reason"),
    [
        # a step's fail_count: as soon as its counted failures exceed it
        ([{"batch": 1, "fail_count": 0}], {}, 5, [T.FAILED], 1, "step 1: fail_count 0 exceeded: 1 failure"),
        ([{"batch": 3, "fail_count": 1}], {}, 5, [T.FAILED, T.SUCCEED, T.FAILED], 3, "step 1: fail_count 1 exceeded: 2 failures"),
        # a step's fail_rate: of its finished targets, from the first finished (min_finished 0)
        ([{"batch": 4, "fail_rate": 0.5}], {}, 6, [T.FAILED], 1, "step 1: fail_rate 0.5 exceeded: 1 of 1 finished targets failed"),
        ([{"batch": 4, "fail_rate": "50%"}], {}, 6, [T.SUCCEED, T.FAILED, T.SUCCEED, T.FAILED], None, ""),  # 2 of 4: not > 50%
        # min_finished: the rate waits for 3 finished ...
        ([{"batch": 4, "fail_rate": 0.5, "min_finished": 3}], {}, 6, [T.FAILED, T.SUCCEED, T.SUCCEED], None, ""),
        ([{"batch": 4, "fail_rate": 0.5, "min_finished": 3}], {}, 6, [T.FAILED, T.FAILED, T.SUCCEED], 3,
         "step 1: fail_rate 0.5 exceeded: 2 of 3 finished targets failed"),
        # ... and a step smaller than min_finished is judged when it ends
        ([{"batch": 1, "fail_rate": 0.5, "min_finished": 5}], {}, 3, [T.FAILED], 1,
         "step 1: fail_rate 0.5 exceeded: 1 of 1 finished targets failed"),
        # a step's fail_rate 0 is a real zero tolerance (unlike the task's default pair)
        ([{"batch": 2, "fail_rate": 0}], {}, 4, [T.SUCCEED, T.TIMEOUT], 2, "step 1: fail_rate 0 exceeded: 1 of 2 finished targets failed"),
        # the gates: ignored failure kinds do not count toward the step's limits ...
        ([{"batch": 2, "fail_count": 0, "ignore": ["TIMEOUT", "UNREACHABLE"]}], {}, 4, [T.TIMEOUT, T.UNREACHABLE], None, ""),
        ([{"batch": 2, "fail_count": 0, "ignore": ["TIMEOUT"]}], {}, 4, [T.TIMEOUT, T.FAILED], 2,
         "step 1: fail_count 0 exceeded: 1 failure"),
        # ... but the task's own limits count every failure, over all targets
        ([{"batch": 2, "ignore": ["TIMEOUT"]}], {"fail_count": 0}, 4, [T.TIMEOUT], 1, "fail_count 0 exceeded: 1 failure"),
        ("1,rest", {"fail_rate": 0.5}, 4, [T.FAILED, T.FAILED, T.FAILED], 3, "fail_rate 0.5 exceeded: 3 of 4 targets failed"),
        # a later step's limits judge only that step's targets
        ([{"batch": 1}, {"batch": 2, "fail_count": 0}], {}, 4, [T.FAILED, T.SUCCEED, T.FAILED], 3,
         "step 2: fail_count 0 exceeded: 1 failure"),
        # KILLED counts as finished, never as a failure
        ([{"batch": 2, "fail_rate": 0.5, "min_finished": 2}], {}, 4, [T.KILLED, T.FAILED], None, ""),
    ],
)
def test_step_and_task_limits(plan: object, limits: dict, n: int, outcomes: list, aborts_after: int | None, reason: str) -> None:
    r = rollout(n, plan, parallel=1, **limits)
    r.start(0)
    for i, state in enumerate(outcomes, 1):
        run_through(r, [state], now=float(i))
        assert r.aborted == (aborts_after is not None and i >= aborts_after), f"after outcome {i}"
    if aborts_after is None:
        finish_active(r, T.SUCCEED, 99)
        while active(r):
            finish_active(r, T.SUCCEED, 99)
        assert not r.aborted
    else:
        assert r.state is K.FAILED and r.reason == reason
        assert r.counts()["CANCELLED"] == n - len(outcomes)


def test_a_failed_step_stops_the_plan_before_its_pause() -> None:
    r = rollout(5, [{"batch": 1, "fail_count": 0}, {"pause": True}, {"batch": "rest"}])
    r.start(0)
    acts = r.on_final("a00", T.FAILED, 1)
    assert task_changes(acts) == [(K.RUNNING, K.FAILED)], "never paused"
    assert r.counts(nonzero=True) == {"FAILED": 1, "CANCELLED": 4}


def test_a_revised_verdict_counts_for_its_own_step() -> None:
    r = rollout(4, [{"batch": 2, "fail_count": 0, "min_finished": 0}, {"batch": "rest"}], parallel=2)
    r.start(0)
    r.on_final("a00", T.SUCCEED, 1)
    r.tick(100)  # a01 never acked: UNREACHABLE, the step's failure
    assert r.state is K.FAILED and r.reason == "step 1: fail_count 0 exceeded: 1 failure"
    assert r.targets["a01"].state is T.UNREACHABLE
    r.on_final("a01", T.SUCCEED, 101)  # its late report
    assert r.state is K.FAILED and r.reason.startswith("step 1: fail_count 0 exceeded: 1 failure; the abort stands")


# ---------------------------------------------------------------------- restore


def _restore(r: Rollout, killed: bool | None = None) -> Rollout:
    """What a restart rebuilds from the store: copies of the snapshots, the plan's progress."""
    return Rollout.restore(
        "t1", r.limits, targets=[dataclasses.replace(t) for t in r.targets.values()], task_state=r.state,
        reason=r.reason, timing=TIMING, killed=killed, plan=r.plan, progress=r.progress,
    )  # fmt: skip


def test_restore_mid_pause_keeps_the_pause_and_its_end() -> None:
    r = rollout(4, "1,pause 10m,rest")
    r.start(0)
    r.on_final("a00", T.SUCCEED, 5)
    back = _restore(r)
    assert back.resume(50) == [] and back.paused and back.state is K.PAUSED and back.pause_ends_at == 605
    acts = back.tick(605)
    assert dispatched(acts) == ["a01"]


def test_restore_mid_pause_until_approved_waits_for_approval() -> None:
    r = rollout(4, "1,pause,rest", parallel=3)
    r.start(0)
    r.on_final("a00", T.SUCCEED, 5)
    back = _restore(r)
    assert back.resume(10_000) == [] and back.paused
    assert dispatched(back.approve(10_001, "alice")) == ["a01", "a02", "a03"]


def test_restore_mid_step_goes_on_with_that_step() -> None:
    r = rollout(6, "1,2,rest", parallel=1)
    r.start(0)
    r.on_final("a00", T.SUCCEED, 1)  # step 2 starts: a01
    assert r.stage == 1
    back = _restore(r)
    assert back.stage == 1 and back.window == 1
    assert dispatched(back.resume(2)) == [], "a01 is out already"
    assert dispatched(back.on_final("a01", T.SUCCEED, 3)) == ["a02"]
    assert dispatched(back.on_final("a02", T.SUCCEED, 4)) == ["a03"], "step 3"


def test_restore_of_a_step_abort_keeps_its_reason() -> None:
    r = rollout(4, [{"batch": 2, "fail_count": 0}, {"batch": "rest"}], parallel=2, on_abort="drain")
    r.start(0)
    r.on_final("a00", T.FAILED, 1)
    assert r.aborted and r.progress.aborted == "step 1: fail_count 0 exceeded: 1 failure"
    back = _restore(r)
    assert back.aborted and dispatched(back.resume(2)) == [], "drained: only a01 goes on"
    back.on_final("a01", T.SUCCEED, 3)
    assert back.state is K.FAILED and back.reason == "step 1: fail_count 0 exceeded: 1 failure"


# ---------------------------------------------------------------------- task states


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (K.WAITING, K.RUNNING, True), (K.WAITING, K.PAUSED, True), (K.RUNNING, K.PAUSED, True),
        (K.PAUSED, K.RUNNING, True), (K.PAUSED, K.KILLED, True), (K.PAUSED, K.FAILED, True),
        (K.FAILED, K.RUNNING, True), (K.SUCCEED, K.FAILED, True), (K.PAUSED, K.WAITING, False),
        (K.RUNNING, K.WAITING, False), (K.FAILED, K.PAUSED, False), (K.PAUSED, K.PAUSED, False),
    ],
)  # fmt: skip
def test_task_transitions(old: TaskState, new: TaskState, ok: bool) -> None:
    if ok:
        check_task_transition(old, new)
    else:
        with pytest.raises(TaskTransitionError):
            check_task_transition(old, new)
    assert set(TASK_TRANSITIONS) == set(TaskState)


def test_a_late_report_counts_for_its_step_as_a_revision_does_for_the_task() -> None:
    r = rollout(2, [{"batch": 2, "fail_count": 0, "ignore": ["UNREACHABLE"]}], parallel=2)
    r.start(0)
    r.on_final("a00", T.SUCCEED, 1)
    r.tick(100)  # a01 UNREACHABLE: ignored by the step's gate; the task ends, not aborted
    assert r.state is K.FAILED and r.reason == "1 of 2 targets did not succeed: UNREACHABLE 1"
    back = _restore(r)
    back.on_final("a01", T.SUCCEED, 101)  # a late success: the verdict is recomputed, no step judged again
    assert back.state is K.SUCCEED and not back.aborted
    again = _restore(r)
    again.on_final("a01", T.FAILED, 101)  # a late failure counts for its step now, as for the task's limits
    assert again.state is K.FAILED and again.reason == "step 1: fail_count 0 exceeded: 1 failure"


# ---------------------------------------------------------------------- any plan, any events

STEPS = st.one_of(
    st.builds(lambda n: {"batch": n}, st.integers(1, 4)),
    st.builds(lambda p: {"batch": f"{p}%"}, st.sampled_from([10, 34, 50])),
    st.builds(lambda n, c, r: {"batch": n, "fail_count": c, "fail_rate": r, "min_finished": 1},
              st.integers(1, 4), st.integers(-1, 1), st.sampled_from([None, 0.5])),
    st.builds(lambda n, p: {"batch": n, "parallel": p}, st.integers(1, 4), st.integers(1, 3)),
    st.just({"pause": True}),
    st.just({"pause": 30}),
)
OUTCOMES = st.sampled_from([T.SUCCEED, T.SUCCEED, T.FAILED, T.TIMEOUT, T.KILLED])
EVENT = st.one_of(
    st.tuples(st.just("final"), st.integers(0, 20), OUTCOMES),
    st.tuples(st.just("approve"), st.just(0), st.just(T.SUCCEED)),
    st.tuples(st.just("tick"), st.integers(1, 40), st.just(T.SUCCEED)),
    st.tuples(st.just("restore"), st.just(0), st.just(T.SUCCEED)),
)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 10), steps=st.lists(STEPS, min_size=1, max_size=5), events=st.lists(EVENT, max_size=40))
def test_any_plan_walks_its_steps_in_order_within_their_windows_and_ends(n, steps, events):
    r = Rollout("t1", ids(n), Limits(parallel=2), timing=TIMING, now=0.0, plan=parse(steps))
    stages = r.stages
    stage_of = {a: i for i, s in enumerate(stages) for a in ids(n)[s.start : s.end]}
    now = 0.0

    def check(actions: list) -> None:
        for a in actions:
            if isinstance(a, Dispatch) and not a.redeliver:
                i = stage_of[a.agent_id]
                earlier = [x for x, j in stage_of.items() if j < i]
                assert all(r.targets[x].state.final for x in earlier), "a step starts only when the one before ended"
                assert r.stage == i and not r.paused
        active = [a for a, t in r.targets.items() if t.state.active]
        assert len(active) <= max(s.window for s in stages if not s.is_pause)
        assert r.paused == (r.state is K.PAUSED)
        assert r.final == all(t.state.final for t in r.targets.values())

    check(r.start(now))
    for kind, idx, outcome in events:
        if kind == "final":
            act = [a for a, t in r.targets.items() if t.state.active]
            if act:
                check(r.on_final(act[idx % len(act)], outcome, now))
        elif kind == "approve":
            check(r.approve(now, "p"))
        elif kind == "tick":
            now += idx
            check(r.tick(now))
        else:
            r = _restore(r, killed=False)
            check(r.resume(now))
    for _ in range(4 * n + 10):  # then every step is approved and every target succeeds: it ends
        if r.final:
            break
        check(r.approve(now, "p"))
        for a in [a for a, t in r.targets.items() if t.state.active]:
            check(r.on_final(a, T.SUCCEED, now))
    assert r.final
    assert r.state is K.SUCCEED or r.aborted or r.counts()["SUCCEED"] < n
