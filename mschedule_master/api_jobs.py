"""The HTTP routes of jobs (saved scripts with immutable versions), re-runs and agents'
histories. Imported by :mod:`.api`, which adds :data:`ROUTES` to its own (so this module
imports ``api`` last, and uses its helpers as ``_api.x``); documented in
``openapi.py`` like every route. The master's ``service.jobs`` (a
:class:`~.jobservice.JobService`) does the work.
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from .jobs import JobSummary, Version
from .jobservice import JobService

#: Longest runs/history listing.
MAX_ROWS = 1000


def jobs_of(request: web.Request) -> JobService:
    jobs: JobService | None = getattr(_api.service_of(request), "jobs", None)  # not every Service keeps jobs
    if jobs is None:
        raise _api.ApiError(501, "this master keeps no jobs")
    return jobs


def summary_json(s: JobSummary) -> dict[str, Any]:
    return {
        "name": s.name, "description": s.description, "latest": s.latest, "default_version": s.effective_default,
        "pinned": s.default_version is not None, "updated_at": s.updated_at, "author": s.author,
    }  # fmt: skip


def version_json(v: Version, *, with_script: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "job": v.job, "version": v.version, "description": v.content.description, "defaults": v.content.defaults,
        "content_sha256": v.content_sha256, "script_sha256": v.script_sha256, "author": v.author,
        "message": v.message, "created_at": v.created_at,
    }  # fmt: skip
    if with_script:
        try:
            doc["script"], doc["script_encoding"] = v.content.script.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            doc["script"], doc["script_encoding"] = base64.b64encode(v.content.script).decode("ascii"), "base64"
    return doc


def task_links(service: Any, task_id: str) -> dict[str, Any]:
    """The job fields of a task's JSON: what it ran, and what each agent reported running."""
    jobs = getattr(service, "jobs", None)
    link = jobs.task_link(task_id) if jobs is not None else None
    if link is None:
        return {}
    return {
        "job": link.job, "job_version": link.job_version, "script_sha256": link.script_sha256,
        "rerun_of": link.rerun_of, "submitted_by": link.submitted_by, "reported_sha256": link.reported,
    }  # fmt: skip


#: The largest version number (SQLite's integers are 64-bit; no job gets near this).
MAX_VERSION = 2**31 - 1


def _version_param(request: web.Request, raw: str | None, name: str = "version") -> int | None:
    """An integer version, or None for ``default`` / absent."""
    if raw is None or raw in ("", "default"):
        return None
    if raw == "latest":
        return jobs_of(request).summary(request.match_info["name"]).latest
    if not (raw.isascii() and raw.isdigit() and raw[0] != "0"):  # int() also takes " 1", "+1", "1_0"
        raise _api.ApiError(400, f"{name} must be a version number, 'latest' or 'default'", name)
    value = int(raw)
    if not 1 <= value <= MAX_VERSION:
        raise _api.ApiError(400, f"{name} must be between 1 and {MAX_VERSION}", name)
    return value


def _author(request: web.Request, body: dict[str, Any]) -> str:
    author = body.get("author")
    if author is not None and (not isinstance(author, str) or len(author) > 200 or "\x00" in author):
        raise _api.ApiError(400, "author must be a string of at most 200 characters", "author")
    return author or f"http:{request.remote}"


async def _object(request: web.Request) -> dict[str, Any]:
    body = await _api.read_json(request)
    if not isinstance(body, dict):
        raise _api.ApiError(400, "send a JSON object", "body")
    return body


# ------------------------------------------------------------------ handlers


async def list_jobs(request: web.Request) -> web.Response:
    return _api.json_response({"jobs": [summary_json(s) for s in jobs_of(request).list()]})


async def get_job(request: web.Request) -> web.Response:
    """The job and its versions (newest first, without scripts): its history."""
    jobs = jobs_of(request)
    name = request.match_info["name"]
    doc = summary_json(jobs.summary(name))
    doc["versions"] = [version_json(v, with_script=False) for v in jobs.versions(name)]
    return _api.json_response(doc)


async def save_version(request: web.Request) -> web.Response:
    body = await _object(request)
    unknown = sorted(set(body) - {"script", "script_text", "description", "defaults", "author", "message"})
    if unknown:
        raise _api.ApiError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    script = _script(body)
    for key in ("description", "message"):
        if not isinstance(body.get(key, ""), str):
            raise _api.ApiError(400, f"{key} must be a string", key)
    if not isinstance(body.get("defaults", {}), dict | None):
        raise _api.ApiError(400, "defaults must be an object (or null)", "defaults")
    version, created = jobs_of(request).save(
        request.match_info["name"], script, description=body.get("description", ""),
        defaults=body.get("defaults") or {}, author=_author(request, body), message=body.get("message", ""),
    )  # fmt: skip
    doc = {**version_json(version, with_script=False), "created": created}
    return _api.json_response(doc, status=201 if created else 200)


