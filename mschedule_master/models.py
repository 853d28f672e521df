"""The master's records, as the store returns them and the API/CLI show them.

INTERFACE CONTRACT between the master core (store, engine, service) and the user
interfaces (HTTP API, CLI, web page). Fields may be added; none renamed or removed
without updating both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .states import TargetState, TaskState


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    hostname: str
    ip: list[str]
    labels: dict[str, str]
    version: str
    capacity: int
    online: bool
    dc: str | None  #: datacenter it is bridged from; None = the master's own broker
    started_at: float | None
    last_seen: float | None  #: last status/heartbeat received (master clock)
    last_heartbeat: float | None  #: ts of the last heartbeat (agent clock)
    heartbeat_interval: float
    running: list[str] = field(default_factory=list)  #: task ids running now


@dataclass(frozen=True, slots=True)
class Target:
    task_id: str
    agent_id: str
    state: TargetState
    acked: bool = False
    code: int | None = None
    signal: int | None = None
    reason: str = ""  #: why it ended as it did (reject reason, abort, ...)
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    hostname: str | None = None
    #: the final state the agent itself reported, when it did. It differs from ``state``
    #: when the master's verdict came first: a target judged UNREACHABLE or LOST whose
    #: agent had in fact accepted the task reports what really happened here.
    agent_state: str | None = None
    #: why the agent could not start or finish the script (bad cwd, missing interpreter,
    #: exec failure, ...), as it reported; None when it said nothing.
    error: str | None = None
    #: when a late report from the agent replaced a provisional verdict (UNREACHABLE, LOST),
    #: and what that verdict was; None when the state was never revised.
    revised_at: float | None = None
    revised_from: str | None = None
    #: the master asked for this target to be killed; while it is still active the kill is
    #: pending (KILL_PENDING): re-sent until the agent reports (docs/rollout.md)
    kill_requested: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    name: str
    script: bytes
    targets_spec: list[str]  #: the selectors as submitted
    timeout: float
    parallel: int | str
    fail_rate: float | str | None
    fail_count: int
    on_abort: str
    env: dict[str, str]
    cwd: str | None
    output_cap: int | None
    delivery_timeout: float
    state: TaskState
    reason: str
    created_at: float
    finished_at: float | None
    counts: dict[str, int]  #: TargetState value -> number of targets in it
    target_count: int
    targets: list[Target] | None = None  #: filled by get_task(), None in listings
    #: when the task's state was last recomputed because a late report revised a target's
    #: verdict (see docs/rollout.md "Provisional verdicts"); None if never.
    revised_at: float | None = None
    #: its targets send their output live while it runs (docs/protocol.md ``output``)
    stream: bool = True
    #: its rollout plan in JSON form (docs/rollout.md "Plans"); None: no plan, one batch
    plan: list[dict[str, Any]] | None = None
    #: the plan's current step, numbered as the user wrote them (an implicit rest: one past the last)
    plan_step: int | None = None
    #: since when the plan waits at a pause (the task is PAUSED); None when not paused
    paused_at: float | None = None


#: Event kinds only a watcher of their one task receives (a live output chunk, its end):
#: the fleet-wide stream would carry every running script's output to every page.
TASK_ONLY_EVENTS = frozenset({"output", "output_end"})


@dataclass(frozen=True, slots=True)
class Event:
    """Something a watcher (web page, CLI, MQTT progress topic) wants to know."""

    kind: str  #: "task" (task state/counts changed), "target" (one target changed), "agent"
    task_id: str | None
    ts: float
    data: dict[str, Any]


class ServiceError(Exception):
    """Base of the errors the service raises at its boundary."""


class NotFound(ServiceError):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} not found")
        self.what = what
        self.ident = ident


class TaskEnded(ServiceError):
    """A kill of a task that had already ended (HTTP 409): nothing is left to kill."""

    def __init__(self, task_id: str, state: str) -> None:
        super().__init__(f"task {task_id} had already ended ({state}): nothing to kill")
        self.task_id = task_id
        self.state = state


class InvalidRequest(ServiceError):
    """A bad submission: ``field`` names the offending field (or selector)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class WrongState(InvalidRequest):
    """The task's state does not allow it (approve a task that is not paused): HTTP 409."""


class RequestConflict(InvalidRequest):
    """A ``request_id`` already names a task made from a different request (HTTP 409)."""

    def __init__(self, request_id: str, task_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was already used for a different request (task {task_id}); "
            "use a new request_id", field="request_id",
        )  # fmt: skip
        self.request_id = request_id
        self.task_id = task_id


class Service(Protocol):
    """What the HTTP API (and so the CLI and web page) calls. Every method must be called
    on the master's asyncio loop thread (aiohttp handlers are). Methods are synchronous
    and fast (in-memory state plus SQLite reads)."""

    def submit(self, spec: Any) -> Task:
        """``spec`` is a validated ``protocol.Submit``. Resolves selectors, stores the task,
        starts the rollout. Raises InvalidRequest (unknown selector, empty target set)."""

    def kill(self, task_id: str) -> Task: ...

    def approve(self, task_id: str, by: str) -> Task:
        """Let a paused plan go on. Raises NotFound, WrongState (not paused)."""

    def abort(self, task_id: str, by: str) -> Task:
        """Stop the task's rollout; it ends FAILED. Raises NotFound, WrongState (ended, killed or aborted)."""

    def agents(self, *, online: bool | None = None, label: str | None = None, hostname: str | None = None) -> list[Agent]:
        """``label`` is ``key=value``; ``hostname`` may be a glob."""

    def agent(self, agent_id: str) -> Agent: ...

    def resolve_targets(self, selectors: list[str]) -> list[Agent]:
        """The agents a task with these selectors would run on, as it would order them
        (nothing runs). Raises InvalidRequest (field ``targets``)."""
        ...

    def tasks(
        self, *, state: TaskState | None = None, limit: int = 50, offset: int = 0, id_prefix: str | None = None
    ) -> list[Task]:
        """Newest first, without targets; ``id_prefix``: only the ids that start with it."""

    def task(self, task_id: str, *, outputs: bool = True, targets: bool = True, tail: int | None = None) -> Task:
        """With targets (and their output unless ``outputs=False``, its last ``tail`` + 1 bytes
        with ``tail``); counts only without ``targets``."""

    def output(self, task_id: str, agent_id: str) -> Target: ...

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """``callback(Event)`` is called on the loop for every event; returns an
        unsubscribe function."""
