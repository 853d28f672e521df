"""The HTTP routes of the audit trail, operators' approvals and "who am I" (issue 16). Imported by
:mod:`.api`, which adds :data:`ROUTES` to its own; documented in ``openapi.py``. The
master's ``service.audit`` (an :class:`~.audit.AuditLog`) does the work.
"""

from __future__ import annotations

from aiohttp import web

from . import roles
from .audit import ACTIONS, ACTOR, AuditLog, verify

MAX_ROWS = 1000


def audit_of(request: web.Request) -> AuditLog:
    log: AuditLog | None = getattr(_api.service_of(request), "audit", None)
    if log is None:
        raise _api.ApiError(501, "this master keeps no audit trail")
    return log


async def list_audit(request: web.Request) -> web.Response:
    action = request.query.get("action") or None
    if action is not None and action not in ACTIONS:
        raise _api.ApiError(400, f"action must be one of {', '.join(sorted(ACTIONS))}", "action")
    after = _api.query_int(request, "after", 0, 0, 2**62)
    limit = _api.query_int(request, "limit", 100, 1, MAX_ROWS)
    records = audit_of(request).records(after=after, limit=limit, task_id=request.query.get("task_id") or None,
                                        action=action)  # fmt: skip
    return _api.json_response({"records": [r.as_json() for r in records]})


async def verify_audit(request: web.Request) -> web.Response:
    log = audit_of(request)
    with log.store.db() as c:
        verdict = verify(c)
    return _api.json_response(verdict.as_json())


async def whoami(request: web.Request) -> web.Response:
    """The caller's token name and role, and what that role may do (the page hides the rest)."""
    tokens = request.app.get(_api.TOKENS_KEY)
    role = "admin"
    if tokens:
        token = tokens.match(_api._bearer(request))
        role = token.role if token is not None else "viewer"
    may = {"read": True, "run": roles.rank(role) >= roles.rank("operator"), "admin": role == "admin"}
    return _api.json_response({"name": ACTOR.get(), "role": role, "may": may})


async def add_approval(request: web.Request) -> web.Response:
    """An operator's offline signature of a job version (``mschedule keys approve``)."""
    import base64
    import binascii

    from mschedule_agent import keys

    body = await _api.read_json(request)
    if not isinstance(body, dict) or set(body) != {"public", "statement", "sig"}:
        raise _api.ApiError(400, "send {public, statement, sig}", "body")
    try:
        public = keys.decode_public(str(body["public"]))
    except ValueError as e:
        raise _api.ApiError(400, str(e), "public") from None
    try:
        sig = base64.b64decode(str(body["sig"]), validate=True)
    except (binascii.Error, ValueError):
        raise _api.ApiError(400, "sig is not valid base64", "sig") from None
    if not isinstance(body["statement"], str) or len(sig) != 64:
        raise _api.ApiError(400, "statement must be a string and sig 64 bytes", "sig")
    raw = request.match_info["version"]
    if not raw.isdigit() or not 0 < int(raw) < 2**31:
        raise _api.ApiError(400, "version must be a version number", "version")
    approvals = getattr(_api.service_of(request), "approvals", None)
    if approvals is None:
        raise _api.ApiError(501, "this master keeps no approvals")
    doc = approvals.add(request.match_info["name"], int(raw), public=public, statement=body["statement"], sig=sig)
    return _api.json_response(doc, status=201)


ROUTES = (
    ("GET", "/api/v1/audit", list_audit),
    ("POST", "/api/v1/jobs/{name}/versions/{version}/approvals", add_approval),
    ("GET", "/api/v1/audit/verify", verify_audit),
    ("GET", "/api/v1/whoami", whoami),
)

from . import api as _api  # noqa: E402  (api imports this module after its helpers)
