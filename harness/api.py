"""One HTTP request to a running master's API, for tests: errors are answers, not exceptions."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any


def call(fleet: Any, method: str, path: str, body: bytes | None = None, timeout: float = 30):
    """``(status, headers, body bytes)`` of one request to ``fleet.url + path``."""
    req = urllib.request.Request(fleet.url + path, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:  # an unclosed error response is a ResourceWarning at some later test's GC
            return e.code, dict(e.headers), e.read()
