"""For tests of the master's HTTP API: one request to a running master (errors are answers,
not exceptions), and :func:`serve_in_thread`, which serves any ``Service`` (the real
``MasterService`` on a store, or a double) from a loop thread, as the master daemon does."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass
class LiveApi:
    """The API served from a loop thread; ``call`` runs a function on that loop."""

    url: str
    service: Any
    loop: asyncio.AbstractEventLoop
    runner: Any = None  #: the aiohttp AppRunner (``runner.app``)

    def open_streams(self) -> int:
        """Event streams open now (``GET /api/v1/events`` clients)."""
        from mschedule_master import sse

        return self.call(lambda: sse.open_streams(self.runner.app))  # type: ignore[return-value]

    def call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        async def run():
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)


def serve_in_thread(service: Any, *, token: str | None = None) -> Iterator[LiveApi]:
    """Serve ``service``'s API on a free loopback port from a new loop thread, until the
    generator is closed (a fixture's ``yield from``)."""
    from mschedule_master import api

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def start():
        holder["runner"] = runner = await api.start_http(service, "127.0.0.1", 0, token=token)
        holder["port"] = runner.addresses[0][1]

    def run():
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as e:  # surfaced to the test below
            holder["error"] = e
        ready.set()
        if "error" not in holder:
            loop.run_forever()

    thread = threading.Thread(target=run, name="api-loop", daemon=True)
    thread.start()
    if not ready.wait(15) or "error" in holder:
        raise RuntimeError(f"API did not start: {holder.get('error')}")
    try:
        yield LiveApi(f"http://127.0.0.1:{holder['port']}", service, loop, holder["runner"])
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        loop.close()
