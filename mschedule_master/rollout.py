"""The rollout engine: a pure state machine for one task's targets.

No I/O, no logging, no clock: every method takes ``now`` (epoch seconds) and returns
a list of :data:`Action` for the daemon to carry out (persist, publish). Exact
semantics and worked examples: docs/rollout.md.

INTERFACE CONTRACT (shared by rollout.py's author and the dispatcher's author; do not
change names or signatures without updating both sides):

    r = Rollout(task_id, agent_ids, limits, timing=Timing(), now=now)          # new task
    r = Rollout.restore(task_id, limits, targets=[TargetSnapshot...], task_state=..., reason=..., timing=..)
    actions = r.start(now)               # new task: first window of Dispatch
    actions = r.resume(now)              # after restore: redeliver / refill the window
    actions = r.on_ack(agent_id, now)    # agent accepted (durably recorded) the task
    actions = r.on_started(agent_id, now)
    actions = r.on_final(agent_id, TargetState.X, now)   # result / reject mapped to a final state
    actions = r.on_agent_offline(agent_id, now)
    actions = r.on_agent_online(agent_id, now)
    actions = r.kill(now, reason="killed by user")
    actions = r.tick(now)                # time-based: redeliver, expiry -> UNREACHABLE, LOST, kill resend
    r.defer(seconds)                     # the master could not hear for this long: every clock waits as long
    r = Rollout(..., handoff=True)       # flow control: a Dispatch only queues a copy; its delivery
    actions = r.on_handed(agent_id, now) # clock starts when the broker took a copy (PUBACK) while
                                         # the agent was connected (docs/rollout.md "Flow control")
    actions = r.on_agent_heard(agent_id, now, heard=False)   # its datacenter's bridge went down (True: up)
    r.next_deadline() -> float | None    # when tick() next has something to do
    r.state, r.reason, r.counts(), r.targets (dict agent_id -> TargetSnapshot, read-only use)

ADDED (optional to use):

    r.on_final(agent_id, state, now, reason="...")   # reason is copied into TargetChanged
    r.pop_dirty() -> list[str]   # agent ids whose snapshot fields changed since the last call,
                                 # also without a state change (acked, kill_requested,
                                 # last_sent_at, offline_since): persist r.targets[id] for each
    r.take_dirty() -> set[str]   # the same, unordered
    Rollout.restore(..., killed=None)   # True if the user had killed the task (else inferred)
    r.on_agent_offline(agent_id, now, unheard=True)   # offline because its datacenter's bridge is down
    r.final, r.failures, r.active, r.window, r.aborted, r.killed

PLANS (docs/rollout.md "Plans"; mschedule_master/plan.py):

    r = Rollout(..., plan=Plan)          # steps: batches and pauses; None = one batch of all
    r = Rollout.restore(..., plan=Plan, progress=Progress)   # back at its step or pause
    actions = r.approve(now, by="alice")   # a paused plan goes on ([] when not paused)
    actions = r.abort(now, reason)         # stop the plan as a tripped limit would
    r.paused, r.paused_at, r.pause_ends_at, r.stages, r.stage
    r.progress -> Progress                 # persist it whenever it changes

PERSISTENCE: on TargetChanged store the whole snapshot ``r.targets[agent_id]`` (its
fields are already updated). Fields also change WITHOUT a state change -- ``acked``
(on_ack), ``kill_requested`` (with every first SendKill), ``last_sent_at``,
``offline_since`` -- and restore() needs ``acked`` and ``kill_requested`` to be right
(else an acked target would expire as UNREACHABLE, an owed kill be forgotten): after
each call (or batch), store ``r.targets[a]`` for every ``a`` in ``r.take_dirty()`` (or ``pop_dirty()``, in seq order).

Carry the actions out IN ORDER: every change to persist (TargetChanged, TaskChanged)
comes before the publication it implies (Dispatch, SendKill). Unknown agent ids and
events that make no sense in a target's current state are ignored (return ``[]``);
the rollout never raises on what an agent sends. Deadlines are due AT their time
(``now >= deadline``), so calling ``tick(next_deadline())`` always makes progress.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from fractions import Fraction

from mschedule_agent.protocol import parse_percent

from .plan import Batch, Plan, Stage, format_duration, single_stage
from .states import (
    TARGET_PROVISIONAL,
    TARGET_VALUES,
    TargetState,
    TaskState,
    check_target_transition,
    check_task_transition,
)

_T = TargetState


def _percent(value: str) -> Fraction | None:
    """``"12.5%"`` -> Fraction(1, 8), exactly; anything else -> None."""
    if parse_percent(value) is None:
        return None
    return Fraction(value.strip()[:-1].strip()) / 100


def _fraction(value: float | int) -> Fraction:
    """A user's decimal number as the exact fraction they wrote (0.2 -> 1/5, not the binary double)."""
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


