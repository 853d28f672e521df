"""What operators' tools ask the master over HTTP: ``/healthz``, ``/readyz`` and ``/metrics``.

* ``/healthz``: the process is alive and its event loop answers (a liveness probe: restart
  the master when it fails). Always 200 while the loop runs.
* ``/readyz``: 200 when every readiness check passes, else 503; the body names each check
  and why it fails. The daemon's checks: the MQTT broker is connected, the database takes a
  write lock, the inbox is caught up (its oldest message waited less than
  :data:`READY_BACKLOG` seconds). A readiness probe (systemd watchdog scripts, Kubernetes
  ``readinessProbe``): route no submissions to a master that is not ready.
* ``/metrics``: the Prometheus text format (see :mod:`metrics`).
* HA masters on PostgreSQL (docs/deploy.md): ``/readyz`` also says who leads
  (``leadership``: this master's role, the epoch, the leader's instance and host); a
  standby is ready (it serves reads and takes submissions for the leader).

The probes need no token (they reveal nothing but "ok" or a check's name); ``/metrics``
needs it when one is set, as every API route does (Prometheus sends it with
``authorization: {credentials: ...}``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

#: The inbox is not caught up while its oldest message waited this long (seconds).
READY_BACKLOG = 10.0

#: A check returns None when it passes, else what is wrong.
Check = Callable[[], "str | None"]


@dataclass(frozen=True, slots=True)
class Ops:
    """What the probes read: the master's metrics and its readiness checks by name."""

    metrics: Metrics | None = None
    checks: dict[str, Check] = field(default_factory=dict)
    #: HA masters on PostgreSQL: who leads, as /readyz shows it (role, epoch, leader, host, since)
    leadership: Callable[[], dict[str, Any]] | None = None

    def readiness(self) -> tuple[bool, dict[str, str]]:
        results: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as e:  # a check that fails to run is a failing check
                problem = f"check failed: {e}"
            results[name] = "ok" if problem is None else problem
        return all(v == "ok" for v in results.values()), results


OPS_KEY = web.AppKey("ops", Ops)


def _ops(request: web.Request) -> Ops:
    return request.app.get(OPS_KEY) or Ops()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ops = _ops(request)
    ready, checks = ops.readiness()
    if not ready:
        log.debug("not ready: %s", checks)
    body: dict[str, Any] = {"ready": ready, "checks": checks}
    if ops.leadership is not None:
        try:
            body["leadership"] = ops.leadership()
        except Exception as e:
            body["leadership"] = {"error": f"cannot read the leadership: {e}"}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    m = _ops(request).metrics
    if m is None:
        return web.json_response({"error": "this master serves no metrics", "field": None}, status=404)
    resp = web.Response(body=m.render())
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp
