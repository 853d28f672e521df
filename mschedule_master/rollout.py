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
    r.next_deadline() -> float | None    # when tick() next has something to do
    r.state, r.reason, r.counts(), r.targets (dict agent_id -> TargetSnapshot, read-only use)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mschedule_agent.protocol import parse_percent

from .states import TargetState, TaskState


@dataclass(frozen=True, slots=True)
class Limits:
    """The user's rollout limits, already validated by the protocol's Submit."""

    parallel: int | str = 1  #: int >= 1 or "N%" of the target count (floor, min 1)
    fail_rate: float | str | None = None  #: None / -1 = no rate limit; 0..1 or "N%"
    fail_count: int = -1  #: -1 = no count limit
    on_abort: str = "kill"  #: "kill" running targets on abort, or "drain" them

    def window(self, n_targets: int) -> int:
        """How many targets may be active at once."""
        raise NotImplementedError

    def tripped(self, failures: int, n_targets: int) -> bool:
        """True when ``failures`` exceed fail_count or fail_rate x n_targets."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Timing:
    delivery_timeout: float = 60.0  #: an unacked dispatch expires after this (task carries expires_at)
    redeliver_interval: float = 5.0  #: re-publish an unacked dispatch this often
    ack_grace: float = 5.0  #: extra wait past expires_at before marking UNREACHABLE
    lost_grace: float = 60.0  #: agent offline this long while it runs our target -> LOST
    kill_resend: float = 5.0  #: re-send kill this often until the target reports


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


# ------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Publish the task to ``agent_id`` (first time, or again when ``redeliver``)."""

    agent_id: str
    expires_at: float
    redeliver: bool = False


@dataclass(frozen=True, slots=True)
class SendKill:
    """Publish ``kill`` on the agent's control topic."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class TargetChanged:
    """A target moved state: persist it (and tell watchers)."""

    agent_id: str
    old: TargetState
    new: TargetState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TaskChanged:
    """The task moved state: persist it (and tell watchers). ``final`` ends the task."""

    old: TaskState
    new: TaskState
    reason: str = ""


Action = Dispatch | SendKill | TargetChanged | TaskChanged


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
    ) -> None:
        raise NotImplementedError

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
    ) -> Rollout:
        raise NotImplementedError
