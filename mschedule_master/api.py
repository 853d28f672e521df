"""The master's HTTP API and web page (aiohttp), on the master's asyncio loop.

The daemon calls ``runner = await start_http(service, host, port, token=token)`` and
``await runner.cleanup()`` at shutdown; tests use :func:`create_app`. Every route is
listed in :data:`ROUTES` and documented in ``openapi.py`` (a test keeps them equal).

JSON in and out. Errors are ``{"error": message, "field": name-or-null}`` with a 4xx
status; bad input never produces a 500. With tokens configured, every API route
needs ``Authorization: Bearer <token>``, and the token's role must allow the route
(roles.py: viewer reads, operator runs and kills, admin changes jobs and schedules);
the page itself (static files) does not.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from mschedule_agent import protocol
from mschedule_agent.protocol import MAX_SCRIPT_BYTES, DecodeError

from . import follow, followmarks, openapi, plan, probes, roles, sse
from .audit import ACTOR, AuditUnavailable
from .coalesce import Coalescer
from .models import Agent, InvalidRequest, NotFound, RequestConflict, Service, Target, Task, TaskEnded, WrongState
from .rollout import Limits
from .states import TargetState, TaskState

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"

#: Largest request body: a maximal script as base64 plus room for the other fields.
MAX_BODY_BYTES = MAX_SCRIPT_BYTES * 4 // 3 + 64 * 1024

#: Page size of GET /api/v1/tasks when none is asked for, and the largest allowed.
DEFAULT_PAGE = 50
MAX_PAGE = 500

SERVICE_KEY = sse.SERVICE_KEY
TOKENS_KEY = web.AppKey("tokens", roles.Tokens)
COALESCE_KEY = web.AppKey("coalesce", Coalescer)


class InsecureBind(ValueError):
    """The API would listen beyond loopback without a token."""


class ApiError(Exception):
    """A 4xx answer: ``{"error": message, "field": field}``."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


# ------------------------------------------------------------------ rendering


