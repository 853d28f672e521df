"""An asyncio loop in a thread of its own, driving MQTT transports as the master's loop does
(mschedule_agent/asyncnet.py): for tests that need a transport on an asyncio loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mschedule_agent.asyncnet import AsyncioNetwork


@contextmanager
def loop_network() -> Iterator[tuple[asyncio.AbstractEventLoop, AsyncioNetwork, threading.Thread]]:
    """(loop, its AsyncioNetwork, the loop's thread); stopped and closed on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asyncio-network", daemon=True)
    thread.start()

    async def make() -> AsyncioNetwork:
        return AsyncioNetwork(asyncio.get_running_loop())

    net = asyncio.run_coroutine_threadsafe(make(), loop).result(5)
    try:
        yield loop, net, thread
    finally:
        loop.call_soon_threadsafe(net.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
