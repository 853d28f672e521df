"""An unfinished task as the engine holds it in memory: its rollout and delivery state."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import models, plan
from .rollout import Limits, Progress, Rollout


@dataclass(slots=True)
class Active:
    """An unfinished task: its rollout, and what the agents need to run it."""

    task: models.Task
    rollout: Rollout
    encoded: tuple[float, bytes] | None = None  #: (expires_at, the task message): one encode per window fill
    codes: dict[str, int | None] = field(default_factory=dict)  #: exit codes of the stored results, for the summary
    script_sha256: str | None = None  #: of task.script, computed at the first result that reports one
    progress: Progress = field(default_factory=Progress)  #: the plan's progress as last stored


def limits(task: models.Task) -> Limits:
    """The rollout limits a task asked for."""
    return Limits(parallel=task.parallel, fail_rate=task.fail_rate, fail_count=task.fail_count, on_abort=task.on_abort)


def plan_of(task: models.Task) -> plan.Plan | None:
    """The rollout plan a task asked for (docs/rollout.md, "Plans"); None for none."""
    return plan.parse(task.plan) if task.plan is not None else None


def counts(active: Active) -> dict[str, int]:
    """The task's targets by state, states with none left out."""
    return active.rollout.counts(nonzero=True)
