"""The HTTP routes of the audit trail and of "who am I" (issue 16). Imported by
:mod:`.api`, which adds :data:`ROUTES` to its own; documented in ``openapi.py``. The
master's ``service.audit`` (an :class:`~.audit.AuditLog`) does the work.
"""

from __future__ import annotations

from aiohttp import web

from . import roles
from .audit import ACTIONS, ACTOR, AuditLog, verify

MAX_ROWS = 1000


def audit_of(request: web.Request) -> AuditLog:
    log = getattr(_api.service_of(request), "audit", None)
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


ROUTES = (
    ("GET", "/api/v1/audit", list_audit),
    ("GET", "/api/v1/audit/verify", verify_audit),
    ("GET", "/api/v1/whoami", whoami),
)

from . import api as _api  # noqa: E402  (api imports this module after its helpers)