def _script(body: dict[str, Any]) -> bytes:
    script, text = body.get("script"), body.get("script_text")
    if (script is None) == (text is None):
        raise _api.ApiError(400, "give exactly one of script (base64) and script_text", "script")
    if text is not None:
        if not isinstance(text, str):
            raise _api.ApiError(400, "script_text must be a string", "script_text")
        return text.encode()
    if not isinstance(script, str):
        raise _api.ApiError(400, "script must be base64 text", "script")
    try:
        return base64.b64decode(script.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise _api.ApiError(400, "script is not valid base64", "script") from None


async def get_version(request: web.Request) -> web.Response:
    version = _version_param(request, request.match_info["version"])
    return _api.json_response(version_json(jobs_of(request).get(request.match_info["name"], version)))


async def diff_versions(request: web.Request) -> web.Response:
    jobs = jobs_of(request)
    name = request.match_info["name"]
    a = _version_param(request, request.query.get("from"), "from")
    b = _version_param(request, request.query.get("to"), "to")
    if a is None or b is None:
        latest = jobs.summary(name).latest
        b = b or latest
        a = a or max(1, b - 1)
    return _api.json_response({"job": name, "from": a, "to": b, "diff": jobs.diff(name, a, b)})


async def set_default(request: web.Request) -> web.Response:
    body = await _object(request)
    raw = body.get("version")
    if raw is not None and (not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_VERSION):
        raise _api.ApiError(400, "version must be a version number >= 1, or null for the latest", "version")
    return _api.json_response(summary_json(jobs_of(request).set_default(request.match_info["name"], raw)))


async def run_job(request: web.Request) -> web.Response:
    body = await _object(request)
    overrides = {k: v for k, v in body.items() if k not in ("version", "request_id", "author")}
    version = _version_param(request, None if body.get("version") is None else str(body["version"]))
    request_id = body.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise _api.ApiError(400, "request_id must be a string", "request_id")
    service = _api.service_of(request)
    task, _ = jobs_of(request).run(
        request.match_info["name"], version, overrides, request_id=request_id, submitted_by=_author(request, body)
    )
    _api.audit(request, f"started from job {request.match_info['name']}", task)
    return _task_created(service, task)


async def job_runs(request: web.Request) -> web.Response:
    limit = _api.query_int(request, "limit", 100, 1, MAX_ROWS)
    name = request.match_info["name"]
    return _api.json_response({"job": name, "runs": jobs_of(request).runs(name, limit)})


async def footprint(request: web.Request) -> web.Response:
    """Where a version's last run on each agent succeeded or failed."""
    name = request.match_info["name"]
    version = _version_param(request, request.match_info["version"])
    jobs = jobs_of(request)
    if version is None:
        version = jobs.summary(name).effective_default
    agents = jobs.footprint(name, version)
    succeeded = sorted(a for a, r in agents.items() if r["state"] == "SUCCEED")
    failed = sorted(a for a, r in agents.items() if r["state"] not in ("SUCCEED", "WAITING", "DISPATCHED", "RUNNING"))
    doc = {"job": name, "version": version, "agents": agents, "succeeded": succeeded, "failed": failed}
    return _api.json_response(doc)


async def agent_history(request: web.Request) -> web.Response:
    agent_id = request.match_info["agent_id"]
    limit = _api.query_int(request, "limit", 100, 1, MAX_ROWS)
    return _api.json_response({"agent_id": agent_id, "history": jobs_of(request).agent_history(agent_id, limit)})


async def rerun_task(request: web.Request) -> web.Response:
    body = await _object(request)
    failed = body.get("failed", False)
    if not isinstance(failed, bool):
        raise _api.ApiError(400, "failed must be true or false", "failed")
    service = _api.service_of(request)
    task_id = request.match_info["task_id"]
    task, _ = jobs_of(request).rerun(task_id, failed_only=failed, submitted_by=_author(request, body))
    _api.audit(request, f"re-run of {request.match_info['task_id']}", task)
    return _task_created(service, task)


def _task_created(service: Any, task: Any) -> web.Response:
    doc = {**_api.task_json(_api.with_hostnames(service, task)), **task_links(service, task.id)}
    return _api.json_response(doc, status=201, headers={"Location": f"/api/v1/tasks/{task.id}"})


#: (method, path, handler): api.py serves them as its own routes.
ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/api/v1/jobs", list_jobs),
    ("GET", "/api/v1/jobs/{name}", get_job),
    ("POST", "/api/v1/jobs/{name}/versions", save_version),
    ("GET", "/api/v1/jobs/{name}/versions/{version}", get_version),
    ("GET", "/api/v1/jobs/{name}/versions/{version}/footprint", footprint),
    ("GET", "/api/v1/jobs/{name}/diff", diff_versions),
    ("POST", "/api/v1/jobs/{name}/default", set_default),
    ("POST", "/api/v1/jobs/{name}/run", run_job),
    ("GET", "/api/v1/jobs/{name}/runs", job_runs),
    ("GET", "/api/v1/agents/{agent_id}/history", agent_history),
    ("POST", "/api/v1/tasks/{task_id}/rerun", rerun_task),
)

from . import api as _api  # noqa: E402  (last: api.py imports this module from its own body)