@dataclass(frozen=True, slots=True)
class Limits:
    """The user's rollout limits, already validated by the protocol's Submit."""

    parallel: int | str = 1  #: int >= 1 or "N%" of the target count (floor, min 1)
    fail_rate: float | str | None = None  #: None / -1 = no rate limit; 0..1 or "N%"
    fail_count: int = -1  #: -1 = no count limit
    on_abort: str = "kill"  #: "kill" running targets on abort, or "drain" them

    def __post_init__(self) -> None:
        if isinstance(self.parallel, str):
            pct = _percent(self.parallel)
            if pct is None or not 0 < pct <= 1:
                raise ValueError(f"parallel must be an integer >= 1 or 'N%', got {self.parallel!r}")
        elif self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel!r}")
        if isinstance(self.fail_rate, str) and _percent(self.fail_rate) is None:
            raise ValueError(f"fail_rate must be -1, a fraction 0..1 or 'N%', got {self.fail_rate!r}")
        if not isinstance(self.fail_rate, str | None) and not (self.fail_rate == -1 or 0 <= self.fail_rate <= 1):
            raise ValueError(f"fail_rate must be -1, a fraction 0..1 or 'N%', got {self.fail_rate!r}")
        if self.fail_count < -1:
            raise ValueError(f"fail_count must be >= -1, got {self.fail_count!r}")
        if self.on_abort not in ("kill", "drain"):
            raise ValueError(f"on_abort must be 'kill' or 'drain', got {self.on_abort!r}")

    def window(self, n_targets: int) -> int:
        """How many targets may be active at once."""
        if isinstance(self.parallel, str):
            pct = _percent(self.parallel)
            assert pct is not None  # checked in __post_init__
            return max(1, math.floor(pct * n_targets))
        return self.parallel

    def rate(self) -> Fraction | None:
        """The failure rate limit as an exact fraction, or None when there is no rate limit.

        The design document's default pair -- fail_rate 0 with fail_count -1 ("-1: count
        and rate don't matter") -- means no limit at all, so that pair yields None too.
        """
        if self.fail_rate is None:
            return None
        if isinstance(self.fail_rate, str):
            rate = _percent(self.fail_rate)
        elif self.fail_rate == -1:
            return None
        else:
            rate = _fraction(self.fail_rate)
        if rate == 0 and self.fail_count == -1:
            return None
        return rate

    def tripped(self, failures: int, n_targets: int) -> bool:
        """True when ``failures`` exceed fail_count or fail_rate x n_targets."""
        return self.trip_reason(failures, n_targets) is not None

    def trip_reason(self, failures: int, n_targets: int) -> str | None:
        """Why ``failures`` out of ``n_targets`` abort the rollout, or None if they do not."""
        if self.fail_count != -1 and failures > self.fail_count:
            plural = "" if failures == 1 else "s"
            return f"fail_count {self.fail_count} exceeded: {failures} failure{plural}"
        rate = self.rate()
        if rate is not None and failures > rate * n_targets:
            return f"fail_rate {self.fail_rate} exceeded: {failures} of {n_targets} targets failed"
        return None

    def first_tripping(self, n_targets: int) -> int | None:
        """The smallest number of failures that aborts a rollout of ``n_targets``, if any."""
        bounds = []
        if self.fail_count != -1:
            bounds.append(self.fail_count + 1)
        rate = self.rate()
        if rate is not None:
            bounds.append(math.floor(rate * n_targets) + 1)
        least = min(bounds, default=None)
        return least if least is not None and least <= n_targets else None