def encode_output(data: bytes) -> tuple[str, str]:
    """``(text, encoding)``: the bytes as UTF-8 text when they decode, else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def agent_json(a: Agent) -> dict[str, Any]:
    return {
        "id": a.id,
        "hostname": a.hostname,
        "ip": list(a.ip),
        "labels": dict(a.labels),
        "version": a.version,
        "capacity": a.capacity,
        "online": a.online,
        "dc": a.dc,
        "started_at": a.started_at,
        "last_seen": a.last_seen,
        "last_heartbeat": a.last_heartbeat,
        "heartbeat_interval": a.heartbeat_interval,
        "running": list(a.running),
    }


def clip(data: bytes, limit: int | None) -> tuple[bytes, bool]:
    """The last ``limit`` bytes (the end of a script's output says most), without a
    split UTF-8 character at the cut; and whether anything was cut."""
    if limit is None or len(data) <= limit:
        return data, False
    tail = data[len(data) - limit :] if limit else b""
    for _ in range(3):
        if tail and 0x80 <= tail[0] <= 0xBF:
            tail = tail[1:]
    return tail, True


def target_json(t: Target, *, max_output: int | None = None, outputs: bool = True) -> dict[str, Any]:
    """One target; ``max_output`` keeps only the last N bytes of each stream
    (``output_clipped``/``stderr_clipped`` say so; the output route has it all).
    ``outputs=False``: the streams were not read; empty and "clipped" when there was any."""
    if outputs:
        stdout, out_clipped = clip(t.stdout, max_output)
        stderr, err_clipped = clip(t.stderr, max_output)
    else:
        stdout, out_clipped, stderr, err_clipped = b"", t.stdout_bytes > 0, b"", t.stderr_bytes > 0
    out, out_enc = encode_output(stdout)
    err, err_enc = encode_output(stderr)
    duration = None
    if t.started_at is not None and t.finished_at is not None:
        duration = max(0.0, t.finished_at - t.started_at)
    return {
        "agent_id": t.agent_id,
        "hostname": t.hostname,
        "state": _value(t.state),
        "acked": t.acked,
        "code": t.code,
        "signal": t.signal,
        "reason": t.reason,
        "agent_state": t.agent_state,
        "error": t.error,
        "revised_at": t.revised_at,
        "revised_from": t.revised_from,
        "kill_pending": bool(t.kill_requested) and not TargetState(_value(t.state)).final,
        "dispatched_at": t.dispatched_at,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "duration": duration,
        "output": out,
        "output_encoding": out_enc,
        "output_bytes": t.stdout_bytes,
        "output_truncated": t.stdout_truncated,
        "output_clipped": out_clipped,
        "stderr": err,
        "stderr_encoding": err_enc,
        "stderr_bytes": t.stderr_bytes,
        "stderr_truncated": t.stderr_truncated,
        "stderr_clipped": err_clipped,
    }


def task_json(
    t: Task, *, with_script: bool = True, max_output: int | None = None, outputs: bool = True
) -> dict[str, Any]:
    """The task; listings leave out the script (up to 4 MiB each)."""
    doc: dict[str, Any] = {
        "id": t.id,
        "name": t.name,
        "state": _value(t.state),
        "reason": t.reason,
        "created_at": t.created_at,
        "finished_at": t.finished_at,
        "revised_at": t.revised_at,
        "targets_spec": list(t.targets_spec),
        "timeout": t.timeout,
        "parallel": t.parallel,
        "fail_rate": t.fail_rate,
        "fail_count": t.fail_count,
        "on_abort": t.on_abort,
        "env": dict(t.env),
        "cwd": t.cwd,
        "output_cap": t.output_cap,
        "stream": t.stream,
        "delivery_timeout": t.delivery_timeout,
        "counts": dict(t.counts),
        "target_count": t.target_count,
        "plan": t.plan,
        "plan_step": t.plan_step,
        "paused_at": t.paused_at,
    }
    if t.plan is not None:
        doc["plan_stages"] = plan_stages(t)
    if with_script:
        doc["script"], doc["script_encoding"] = encode_output(t.script)
    if t.targets is not None:
        doc["targets"] = {x.agent_id: target_json(x, max_output=max_output, outputs=outputs) for x in t.targets}
    return doc


def _value(state: Any) -> str:
    return state.value if hasattr(state, "value") else str(state)


def dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def json_response(doc: Any, status: int = 200, **kw: Any) -> web.Response:
    return web.json_response(doc, status=status, dumps=dumps, **kw)


# ------------------------------------------------------------------ request helpers


async def read_json(request: web.Request) -> Any:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body exceeds {MAX_BODY_BYTES} bytes", "body") from None
    if not body.strip():
        raise ApiError(400, "request body is empty; send a JSON object", "body")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON: {e}", "body") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply", "body") from None


def parse_submit(body: Any) -> protocol.Submit:
    try:
        spec = protocol.from_payload(protocol.Submit, body)
    except DecodeError as e:
        raise ApiError(400, _strip_prefix(e.message, e.field), e.field or None) from None
    if spec.version is not None and not 1 <= spec.version <= api_jobs.MAX_VERSION:
        raise ApiError(400, f"version must be between 1 and {api_jobs.MAX_VERSION}", "version")
    return spec


def _strip_prefix(message: str, field: str | None = None) -> str:
    """The decoder's message for a person: ``parallel must be ...``, not ``invalid submit:
    parallel: parallel must be ...`` (the field is in ``field`` and, once, in the words)."""
    message = message.removeprefix("invalid submit: ")
    head = f"{field}: "
    if field and message.startswith(head) and field in message[len(head) :]:
        message = message[len(head) :]
    return message


#: The spellings of a boolean query parameter (openapi.QUERY_BOOL lists the same).
TRUE_WORDS = ("true", "True", "1", "yes")
FALSE_WORDS = ("false", "False", "0", "no")


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ApiError(400, f"{name} must be true or false", name)


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    digits = raw.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):  # int() also takes " 5", "+5", "5_0"
        raise ApiError(400, f"{name} must be an integer", name)
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}", name)
    return value


def service_of(request: web.Request) -> Service:
    return request.app[SERVICE_KEY]


# ------------------------------------------------------------------ handlers


async def legacy_targets(request: web.Request) -> web.Response:
    """The design document's route: every registered agent id."""
    return json_response([a.id for a in service_of(request).agents()])


async def legacy_submit(request: web.Request) -> web.Response:
    """The design document's route: the task JSON in, 201 with the task id as text."""
    spec = parse_submit(await read_json(request))
    task = service_of(request).submit(spec)
    audit(request, "submitted", task)
    return web.Response(text=task.id, status=201, headers={"Location": f"/api/v1/tasks/{task.id}"})


async def list_agents(request: web.Request) -> web.Response:
    online = query_bool(request, "online")
    label = request.query.get("label") or None
    if label is not None and "=" not in label:
        raise ApiError(400, "label must be key=value", "label")
    hostname = request.query.get("hostname") or None
    agents = service_of(request).agents(online=online, label=label, hostname=hostname)
    return json_response({"agents": [agent_json(a) for a in agents]})


async def get_agent(request: web.Request) -> web.Response:
    return json_response(agent_json(service_of(request).agent(request.match_info["agent_id"])))


async def resolve_targets(request: web.Request) -> web.Response:
    """Which agents ``targets`` select now, as a task would run on them; nothing runs."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "send a JSON object: {\"targets\": [selectors]}", "body")
    unknown = sorted(set(body) - {"targets"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}", unknown[0])
    targets = body.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        raise ApiError(400, "targets must be a non-empty list of selectors", "targets")
    agents = service_of(request).resolve_targets(targets)
    return json_response({"targets": targets, "count": len(agents), "agents": [agent_json(a) for a in agents]})


async def submit_task(request: web.Request) -> web.Response:
    spec = parse_submit(await read_json(request))
    task = service_of(request).submit(spec)
    audit(request, "submitted", task)
    return json_response(task_json(task), status=201, headers={"Location": f"/api/v1/tasks/{task.id}"})


async def list_tasks(request: web.Request) -> web.Response:
    raw_state = request.query.get("state")
    state = None
    if raw_state is not None:
        try:
            state = TaskState(raw_state.upper() if raw_state.islower() else raw_state)
        except ValueError:
            names = ", ".join(s.value for s in TaskState)
            raise ApiError(400, f"state must be one of {names}", "state") from None
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    offset = query_int(request, "offset", 0, 0, 10**9)
    id_prefix = request.query.get("id_prefix") or None
    tasks = await read(service_of(request), "tasks", state=state, limit=limit, offset=offset, id_prefix=id_prefix)
    next_offset = offset + len(tasks) if len(tasks) == limit else None
    docs = [task_json(t, with_script=False) for t in tasks]
    return json_response({"tasks": docs, "limit": limit, "offset": offset, "next_offset": next_offset})


async def get_task(request: web.Request) -> web.Response:
    """The task with its targets' states; their stdout and stderr only when asked for
    (``outputs=1``, or ``max_output=N`` with N > 0): a poll reads no output bytes.
    ``targets=0``: the task and its counts only (the CLI's progress poll)."""
    service = service_of(request)
    max_output = query_int(request, "max_output", -1, 0, 2**40)
    outputs = query_bool(request, "outputs")
    if outputs is None:
        outputs = max_output > 0
    kw: dict[str, Any] = {"outputs": outputs, "tail": max_output if outputs and max_output >= 0 else None}
    if query_bool(request, "targets") is False:
        kw = {"outputs": False, "targets": False}
    task_id, limit = request.match_info["task_id"], None if max_output < 0 else max_output

    async def answer() -> str:
        task = await read(service, "task", task_id, **kw)
        task = with_hostnames(service, task)  # on the loop: the registry lives there
        links = api_jobs.task_links(service, task.id)  # on the loop: so does the store's connection
        links.update(plan_history(service, task))
        links.update(delivery_of(service, task.id))  # on the loop: flow control's queue lives there
        return await render(service, lambda: dumps({**task_json(task, max_output=limit, outputs=outputs), **links}))

    query = (tuple(sorted(kw.items())), limit, outputs)
    return web.json_response(text=await request.app[COALESCE_KEY].get(task_id, query, answer))


def delivery_of(service: Service, task_id: str) -> dict[str, Any]:
    """``{"delivery": ...}`` while the task runs on this master (engine.py ``delivery``)."""
    engine = getattr(service, "engine", None)
    delivery = engine.delivery(task_id) if engine is not None and getattr(engine, "driving", False) else None
    return {} if delivery is None else {"delivery": delivery}


async def render(service: Service, fn: Callable[[], str]) -> str:
    """``fn()`` in a reader thread when the service offers one: 2,000 targets' JSON is
    tens of milliseconds the loop would otherwise not ingest MQTT for."""
    off_loop = getattr(service, "render_off_loop", None)
    return await off_loop(fn) if off_loop is not None else fn()


async def read(service: Service, name: str, *args: Any, **kw: Any) -> Any:
    """``service.<name>(...)``, in a reader thread when the service offers one."""
    off_loop = getattr(service, "read_off_loop", None)
    if off_loop is not None:
        return await off_loop(name, *args, **kw)
    return getattr(service, name)(*args, **kw)


def with_hostnames(service: Service, task: Task) -> Task:
    """Fill in the targets' hostnames the store did not record, from the registry."""
    if not task.targets or all(t.hostname for t in task.targets):
        return task
    names = {a.id: a.hostname for a in service.agents()}
    targets = [t if t.hostname else replace(t, hostname=names.get(t.agent_id)) for t in task.targets]
    return replace(task, targets=targets)


async def get_output(request: web.Request) -> web.StreamResponse:
    stream = request.query.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ApiError(400, "stream must be stdout or stderr", "stream")
    offset = query_int(request, "offset", -1, 0, 2**62)  # bytes of the stream the follower has already
    if query_bool(request, "follow"):  # tail -f: chunked, until the target ends (follow.py)
        service, match = service_of(request), request.match_info
        try:
            holes = followmarks.parse_holes(request.query.get("holes", ""), max(offset, 0))
        except ValueError as e:
            raise ApiError(400, str(e), "holes") from None
        return await follow.follow_output(request, service, match["task_id"], match["agent_id"], stream, max(offset, 0),
                                          holes)  # fmt: skip
    for name in ("offset", "holes"):
        if name in request.query:
            raise ApiError(400, f"{name} resumes a follow: give it with follow=1", name)
    target = await read(service_of(request), "output", request.match_info["task_id"], request.match_info["agent_id"])
    data = target.stdout if stream == "stdout" else target.stderr
    truncated = target.stdout_truncated if stream == "stdout" else target.stderr_truncated
    total = target.stdout_bytes if stream == "stdout" else target.stderr_bytes
    headers = {
        "X-Mschedule-State": _value(target.state),
        "X-Mschedule-Truncated": "true" if truncated else "false",
        "X-Mschedule-Total-Bytes": str(total),
    }
    if not follow.ended(target):  # no result yet: what it has written so far, from its live output
        data = await follow.so_far(service_of(request), target.task_id, target.agent_id, stream)
        headers["X-Mschedule-Live"] = "true"
    if target.code is not None:
        headers["X-Mschedule-Exit-Code"] = str(target.code)
    return web.Response(body=data, content_type="application/octet-stream", headers=headers)


async def approve_task(request: web.Request) -> web.Response:
    """Let a paused plan go on; body (optional): ``{"by": "who"}``."""
    service = service_of(request)
    by = await _who(request)
    task = service.approve(request.match_info["task_id"], by)
    audit(request, f"approved by {by}", task)
    return json_response(task_json(with_hostnames(service, task), with_script=False))


async def abort_task(request: web.Request) -> web.Response:
    """Stop the task's rollout (it ends FAILED); body (optional): ``{"by": "who"}``."""
    service = service_of(request)
    by = await _who(request)
    task = service.abort(request.match_info["task_id"], by)
    audit(request, f"aborted by {by}", task)
    return json_response(task_json(with_hostnames(service, task), with_script=False), status=202)


async def _who(request: web.Request) -> str:
    """Who: the token's name when a named token was used (a body's ``by`` is kept beside it),
    else ``by`` from an optional JSON body, else ``http:<client address>``."""
    body = await read_json(request) if request.body_exists else {}
    if not isinstance(body, dict):
        raise ApiError(400, "send a JSON object (or no body)", "body")
    unknown = sorted(set(body) - {"by"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    by = body.get("by")
    if by is not None and (not isinstance(by, str) or len(by) > 200 or "\x00" in by):
        raise ApiError(400, "by must be a string of at most 200 characters", "by")
    actor = ACTOR.get()
    if not actor.startswith(("http:", "mqtt")):  # a named token: who approves is who holds it
        return actor if by in (None, actor) else f"{actor} (for {by})"
    return by or f"http:{request.remote}"


def plan_history(service: Service, t: Task) -> dict[str, Any]:
    """Who approved a plan's pauses and when, and who aborted the task (its events)."""
    store = getattr(service, "store", None)
    if store is None:
        return {}
    out: dict[str, Any] = {}
    if t.plan is not None:
        out["approvals"] = [
            {"by": e["data"].get("by"), "at": e["ts"], "step": e["data"].get("step")}
            for e in sorted(store.events(t.id, kind="approved"), key=lambda e: e["ts"])
        ]
    aborts = store.events(t.id, kind="abort", limit=1)
    if aborts:
        out["aborted_by"] = {"by": aborts[0]["data"].get("by"), "at": aborts[0]["ts"]}
    return out


def plan_stages(t: Task) -> list[dict[str, Any]]:
    """The task's plan as steps resolved against its targets (what the page and CLI show)."""
    assert t.plan is not None
    stages = plan.parse(t.plan).resolve(t.target_count, Limits(parallel=t.parallel).window(t.target_count))
    return [
        {"step": s.number, "pause": s.step.seconds if isinstance(s.step, plan.Pause) else None,
         "kind": "pause" if s.is_pause else "batch", "targets": s.size, "parallel": None if s.is_pause else s.window,
         "current": s.number == t.plan_step}
        for s in stages
    ]  # fmt: skip


async def kill_task(request: web.Request) -> web.Response:
    service = service_of(request)
    task = service.kill(request.match_info["task_id"])
    audit(request, "kill requested", task)
    return json_response(task_json(with_hostnames(service, task)), status=202)


def audit(request: web.Request, what: str, task: Task) -> None:
    """Who started or killed what: this API runs code on the fleet."""
    log.info(
        "task %s %s over HTTP from %s (%s targets: %s)", task.id, what, request.remote, task.target_count,
        " ".join(task.targets_spec), extra={"task_id": task.id},
    )  # fmt: skip


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(openapi.document(secured=_secured(request.app)))


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    auth: bool = True  #: needs the bearer token when one is configured


ROUTES: tuple[Route, ...] = (
    Route("GET", "/task/targets", legacy_targets),
    Route("POST", "/task", legacy_submit),
    Route("GET", "/api/v1/agents", list_agents),
    Route("GET", "/api/v1/agents/{agent_id}", get_agent),
    Route("POST", "/api/v1/targets/resolve", resolve_targets),
    Route("POST", "/api/v1/tasks", submit_task),
    Route("GET", "/api/v1/tasks", list_tasks),
    Route("GET", "/api/v1/tasks/{task_id}", get_task),
    Route("GET", "/api/v1/tasks/{task_id}/targets/{agent_id}/output", get_output),
    Route("POST", "/api/v1/tasks/{task_id}/kill", kill_task),
    Route("POST", "/api/v1/tasks/{task_id}/approve", approve_task),
    Route("POST", "/api/v1/tasks/{task_id}/abort", abort_task),
    Route("GET", "/api/v1/events", sse.events),
    Route("GET", "/api/v1/openapi.json", get_openapi, auth=False),
    Route("GET", "/", index, auth=False),
    Route("GET", "/healthz", probes.healthz, auth=False),
    Route("GET", "/readyz", probes.readyz, auth=False),
    Route("GET", "/metrics", probes.metrics),
)

from . import api_jobs  # noqa: E402  (its handlers use the helpers above)

ROUTES += tuple(Route(method, path, handler) for method, path, handler in api_jobs.ROUTES)

from . import api_schedules  # noqa: E402  (its handlers use the helpers above)

ROUTES += tuple(Route(method, path, handler) for method, path, handler in api_schedules.ROUTES)

from . import api_security  # noqa: E402  (its handlers use the helpers above)

ROUTES += tuple(Route(method, path, handler) for method, path, handler in api_security.ROUTES)


# ------------------------------------------------------------------ middleware


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return json_response({"error": message, "field": field}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, e.message, e.field)
    except NotFound as e:
        return _error(404, str(e), e.what)
    except (RequestConflict, WrongState) as e:
        return _error(409, str(e), e.field)
    except TaskEnded as e:
        return _error(409, str(e), "task")
    except InvalidRequest as e:
        return _error(400, str(e), e.field)
    except AuditUnavailable as e:  # what could not be recorded was not done
        return _error(503, str(e), "audit")
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body exceeds {MAX_BODY_BYTES} bytes", "body")
    except web.HTTPMethodNotAllowed as e:
        return json_response(
            {"error": f"{e.method} is not allowed here", "field": "method"}, status=405,
            headers={"Allow": ", ".join(sorted(e.allowed_methods))},
        )  # fmt: skip
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason)
        raise
    except Exception:
        log.error("unhandled error in %s %s", request.method, request.path, exc_info=True)
        return _error(500, "internal error (see the master's log)")


def _secured(app: web.Application) -> bool:
    return TOKENS_KEY in app and bool(app[TOKENS_KEY])


def route_template(request: web.Request) -> str:
    """``/api/v1/tasks/{task_id}/kill``: the route a request matched (its path when none)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is asking (the token's name, for the audit trail) and whether its role may."""
    tokens = request.app.get(TOKENS_KEY)
    if not _needs_auth(request):
        return await handler(request)
    if not tokens:  # loopback only (check_bind, browser guard): whoever can reach it is admin
        reset = ACTOR.set(f"http:{request.remote}")
    else:
        token = tokens.match(_bearer(request))
        if token is None:
            return json_response(
                {"error": "missing or wrong bearer token", "field": "Authorization"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="mschedule"'},
            )
        template = route_template(request)
        if not roles.allows(token.role, request.method, template):
            need = roles.required_role(request.method, template)
            message = f"token {token.name!r} has role {token.role}; {request.method} {template} needs {need}"
            return json_response({"error": message, "field": "Authorization"}, status=403)
        reset = ACTOR.set(token.name)
    try:
        return await handler(request)
    finally:
        ACTOR.reset(reset)


@web.middleware
async def browser_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep other web sites from driving this API through the user's browser.

    A POST must be JSON (a cross-site form or ``no-cors`` fetch cannot send that without
    a CORS preflight, which this server never grants). Without a token, also refuse a
    cross-origin ``Origin`` and a ``Host`` that is not loopback (DNS rebinding): on a
    loopback master without a token, the browser is the only way in from outside.
    """
    if not _needs_auth(request):
        return await handler(request)
    if request.method == "POST" and request.content_type != "application/json" and not _bodiless(request):
        raise ApiError(415, "send the request body as JSON (Content-Type: application/json)", "Content-Type")
    if not _secured(request.app):
        if not is_loopback(_hostname(request.host)):
            raise ApiError(403, f"Host {request.host!r} is not a loopback name; set a token to serve it", "Host")
        origin = request.headers.get("Origin")
        if origin is not None and request.method != "GET" and urlsplit(origin).netloc != request.host:
            raise ApiError(403, f"cross-origin request from {origin} refused", "Origin")
    return await handler(request)


def _bodiless(request: web.Request) -> bool:
    """No body and no Content-Type (``POST .../kill`` as curl -X POST sends it): what a browser
    form cannot send (it always has a Content-Type), and a cross-site fetch has an Origin."""
    return not request.body_exists and "Content-Type" not in request.headers


def _hostname(host: str) -> str:
    """``127.0.0.1:9900`` -> ``127.0.0.1``; ``[::1]:9900`` -> ``::1``."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


_PUBLIC = frozenset(r.handler for r in ROUTES if not r.auth)


def _needs_auth(request: web.Request) -> bool:
    """Everything but the page, its static files and the OpenAPI document."""
    if request.match_info.handler in _PUBLIC:
        return False
    return not request.path.startswith("/static/")


def _bearer(request: web.Request) -> str:
    """The bearer token the request carries ("" when none)."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


# ------------------------------------------------------------------ app


def create_app(
    service: Service, *, token: str | None = None, tokens: roles.Tokens | None = None, ops: probes.Ops | None = None
) -> web.Application:
    """``token``: one admin token (named "token"); ``tokens``: tokens with roles (roles.py)."""
    middlewares = [errors_middleware, auth_middleware, browser_guard_middleware]
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    app[SERVICE_KEY] = service
    every = roles.Tokens([*(tokens.tokens() if tokens else []), *roles.parse({}, token).tokens()])
    if every:
        app[TOKENS_KEY] = every
    if ops is not None:
        app[probes.OPS_KEY] = ops
    app[COALESCE_KEY] = Coalescer(service.subscribe)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    app.router.add_static("/static/", WEB_DIR, append_version=False)
    sse.setup(app)
    follow.setup(app)
    return app


def is_loopback(host: str) -> bool:
    """A loopback address, ``localhost`` or a ``*.localhost`` name (RFC 6761)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerLog:
    """aiohttp's server logger, but a request it cannot parse (a NUL byte in a header, a bad
    request line) is one warning line: a client's mistake, not the master's, so no traceback."""

    def __init__(self, inner: logging.Logger) -> None:
        self.inner = inner

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            first = (str(exc_info.message).strip().splitlines() or ["?"])[0]
            peer = args[0] if args else "?"
            log.warning("malformed HTTP request from %s answered %s: %s", peer, exc_info.code, first)
            return
        self.inner.exception(msg, *args, exc_info=exc_info, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def check_bind(host: str, port: int, token: str | None) -> None:
    """Raise InsecureBind for a non-loopback address without a token (the daemon may call
    this before connecting to anything, to refuse to start at once)."""
    if not token and not is_loopback(host):
        raise InsecureBind(
            f"refusing to serve the HTTP API on {host}:{port} without a token: set one "
            "(--token or MSCHEDULE_TOKEN) or listen on 127.0.0.1"
        )


async def start_http(
    service: Service, host: str, port: int, *, token: str | None = None, tokens: roles.Tokens | None = None,
    ops: probes.Ops | None = None,
) -> web.AppRunner:
    """Serve the API on ``host:port``; return the runner (``await runner.cleanup()`` stops it).

    Raises InsecureBind for a non-loopback host without a token: this API runs code on
    every machine of the fleet.
    """
    check_bind(host, port, token or ("tokens" if tokens else None))
    app = create_app(service, token=token, tokens=tokens, ops=ops)
    server_log = ServerLog(logging.getLogger("aiohttp.server"))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, logger=server_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("HTTP API listening on %s", ", ".join(f"http://{a[0]}:{a[1]}" for a in runner.addresses))
    return runner
