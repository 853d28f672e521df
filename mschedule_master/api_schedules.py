"""The HTTP routes of schedules (docs/schedules.md). Imported by :mod:`.api`, which adds
:data:`ROUTES` to its own (so this module imports ``api`` last, and uses its helpers as
``_api.x``); documented in ``openapi.py`` like every route. The master's
``service.schedules`` (a :class:`~.scheduler.Scheduler`) does the work.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .scheduler import MAX_PREVIEW, Scheduler
from .schedules import DEFAULT_VERSION, Misfire, Overlap, Schedule, ScheduleError, parse_job_ref
from .schedulestore import StoredSchedule

#: Longest listing of a schedule's records.
MAX_ROWS = 1000
#: Fields of a new schedule.
FIELDS = frozenset({"name", "job", "version", "cron", "tz", "overlap", "misfire", "paused", "overrides", "author"})


def schedules_of(request: web.Request) -> Scheduler:
    schedules: Scheduler | None = getattr(_api.service_of(request), "schedules", None)  # nor schedules
    if schedules is None:
        raise _api.ApiError(501, "this master keeps no schedules")
    return schedules


def schedule_json(st: StoredSchedule, scheduler: Scheduler) -> dict[str, Any]:
    s = st.schedule
    upcoming = [] if s.paused else scheduler.next_times(s.name, 1)
    return {
        "name": s.name, "job": s.job, "version": s.version, "cron": s.cron, "tz": s.tz, "overlap": str(s.overlap),
        "misfire": str(s.misfire), "paused": s.paused, "overrides": s.overrides, "since": st.since,
        "created_at": st.created_at, "created_by": st.created_by, "missed_earlier": st.missed_earlier,
        "next_fire": upcoming[0] if upcoming else None,
    }  # fmt: skip


def parse_schedule(body: dict[str, Any]) -> Schedule:
    """A schedule from the API's JSON; ScheduleError names the field at fault."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ScheduleError(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}", unknown[0])
    for key in ("name", "job", "cron"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ScheduleError(f"{key} is required (a string)", key)
    job, version = parse_job_ref(body["job"])
    if body.get("version") is not None:
        if version != DEFAULT_VERSION:
            raise ScheduleError("give the version in job (JOB@V) or in version, not both", "version")
        version = body["version"]
    return Schedule(
        name=body["name"], job=job, cron=body["cron"], tz=body.get("tz") or "UTC", version=version,
        overlap=Overlap.parse(body.get("overlap") or "skip"), misfire=Misfire.parse(body.get("misfire") or "run_once"),
        paused=body.get("paused", False), overrides=body.get("overrides") or {},
    )  # fmt: skip


# ------------------------------------------------------------------ handlers


async def list_schedules(request: web.Request) -> web.Response:
    scheduler = schedules_of(request)
    return _api.json_response({"schedules": [schedule_json(st, scheduler) for st in scheduler.list()]})


async def create_schedule(request: web.Request) -> web.Response:
    body = await _api.read_json(request)
    if not isinstance(body, dict):
        raise _api.ApiError(400, "send a JSON object", "body")
    try:
        schedule = parse_schedule(body)
    except ScheduleError as e:
        raise _api.ApiError(400, str(e), e.field) from None
    author = body.get("author")
    if author is not None and (not isinstance(author, str) or len(author) > 200):
        raise _api.ApiError(400, "author must be a string of at most 200 characters", "author")
    scheduler = schedules_of(request)
    stored = scheduler.add(schedule, created_by=author or f"http:{request.remote}")
    headers = {"Location": f"/api/v1/schedules/{schedule.name}"}
    return _api.json_response(schedule_json(stored, scheduler), status=201, headers=headers)


async def get_schedule(request: web.Request) -> web.Response:
    """The schedule, its next 5 fire times, its last 20 records and the count of each outcome."""
    scheduler = schedules_of(request)
    name = request.match_info["name"]
    doc = schedule_json(scheduler.get(name), scheduler)
    doc["next"] = scheduler.next_times(name, 5)
    doc["runs"] = scheduler.runs(name, 20)
    doc["counts"] = scheduler.store.outcome_counts(name)
    return _api.json_response(doc)


async def pause_schedule(request: web.Request) -> web.Response:
    scheduler = schedules_of(request)
    return _api.json_response(schedule_json(scheduler.pause(request.match_info["name"]), scheduler))


async def resume_schedule(request: web.Request) -> web.Response:
    scheduler = schedules_of(request)
    return _api.json_response(schedule_json(scheduler.resume(request.match_info["name"]), scheduler))


async def delete_schedule(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    schedules_of(request).remove(name)
    return _api.json_response({"name": name, "removed": True})


async def next_times(request: web.Request) -> web.Response:
    n = _api.query_int(request, "n", 10, 1, MAX_PREVIEW)
    name = request.match_info["name"]
    return _api.json_response({"name": name, "next": schedules_of(request).next_times(name, n)})


async def schedule_runs(request: web.Request) -> web.Response:
    limit = _api.query_int(request, "limit", 20, 1, MAX_ROWS)
    name = request.match_info["name"]
    return _api.json_response({"name": name, "runs": schedules_of(request).runs(name, limit)})


#: (method, path, handler): api.py serves them as its own routes.
ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/api/v1/schedules", list_schedules),
    ("POST", "/api/v1/schedules", create_schedule),
    ("GET", "/api/v1/schedules/{name}", get_schedule),
    ("DELETE", "/api/v1/schedules/{name}", delete_schedule),
    ("POST", "/api/v1/schedules/{name}/pause", pause_schedule),
    ("POST", "/api/v1/schedules/{name}/resume", resume_schedule),
    ("GET", "/api/v1/schedules/{name}/next", next_times),
    ("GET", "/api/v1/schedules/{name}/runs", schedule_runs),
)

from . import api as _api  # noqa: E402  (last: api.py imports this module from its own body)