@dataclass(frozen=True, slots=True)
class Timing:
    delivery_timeout: float = 60.0  #: an unacked dispatch expires after this (task carries expires_at)
    redeliver_interval: float = 5.0  #: first re-publication of an unacked dispatch; the gap then doubles
    redeliver_max: float = 20.0  #: ... up to this (an interval smaller than redeliver_interval means none)
    ack_grace: float = 5.0  #: extra wait past expires_at before marking UNREACHABLE
    lost_grace: float = 60.0  #: agent offline this long while it runs our target -> LOST
    #: ... but while its datacenter's bridge is down (the master cannot hear it) the LOST clock
    #: stops; the target is LOST only once the bridge has been down this long (an upper bound,
    #: so that a dead datacenter still ends the task). Never less than lost_grace.
    lost_max: float = 600.0
    kill_resend: float = 5.0  #: re-send kill this often until the target reports

    def __post_init__(self) -> None:
        for name in ("delivery_timeout", "redeliver_interval", "redeliver_max", "kill_resend"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("ack_grace", "lost_grace", "lost_max"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(slots=True)
class TargetSnapshot:
    """One target as the rollout sees it (and as the store persists it)."""

    agent_id: str
    state: TargetState = TargetState.WAITING
    seq: int = 0  #: dispatch order
    dispatched_at: float | None = None  #: first dispatch
    last_sent_at: float | None = None  #: last (re)publication of the task
    expires_at: float | None = None  #: accept-by time carried in the task message
    acked: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    kill_requested: bool = False
    kill_sent_at: float | None = None
    offline_since: float | None = None  #: set while the agent is offline
    unheard_since: float | None = None  #: set while the agent's datacenter bridge is down


# ------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Publish the task to ``agent_id`` (first time, or again when ``redeliver``).
    ``expires_at`` None: the target's delivery clock has not started (``handoff``): the
    daemon writes the time its copy leaves the master's queue + delivery_timeout."""

    agent_id: str
    expires_at: float | None
    redeliver: bool = False


@dataclass(frozen=True, slots=True)
class SendKill:
    """Publish ``kill`` on the agent's control topic."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class TargetChanged:
    """A target moved state: persist it (and tell watchers). ``revised``: a late report from
    the agent replaced a provisional verdict (``old`` is UNREACHABLE or LOST)."""

    agent_id: str
    old: TargetState
    new: TargetState
    reason: str = ""
    revised: bool = False


@dataclass(frozen=True, slots=True)
class TaskChanged:
    """The task moved state: persist it (and tell watchers). ``final`` ends the task.
    ``revised``: the task had ended and a late report changed its verdict (or reopened it)."""

    old: TaskState
    new: TaskState
    reason: str = ""
    revised: bool = False

    @property
    def final(self) -> bool:
        return self.new.final


Action = Dispatch | SendKill | TargetChanged | TaskChanged


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a rollout stands in its plan, as the store keeps it (restore() takes it back).

    ``stage`` indexes the plan's resolved stages (a task without a plan has one);
    ``paused_at`` is set while it waits at a pause; ``aborted`` is why a step's limits or a
    person stopped the plan (a task's own limits are derived from its targets instead)."""

    stage: int = 0
    paused_at: float | None = None
    aborted: str | None = None

_ACTIVE = (_T.DISPATCHED, _T.RUNNING)
#: Verdicts the master reached without hearing from the agent: a later report replaces them.
PROVISIONAL = TARGET_PROVISIONAL
#: Appended to an abort's reason once late reports have revised the failures behind it.
ABORT_STANDS = "; the abort stands, though late reports revised its failures"
#: How a person's abort (:meth:`Rollout.abort`, the engine's ``aborted by <who>``) begins.
MANUAL_ABORT = "aborted by "


class Rollout:
    """One task's rollout. See the module docstring for the contract."""

    def __init__(
        self,
        task_id: str,
        agent_ids: list[str],
        limits: Limits,
        *,
        timing: Timing = Timing(),
        now: float,
        plan: Plan | None = None,
        handoff: bool = False,
    ) -> None:
        targets = [TargetSnapshot(agent_id=a, seq=i) for i, a in enumerate(agent_ids)]
        self._setup(task_id, limits, timing, targets, plan)
        self.handoff = handoff

    @classmethod
    def restore(
        cls,
        task_id: str,
        limits: Limits,
        *,
        targets: list[TargetSnapshot],
        task_state: TaskState,
        reason: str = "",
        timing: Timing = Timing(),
        killed: bool | None = None,
        plan: Plan | None = None,
        progress: Progress | None = None,
        handoff: bool = False,
    ) -> Rollout:
        """Rebuild a rollout from its stored targets (after a master restart).

        Whether the user had killed it is ``killed`` when given, else inferred: no limit
        tripped, and some target has kill_requested or is CANCELLED. Otherwise whether it
        had been aborted follows from the stored failures (the limits are monotonic).
        ``reason`` (the stored task reason) becomes the kill reason. ``plan`` and
        ``progress`` (the stored :class:`Progress`) put a plan back at its step or pause.
        """
        self = cls.__new__(cls)
        self._setup(task_id, limits, timing, sorted(targets, key=lambda t: t.seq), plan)
        self.handoff = handoff
        self.state = task_state
        self.reason = reason
        if progress is not None:
            self._stage = min(max(progress.stage, 0), len(self._stages) - 1)
            self._judged = self._stage - 1
            self.window = self._stages[self._stage].window
            self.paused_at = progress.paused_at if self._stages[self._stage].is_pause else None
            self._plan_abort = progress.aborted
        least = limits.first_tripping(self._n)
        tripped = least is not None and self._failures >= least
        if task_state.final:  # kept for a late report that revises a verdict
            self._judged = self._stage  # its last step was judged when it ended: that decision stands
            self.killed = task_state is TaskState.KILLED
            self.aborted = task_state is TaskState.FAILED and (
                tripped or self._plan_abort is not None or reason.startswith(("fail_count ", "fail_rate "))
            )
            self._end_reason = reason.split(ABORT_STANDS)[0]
            return self
        cancelled = any(t.state is _T.CANCELLED for t in self._targets.values())
        if killed is None:
            killed = (
                not tripped
                and self._plan_abort is None
                and any(t.kill_requested or t.state is _T.CANCELLED for t in self._targets.values())
            )
        if killed:
            self.killed = True
            self._end_reason = reason or "killed by user"
        elif self._plan_abort is not None:
            self.aborted = True
            self._end_reason = self._plan_abort
        elif tripped or cancelled:  # cancelled without a kill: an abort (its failures may since be revised)
            self.aborted = True
            self._end_reason = (limits.trip_reason(least, self._n) if least is not None else None) or reason
        for t in self._targets.values():
            self._schedule(t)
        return self

    def _setup(
        self, task_id: str, limits: Limits, timing: Timing, targets: list[TargetSnapshot], plan: Plan | None
    ) -> None:
        if not targets:
            raise ValueError("a rollout needs at least one target")
        self.task_id = task_id
        self.limits = limits
        self.timing = timing
        self.state = TaskState.WAITING
        self.reason = ""
        self.aborted = False
        self.killed = False
        self.revised = False  #: the task had ended and a late report changed its verdict
        #: flow control: a dispatched target's delivery clock starts at on_handed(), not at the Dispatch
        self.handoff = False
        self._end_reason = ""  #: the abort or kill reason the task will end with
        self._targets: dict[str, TargetSnapshot] = {t.agent_id: t for t in targets}
        if len(self._targets) != len(targets):
            raise ValueError("duplicate agent id in targets")
        self._order = [t.agent_id for t in targets]
        self._n = len(targets)
        self.plan = plan
        default_window = limits.window(self._n)
        self._stages = plan.resolve(self._n, default_window) if plan is not None else single_stage(self._n, default_window)
        self._stage = 0  #: index in _stages of the current step
        self._judged = -1  #: the last stage whose end was judged against its limits
        self.paused_at: float | None = None  #: set while the plan waits at a pause
        self._plan_abort: str | None = None  #: why a step's limits or a person aborted the plan
        self.window = self._stages[0].window
        self._next = 0  #: index in _order from which to look for the next WAITING target
        self._counts = {s: 0 for s in TargetState}
        #: counts(nonzero=True) as last computed; None once a target moved (one per event otherwise)
        self._nonzero: dict[str, int] | None = None
        self._stage_of: dict[str, int] = {}
        n_stages = len(self._stages)
        self._open = [0] * n_stages  #: per stage: its targets not final yet
        self._finished = [0] * n_stages  #: per stage: its targets final, CANCELLED left out
        self._fails = [0] * n_stages  #: per stage: failures that count toward its limits
        for i, stage in enumerate(self._stages):
            for agent_id in self._order[stage.start : stage.end]:
                self._stage_of[agent_id] = i
        for t in targets:
            self._counts[t.state] += 1
            self._count_stage(t.agent_id, t.state, 1)
        self._failures = sum(n for s, n in self._counts.items() if s.failure)
        self._active = {t.agent_id for t in targets if t.state in _ACTIVE}
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._pushes = 0
        self._dirty: set[str] = set()

    # ------------------------------------------------------------------ read side

    @property
    def targets(self) -> dict[str, TargetSnapshot]:
        return self._targets

    @property
    def final(self) -> bool:
        return self.state.final

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def active(self) -> int:
        return len(self._active)

    def counts(self, *, nonzero: bool = False) -> dict[str, int]:
        """Targets per state (by state value); only the states some target is in if ``nonzero``."""
        if nonzero:
            # a fan-out emits one event per dispatched target, each with the counts: computed
            # once per state change, copied per call (the caller may keep or change its dict)
            if self._nonzero is None:
                self._nonzero = {TARGET_VALUES[s]: n for s, n in self._counts.items() if n}
            return dict(self._nonzero)
        return {TARGET_VALUES[s]: n for s, n in self._counts.items()}

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        due = heap[0][0] if heap else None
        pause_end = self.pause_ends_at
        if pause_end is not None and (due is None or pause_end < due):
            return pause_end
        return due

    @property
    def paused(self) -> bool:
        """The plan waits at a pause (the task is PAUSED)."""
        return self.paused_at is not None

    @property
    def pause_ends_at(self) -> float | None:
        """When a timed pause ends by itself; None when not paused or until approved."""
        if self.paused_at is None or self.final:
            return None
        seconds = self._stages[self._stage].pause_seconds
        return None if seconds is None else self.paused_at + seconds

    @property
    def stages(self) -> list[Stage]:
        return self._stages

    @property
    def stage(self) -> int:
        """Index in :attr:`stages` of the current step."""
        return self._stage

    @property
    def progress(self) -> Progress:
        """What the store keeps of the plan's progress; persist it whenever it changes."""
        return Progress(self._stage, self.paused_at, self._plan_abort)

    def pop_dirty(self) -> list[str]:
        dirty = sorted(self._dirty, key=lambda a: self._targets[a].seq)
        self._dirty.clear()
        return dirty

    def take_dirty(self) -> set[str]:
        """:meth:`pop_dirty` unordered: for a caller that collects them in a set anyway (a
        fan-out's 100,000 need no sort)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    # ------------------------------------------------------------------ lifecycle

    def start(self, now: float) -> list[Action]:
        if self.state is not TaskState.WAITING or self.killed:
            return []
        return self._fill(now)

    def resume(self, now: float) -> list[Action]:
        """After :meth:`restore`: re-send unacked dispatches and owed kills, fill the window."""
        if self.final:
            return []
        actions: list[Action] = []
        for agent_id in sorted(self._active, key=lambda a: self._targets[a].seq):
            t = self._targets[agent_id]
            if t.state is _T.DISPATCHED and t.expires_at is None and not t.acked and not self.handoff:
                t.expires_at = now + self.timing.delivery_timeout  # a store that lost it: give a fresh expiry
            if t.kill_requested:
                t.kill_sent_at = now
                actions.append(SendKill(agent_id))
            elif not t.acked and t.state is _T.DISPATCHED and t.expires_at is None:  # its copy was still queued
                actions.append(Dispatch(agent_id, None))
            elif not t.acked and t.state is _T.DISPATCHED and t.expires_at is not None and now < t.expires_at:
                t.last_sent_at = now
                actions.append(Dispatch(agent_id, t.expires_at, redeliver=True))
            self._touch(t)
        if self.aborted or self.killed:  # the crash may have come before all of it was stored
            actions += self._cancel_waiting(now, f"{'rollout aborted' if self.aborted else 'task killed'}: {self._end_reason}")
            if self.killed or self.limits.on_abort == "kill":
                actions += self._kill_active(now)
        actions += self.tick(now)
        actions += self._fill(now)
        actions += self._check_final()
        return actions

    def approve(self, now: float, by: str) -> list[Action]:
        """A person lets a paused plan go on (a timed pause ends early). Returns ``[]`` when
        the plan is not paused: check :attr:`paused` first to tell the person why."""
        if not self.paused or self.final or self.aborted or self.killed:
            return []
        return self._leave_pause(now, f"approved by {by}")

    def abort(self, now: float, reason: str) -> list[Action]:
        """Stop the plan as a tripped limit would: nothing more is dispatched, WAITING targets
        are CANCELLED, active ones killed or drained (``on_abort``); the task ends FAILED with
        ``reason``. Returns ``[]`` on a task already final, killed or aborted."""
        if self.final or self.killed or self.aborted:
            return []
        self._plan_abort = reason
        actions = self._abort(now, reason) + self._check_final()
        if self.state is TaskState.PAUSED:  # active targets still draining: it runs until they end
            actions.append(self._set_task(TaskState.RUNNING, ""))
        return actions

    def kill(self, now: float, reason: str = "killed by user") -> list[Action]:
        if self.final or self.killed:
            return []
        actions: list[Action] = []
        if not self.aborted:
            self.killed = True
            self._end_reason = reason
            actions += self._cancel_waiting(now, f"task killed: {reason}")
        actions += self._kill_active(now)
        actions += self._check_final()
        return actions

    # ------------------------------------------------------------------ agent events

    def on_ack(self, agent_id: str, now: float) -> list[Action]:
        t = self._targets.get(agent_id)
        if t is not None and t.state in PROVISIONAL:  # it did get the task: the verdict was wrong
            return self._revise(t, _T.RUNNING if t.started_at is not None else _T.DISPATCHED, now, "")
        if t is None or t.state not in _ACTIVE:
            return []
        changed = not t.acked or t.offline_since is not None or t.unheard_since is not None
        t.acked = True
        t.offline_since = t.unheard_since = None  # an ack proves the agent is alive
        if changed:
            self._touch(t)
        return []

    def on_started(self, agent_id: str, now: float) -> list[Action]:
        t = self._targets.get(agent_id)
        if t is not None and t.state in PROVISIONAL:
            if t.started_at is None:
                t.started_at = now
            return self._revise(t, _T.RUNNING, now, "")
        if t is None or t.state is not _T.DISPATCHED:
            return []
        t.acked = True
        t.offline_since = t.unheard_since = None
        t.started_at = now
        return [self._move(t, _T.RUNNING, "")]

    def on_final(self, agent_id: str, state: TargetState, now: float, reason: str = "") -> list[Action]:
        if not state.final:
            raise ValueError(f"on_final needs a final state, got {state.value}")
        t = self._targets.get(agent_id)
        if t is not None and t.state in PROVISIONAL:
            if state in (_T.UNREACHABLE, _T.CANCELLED, t.state):
                return []  # an "expired" reject only confirms UNREACHABLE
            return self._revise(t, state, now, reason)
        if t is None or t.state not in _ACTIVE:
            return []
        if state is _T.UNREACHABLE and t.acked:
            return []  # an "expired" reject cannot follow an ack of the same task
        try:
            check_target_transition(t.state, state)
        except ValueError:
            return []  # out of sequence (e.g. REJECTED after started): ignore
        return self._finish(t, state, now, reason)

    def on_agent_offline(self, agent_id: str, now: float, *, unheard: bool = False) -> list[Action]:
        """``unheard``: offline because its datacenter's bridge is down (see on_agent_heard)."""
        t = self._targets.get(agent_id)
        if t is None or t.state not in _ACTIVE:
            return []
        if unheard and t.unheard_since is None:
            t.unheard_since = now
            self._touch(t)
        if t.offline_since is None:
            t.offline_since = now
            self._touch(t)
        return []

    def on_agent_online(self, agent_id: str, now: float) -> list[Action]:
        t = self._targets.get(agent_id)
        if t is None or (t.offline_since is None and t.unheard_since is None):
            return []
        t.offline_since = t.unheard_since = None
        self._touch(t)
        return []

    def on_agent_heard(self, agent_id: str, now: float, *, heard: bool) -> list[Action]:
        """The agent's datacenter bridge came back (``heard``) or went down.

        While it is down the target's LOST clock stops: it counts only offline time the
        master could have heard the agent in. The bridge's outage itself ends the target as
        LOST only after ``lost_max``. When the bridge is back, the offline time counted
        before the outage stays counted and the clock runs on from ``now``.
        """
        t = self._targets.get(agent_id)
        if t is None or t.state not in _ACTIVE:
            return []
        if not heard:
            if t.unheard_since is None:
                t.unheard_since = now
                self._touch(t)
            return []
        if t.unheard_since is None:
            return []
        if t.offline_since is not None:
            t.offline_since += max(0.0, now - max(t.unheard_since, t.offline_since))
        t.unheard_since = None
        self._touch(t)
        return []

    def on_handed(self, agent_id: str, now: float) -> list[Action]:
        """(``handoff``) The broker took a copy of the task (its PUBACK) while the agent was
        connected: the target's delivery clock starts now, ``expires_at = now +
        delivery_timeout`` and ``dispatched_at = now`` (the redelivery back-off counts from
        here; until then ``dispatched_at`` is when the rollout decided). Until then the copy
        sat in the master's own queue or connection, which is no fault of the agent's.
        Ignored once the clock runs, the agent acked, or the target is no longer DISPATCHED."""
        t = self._targets.get(agent_id)
        if t is None or t.state is not _T.DISPATCHED or t.acked or t.expires_at is not None:
            return []
        t.expires_at = now + self.timing.delivery_timeout
        t.dispatched_at = t.last_sent_at = now  # the copy left: the redelivery back-off counts from here
        t.offline_since = t.unheard_since = None  # it was connected when the broker took the copy
        self._touch(t)
        return []

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, agent_id = heapq.heappop(heap)
            if self._due.get(agent_id) != due:
                continue  # stale entry
            del self._due[agent_id]
            actions += self._tick_target(self._targets[agent_id], now)
        pause_end = self.pause_ends_at
        if pause_end is not None and now >= pause_end and not (self.aborted or self.killed):
            seconds = self._stages[self._stage].pause_seconds
            assert seconds is not None  # pause_ends_at is set only for a timed pause
            actions += self._leave_pause(now, f"pause of {format_duration(seconds)} over")
        return actions

    def defer(self, seconds: float) -> None:
        """The master could not hear for ``seconds`` (down, frozen, disconnected, far behind):
        every running clock of an active target -- delivery expiry, redelivery, LOST grace --
        moves that much later, so deadlines count only time during which the master listened.
        Persist ``take_dirty()``; redelivered copies carry the moved ``expires_at``."""
        if seconds <= 0 or self.final:
            return
        for agent_id in self._active:
            t = self._targets[agent_id]
            moved = False
            if t.state is _T.DISPATCHED and not t.acked and t.expires_at is not None:
                t.expires_at += seconds
                if t.last_sent_at is not None:
                    t.last_sent_at += seconds
                moved = True
            if t.offline_since is not None:
                t.offline_since += seconds
                moved = True
            if t.unheard_since is not None:
                t.unheard_since += seconds
                moved = True
            if moved:
                self._touch(t)

    def _tick_target(self, t: TargetSnapshot, now: float) -> list[Action]:
        tm = self.timing
        if t.state not in _ACTIVE:
            return []
        if not t.acked and t.state is _T.DISPATCHED and now >= _expiry(t, tm):
            if t.kill_requested:
                return self._finish(t, _T.CANCELLED, now, "killed before the agent accepted it")
            if t.expires_at is None:  # queued for an agent that stayed offline
                if t.unheard_since is not None:
                    why = f"datacenter unreachable for more than lost_max {max(tm.lost_max, tm.lost_grace):g}s"
                else:
                    why = f"agent offline for more than delivery_timeout {tm.delivery_timeout:g}s; never sent"
                return self._finish(t, _T.UNREACHABLE, now, why)
            return self._finish(t, _T.UNREACHABLE, now, f"not accepted within delivery_timeout {tm.delivery_timeout:g}s")
        lost_at, redeliver_at = _lost_at(t, tm), _redeliver_at(t, tm)
        if lost_at is not None and now >= lost_at:
            if t.kill_requested:
                why = f"kill not confirmed: agent unreachable for more than lost_max {max(tm.lost_max, tm.lost_grace):g}s"
            elif t.unheard_since is not None:
                why = f"datacenter unreachable for more than lost_max {max(tm.lost_max, tm.lost_grace):g}s"
            else:
                why = f"agent offline for more than lost_grace {tm.lost_grace:g}s"
            return self._finish(t, _T.LOST, now, why)
        actions: list[Action] = []
        if t.kill_requested:
            if t.kill_sent_at is None or now >= _kill_resend_at(t, tm):
                t.kill_sent_at = now
                actions.append(SendKill(t.agent_id))
        elif redeliver_at is not None and now >= redeliver_at:
            t.last_sent_at = now
            assert t.expires_at is not None
            actions.append(Dispatch(t.agent_id, t.expires_at, redeliver=True))
        self._touch(t)
        return actions

    # ------------------------------------------------------------------ internals

    def _touch(self, t: TargetSnapshot) -> None:
        """Mark dirty and (re)schedule the target's next deadline."""
        self._dirty.add(t.agent_id)
        self._schedule(t)

    def _schedule(self, t: TargetSnapshot) -> None:
        due = _deadline(t, self.timing)
        if due is None:
            self._due.pop(t.agent_id, None)
        elif self._due.get(t.agent_id) != due:
            self._due[t.agent_id] = due
            self._pushes += 1
            heapq.heappush(self._heap, (due, self._pushes, t.agent_id))

    def _move(self, t: TargetSnapshot, new: TargetState, reason: str, *, revised: bool = False) -> TargetChanged:
        old = t.state
        check_target_transition(old, new)
        t.state = new
        self._counts[old] -= 1
        self._counts[new] += 1
        self._nonzero = None
        self._count_stage(t.agent_id, old, -1)
        self._count_stage(t.agent_id, new, 1)
        if old.failure:  # only a revised verdict leaves a failure
            self._failures -= 1
        if new.failure:
            self._failures += 1
        if new in _ACTIVE:
            self._active.add(t.agent_id)
        else:
            self._active.discard(t.agent_id)
        self._touch(t)
        return TargetChanged(t.agent_id, old, new, reason, revised)

    def _revise(self, t: TargetSnapshot, new: TargetState, now: float, reason: str) -> list[Action]:
        """A provisional verdict (UNREACHABLE, LOST) meets the agent's own report: take it.

        The target counts as what the agent says from now on (a late SUCCEED is no failure
        for the limits still to be decided; an active one takes a window slot again).
        Decisions already taken stand: an abort is not undone, CANCELLED targets stay
        cancelled, and a target revived in a rollout that kills its active targets (a kill,
        or an abort with on_abort "kill") is sent a kill. A task that had ended gets its
        verdict recomputed, or is reopened while the revived target runs.
        """
        t.acked = True
        t.offline_since = t.unheard_since = None
        t.finished_at = now if new.final else None
        actions: list[Action] = [self._move(t, new, reason, revised=True)]
        if new.active and (self.killed or (self.aborted and self.limits.on_abort == "kill")):
            actions += self._kill_active(now)
        elif new.failure and not self.aborted and not self.killed:
            why = self.limits.trip_reason(self._failures, self._n) or self._step_trip(self._stage_of[t.agent_id], ended=False)
            if why is not None:
                actions += self._abort(now, why)
        actions += self._check_final(revised=True)
        return actions

    def _finish(self, t: TargetSnapshot, state: TargetState, now: float, reason: str) -> list[Action]:
        t.finished_at = now
        t.offline_since = None
        actions: list[Action] = [self._move(t, state, reason)]
        if not self.aborted and not self.killed:
            why = self.limits.trip_reason(self._failures, self._n) if state.failure else None
            why = why or self._step_trip(self._stage_of[t.agent_id], ended=False)
            if why is not None:
                actions += self._abort(now, why)
        actions += self._fill(now)
        actions += self._check_final()
        return actions

    def _abort(self, now: float, why: str) -> list[Action]:
        self.aborted = True
        self._end_reason = why
        actions = self._cancel_waiting(now, f"rollout aborted: {why}")
        if self.limits.on_abort == "kill":
            actions += self._kill_active(now)
        return actions

    def _cancel_waiting(self, now: float, reason: str) -> list[Action]:
        actions: list[Action] = []
        for agent_id in self._order[self._next :]:
            t = self._targets[agent_id]
            if t.state is _T.WAITING:
                t.finished_at = now
                actions.append(self._move(t, _T.CANCELLED, reason))
        self._next = self._n
        return actions

    def _kill_active(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for agent_id in sorted(self._active, key=lambda a: self._targets[a].seq):
            t = self._targets[agent_id]
            if t.kill_requested:
                continue
            t.kill_requested = True
            t.kill_sent_at = now
            if t.state is _T.DISPATCHED and not t.acked and t.expires_at is None:
                t.expires_at = now + self.timing.delivery_timeout  # a copy may be on its way: wait as long
            self._touch(t)
            actions.append(SendKill(agent_id))
        return actions

    def _fill(self, now: float) -> list[Action]:
        """Dispatch WAITING targets of the current step in seq order until the window is
        full; when the step has ended within its limits, go on to the next one (a batch is
        filled the same way, a pause is entered)."""
        actions: list[Action] = []
        while not (self.aborted or self.killed or self.final or self.paused):
            stage = self._stages[self._stage]
            if stage.is_pause:
                actions += self._enter_pause(now)
                break
            actions += self._dispatch_window(now, stage.end)
            if self._open[self._stage] or self._judged >= self._stage:
                break
            self._judged = self._stage
            why = self._step_trip(self._stage, ended=True)
            if why is not None:
                actions += self._abort(now, why)
                break
            if self._stage + 1 >= len(self._stages):
                break
            self._stage += 1
            self.window = self._stages[self._stage].window
        return actions

    def _dispatch_window(self, now: float, end: int) -> list[Action]:
        actions: list[Action] = []
        expires_at = None if self.handoff else now + self.timing.delivery_timeout
        while len(self._active) < self.window and self._next < end:
            t = self._targets[self._order[self._next]]
            self._next += 1
            if t.state is not _T.WAITING:
                continue
            if self.state is TaskState.WAITING:
                actions.append(self._set_task(TaskState.RUNNING, ""))
            t.dispatched_at = t.last_sent_at = now
            t.expires_at = expires_at
            t.acked = False
            actions.append(self._move(t, _T.DISPATCHED, ""))
            actions.append(Dispatch(t.agent_id, expires_at))
        return actions

    def _enter_pause(self, now: float) -> list[Action]:
        stage = self._stages[self._stage]
        seconds = stage.pause_seconds
        nxt = next(s for s in self._stages[self._stage + 1 :] if not s.is_pause)  # resolve() keeps one
        self.paused_at = now
        until = "approved" if seconds is None else f"approved, or for {format_duration(seconds)}"
        why = f"paused at step {stage.number} until {until}; next: {nxt.size} target{'' if nxt.size == 1 else 's'}"
        return [self._set_task(TaskState.PAUSED, why)]

    def _leave_pause(self, now: float, why: str) -> list[Action]:
        self.paused_at = None
        self._judged = self._stage
        self._stage += 1
        self.window = self._stages[self._stage].window
        actions: list[Action] = [self._set_task(TaskState.RUNNING, why)]
        actions += self._fill(now)
        actions += self._check_final()
        return actions

    def _count_stage(self, agent_id: str, state: TargetState, delta: int) -> None:
        i = self._stage_of.get(agent_id)
        if i is None:
            return
        if not state.final:
            self._open[i] += delta
        elif state is not _T.CANCELLED:
            self._finished[i] += delta
            step = self._stages[i].step
            if isinstance(step, Batch) and step.counts(state):
                self._fails[i] += delta

    def _step_trip(self, i: int, *, ended: bool) -> str | None:
        """Why stage ``i``'s own limits stop the plan, or None; remembered as the plan's abort."""
        why = self._step_reason(i, ended=ended)
        if why is not None:
            self._plan_abort = why
        return why

    def _step_reason(self, i: int, *, ended: bool) -> str | None:
        step = self._stages[i].step
        if not isinstance(step, Batch) or self.plan is None:
            return None
        why = step.trip_reason(self._fails[i], self._finished[i], ended=ended)
        return None if why is None else f"step {self._stages[i].number}: {why}"

    def _any_limit_trips(self) -> bool:
        """Whether the task's or any step's limits trip on the failures as they stand now."""
        if self.limits.trip_reason(self._failures, self._n) is not None:
            return True
        return any(self._step_reason(i, ended=True) is not None for i in range(len(self._stages)))

    def _check_final(self, *, revised: bool = False) -> list[Action]:
        """End the task once nothing is open. After a revision (``revised``), a task that had
        ended is reopened (a target runs again) or gets its verdict recomputed."""
        c = self._counts
        if c[_T.WAITING] + c[_T.DISPATCHED] + c[_T.RUNNING]:
            if self.final and revised:
                self.revised = True
                return [self._set_task(TaskState.RUNNING, "reopened: a target judged without hearing from its agent runs")]
            return []
        if self.final and not revised:
            return []
        was_revised, self.revised = self.revised, self.revised or self.final
        state, reason = self._verdict()
        if self.final and (state, reason) == (self.state, self.reason):
            self.revised = was_revised
            return []
        return [self._set_task(state, reason)]

    def _verdict(self) -> tuple[TaskState, str]:
        c = self._counts
        if self.killed:
            return TaskState.KILLED, self._end_reason
        if self.aborted:
            stands = self.revised and not self._end_reason.startswith(MANUAL_ABORT) and not self._any_limit_trips()
            return TaskState.FAILED, self._end_reason + (ABORT_STANDS if stands else "")
        if c[_T.SUCCEED] == self._n:
            return TaskState.SUCCEED, ("the target succeeded" if self._n == 1 else f"all {self._n} targets succeeded")
        return TaskState.FAILED, self._failure_summary()

    def _failure_summary(self) -> str:
        bad = {s.value: n for s, n in self._counts.items() if n and s is not _T.SUCCEED}
        detail = ", ".join(f"{k} {v}" for k, v in bad.items())
        return f"{self._n - self._counts[_T.SUCCEED]} of {self._n} targets did not succeed: {detail}"

    def _set_task(self, new: TaskState, reason: str) -> TaskChanged:
        old = self.state
        check_task_transition(old, new)
        if new is not TaskState.PAUSED:
            self.paused_at = None
        self.state = new
        self.reason = reason
        return TaskChanged(old, new, reason, self.revised)


# ---------------------------------------------------------------------- deadlines


def _expiry(t: TargetSnapshot, tm: Timing) -> float:
    if t.expires_at is not None:
        return t.expires_at + tm.ack_grace
    # queued (handoff): no clock until the broker takes a copy while the agent is connected;
    # an agent offline all along is given delivery_timeout (its bridge down: lost_max)
    if t.unheard_since is not None:
        return t.unheard_since + max(tm.lost_max, tm.lost_grace)
    if t.offline_since is not None:
        return t.offline_since + tm.delivery_timeout + tm.ack_grace
    return math.inf


def _lost_at(t: TargetSnapshot, tm: Timing) -> float | None:
    running = t.state is _T.RUNNING or (t.state is _T.DISPATCHED and t.acked)
    if not running or t.offline_since is None:
        return None
    if t.kill_requested:  # a kill is owed: keep delivering it (KILL_PENDING) up to the upper bound
        return (t.unheard_since if t.unheard_since is not None else t.offline_since) + max(tm.lost_max, tm.lost_grace)
    if t.unheard_since is not None:  # its datacenter's bridge is down: only the upper bound runs
        return t.unheard_since + max(tm.lost_max, tm.lost_grace)
    return t.offline_since + tm.lost_grace


def _redeliver_at(t: TargetSnapshot, tm: Timing) -> float | None:
    if t.state is not _T.DISPATCHED or t.acked or t.kill_requested:
        return None
    last = t.last_sent_at if t.last_sent_at is not None else t.dispatched_at
    if last is None or t.expires_at is None:
        return None
    at = last + _redeliver_gap(t, last, tm)
    return None if at >= t.expires_at else at  # a copy arriving after expires_at would only be refused


def _redeliver_gap(t: TargetSnapshot, last: float, tm: Timing) -> float:
    """Exponential back-off without extra state: the next copy waits as long as the task has
    been out already (sends at 0, R, 2R, 4R, ... after the dispatch), at least
    ``redeliver_interval`` R and at most ``max(R, redeliver_max)``. A busy agent is not
    buried under copies of what its broker session already holds."""
    out_for = last - t.dispatched_at if t.dispatched_at is not None else 0.0
    return min(max(tm.redeliver_interval, out_for), max(tm.redeliver_interval, tm.redeliver_max))


def _deadline(t: TargetSnapshot, tm: Timing) -> float | None:
    """The earliest time at which tick() has something to do for ``t``: the least of its
    clocks that is not +inf (None if none is). Three times per target of a fan-out
    (dispatch, broker's PUBACK, ack): no lists built."""
    state = t.state
    if state is not _T.DISPATCHED and state is not _T.RUNNING:
        return None
    due = _expiry(t, tm) if state is _T.DISPATCHED and not t.acked else math.inf
    at = _lost_at(t, tm)
    if at is not None and at < due:
        due = at
    at = _redeliver_at(t, tm)
    if at is not None and at < due:
        due = at
    if t.kill_requested:
        at = _kill_resend_at(t, tm) if t.kill_sent_at is not None else -math.inf
        if at < due:
            due = at
    return None if due == math.inf else due


def _kill_resend_at(t: TargetSnapshot, tm: Timing) -> float:
    """When an owed kill goes out again: every ``kill_resend`` while the agent is online;
    while it is unreachable, after as long as it has been (kill_resend, 2x, 4x ...), at
    most ``redeliver_max`` apart, so a long cut does not pile kills up behind it."""
    assert t.kill_sent_at is not None
    gap = tm.kill_resend
    if t.offline_since is not None:
        cap = max(tm.kill_resend, tm.redeliver_max)
        gap = min(max(tm.kill_resend, t.kill_sent_at - t.offline_since), cap)
    return t.kill_sent_at + gap
