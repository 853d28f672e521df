"""Task and target states, and the transitions allowed between them.

States are stored as their ``.value`` in SQLite and parsed back at the store boundary.
Every change of a target's state goes through :func:`check_target_transition`. Final states
never change again, except the provisional ones (UNREACHABLE, LOST): a late report from the
agent replaces them (docs/rollout.md, "Provisional verdicts").
"""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    WAITING = "WAITING"  #: stored, nothing dispatched yet
    RUNNING = "RUNNING"  #: at least one target dispatched, not finished
    PAUSED = "PAUSED"  #: its plan waits at a pause: for approval, or until a timed pause ends
    SUCCEED = "SUCCEED"  #: every target succeeded
    FAILED = "FAILED"  #: aborted by a failure threshold, or some target failed
    KILLED = "KILLED"  #: killed by a user

    @property
    def final(self) -> bool:
        return self in TASK_FINAL


TASK_FINAL = frozenset({TaskState.SUCCEED, TaskState.FAILED, TaskState.KILLED})

_K = TaskState
#: task state -> the states it may move to. A final task moves again only when a late
#: report revises its verdict (to another final state) or reopens it (RUNNING).
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _K.WAITING: frozenset({_K.RUNNING, _K.PAUSED} | TASK_FINAL),  #: PAUSED: the plan opens with a pause
    _K.RUNNING: frozenset({_K.PAUSED} | TASK_FINAL),
    _K.PAUSED: frozenset({_K.RUNNING} | TASK_FINAL),  #: approved / pause over; or killed, aborted
    _K.SUCCEED: frozenset({_K.RUNNING} | TASK_FINAL),
    _K.FAILED: frozenset({_K.RUNNING} | TASK_FINAL),
    _K.KILLED: frozenset({_K.RUNNING} | TASK_FINAL),
}


class TaskTransitionError(ValueError):
    def __init__(self, old: TaskState, new: TaskState) -> None:
        super().__init__(f"task cannot move from {old.value} to {new.value}")
        self.old = old
        self.new = new


def check_task_transition(old: TaskState, new: TaskState) -> None:
    if new not in TASK_TRANSITIONS[old]:
        raise TaskTransitionError(old, new)


class TargetState(str, Enum):
    WAITING = "WAITING"  #: not dispatched yet
    DISPATCHED = "DISPATCHED"  #: published to the agent; ``acked`` says whether it accepted
    RUNNING = "RUNNING"  #: the agent reported ``started``
    SUCCEED = "SUCCEED"  #: exit code 0
    FAILED = "FAILED"  #: non-zero exit code (or the script could not start)
    TIMEOUT = "TIMEOUT"  #: killed by the agent after the task's timeout
    KILLED = "KILLED"  #: killed on a user's or an abort's request
    INTERRUPTED = "INTERRUPTED"  #: the agent died while running it; never re-run
    LOST = "LOST"  #: the agent went offline mid-run and did not come back in time (provisional)
    UNREACHABLE = "UNREACHABLE"  #: the agent did not accept the task before its expiry (provisional)
    REJECTED = "REJECTED"  #: the agent refused the task (bad script, too large, ...)
    CANCELLED = "CANCELLED"  #: never started: the rollout was aborted or killed first

    @property
    def final(self) -> bool:
        return self in TARGET_FINAL

    @property
    def active(self) -> bool:
        return self in (TargetState.DISPATCHED, TargetState.RUNNING)

    @property
    def failure(self) -> bool:
        """Counts against fail_count / fail_rate."""
        return self in TARGET_FAILURES


#: Each target state's value. Enum.value is a slow descriptor, and the per-target hot paths
#: (the rollout's counts, the engine's target events) read it per event.
TARGET_VALUES: dict[TargetState, str] = {s: s.value for s in TargetState}

TARGET_FINAL = frozenset(
    {
        TargetState.SUCCEED,
        TargetState.FAILED,
        TargetState.TIMEOUT,
        TargetState.KILLED,
        TargetState.INTERRUPTED,
        TargetState.LOST,
        TargetState.UNREACHABLE,
        TargetState.REJECTED,
        TargetState.CANCELLED,
    }
)

TARGET_FAILURES = frozenset(
    {
        TargetState.FAILED,
        TargetState.TIMEOUT,
        TargetState.LOST,
        TargetState.UNREACHABLE,
        TargetState.INTERRUPTED,
        TargetState.REJECTED,
    }
)

_T = TargetState
#: target state -> the states it may move to. Final states move nowhere.
TARGET_TRANSITIONS: dict[TargetState, frozenset[TargetState]] = {
    _T.WAITING: frozenset({_T.DISPATCHED, _T.CANCELLED}),
    _T.DISPATCHED: frozenset(
        {_T.RUNNING, _T.UNREACHABLE, _T.REJECTED, _T.CANCELLED, _T.LOST} | (TARGET_FINAL - {_T.CANCELLED})
    ),
    _T.RUNNING: frozenset(TARGET_FINAL - {_T.UNREACHABLE, _T.REJECTED, _T.CANCELLED}),
}
for _s in TARGET_FINAL:
    TARGET_TRANSITIONS[_s] = frozenset()
#: Provisional verdicts, reached without hearing from the agent: the agent's own later
#: report (ack, started, result, reject) replaces them. The other final states are final.
TARGET_PROVISIONAL = frozenset({_T.UNREACHABLE, _T.LOST})
TARGET_TRANSITIONS[_T.UNREACHABLE] = frozenset({_T.DISPATCHED, _T.RUNNING} | (TARGET_FINAL - {_T.UNREACHABLE, _T.CANCELLED}))
TARGET_TRANSITIONS[_T.LOST] = frozenset({_T.DISPATCHED, _T.RUNNING} | (TARGET_FINAL - {_T.LOST, _T.UNREACHABLE, _T.CANCELLED}))


class TransitionError(ValueError):
    def __init__(self, old: TargetState, new: TargetState) -> None:
        super().__init__(f"target cannot move from {old.value} to {new.value}")
        self.old = old
        self.new = new


def check_target_transition(old: TargetState, new: TargetState) -> None:
    if new not in TARGET_TRANSITIONS[old]:
        raise TransitionError(old, new)
