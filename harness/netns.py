"""Two hosts joined by one link, for partition tests: Linux network namespaces and a veth.

    with Link() as link:                          # namespaces "ms<tag>a" and "ms<tag>b", a veth between
        link.a.call(start_central_and_master)     # runs in a thread whose network is host a's
        link.b.call(start_edge_and_agents)        # ... and host b's
        link.cut()                                # every packet on the link silently dropped
        link.heal()

Each host has its loopback and one end of the veth, with a link-local address
(:data:`ADDR_A`, :data:`ADDR_B`): the traffic never leaves this machine's namespaces.

How code gets into a namespace: :meth:`Host.call` runs a function on a thread that has
``setns()`` into the host's network namespace. A socket takes the namespace of the thread
that creates it, and a thread or child process inherits its creator's, so brokers, daemons
and MQTT clients started by ``host.call(...)`` live on that host (a paho client started
there reconnects from its own thread, which inherited the namespace too).

The cut is a ``pfifo`` queue of length 0 on both ends of the veth (``tc``): packets are
dropped without an error, so connections hang until keepalives give up, as on a real
blackholed link between datacenters (a stopped broker, by contrast, resets connections at
once). ``netem`` and ``prio`` need kernel modules this kind of machine does not have; a
zero-length fifo needs none. Needs root and iproute2 (``ip``, ``tc``).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

#: The link's two addresses (link-local, /30): host a's and host b's end of the veth.
ADDR_A = "169.254.77.1"
ADDR_B = "169.254.77.2"
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2, or the kernel refuses)."""


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {p.stderr.strip()}")


def _tc(ns: str, *args: str, check: bool = True) -> None:
    p = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {ns}: {p.stderr.strip()}")


def why_unavailable() -> str | None:
    """None when partition tests can run here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install iproute2)"
    if ctypes.util.find_library("c") is None:
        return "libc not found for setns()"
    return None


class Host:
    """One network namespace and a worker thread inside it."""

    def __init__(self, name: str, veth: str, addr: str) -> None:
        self.name = name
        self.veth = veth
        self.addr = addr
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _enter(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def start(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"netns-{self.name}",
                                                           initializer=self._enter)  # fmt: skip
        self.call(lambda: None)  # surfaces a setns failure now

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 120.0, **kw: Any) -> T:
        """Run ``fn(*args, **kw)`` on this host (its network) and return its result."""
        assert self._pool is not None, "start() first"
        if threading.current_thread().name.startswith(f"netns-{self.name}"):
            return fn(*args, **kw)  # already here (a call from within a call)
        return self._pool.submit(fn, *args, **kw).result(timeout)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class Link:
    """Two namespaced hosts, ``a`` and ``b``, joined by a veth that :meth:`cut` blackholes."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a = Host(f"ms{tag}a", f"ms{tag}va", ADDR_A)
        self.b = Host(f"ms{tag}b", f"ms{tag}vb", ADDR_B)
        self.is_cut = False
        self._made: list[str] = []

    def start(self) -> Link:
        reason = why_unavailable()
        if reason:
            raise NetnsUnavailable(reason)
        try:
            for h in (self.a, self.b):
                _ip("netns", "add", h.name)
                self._made.append(h.name)
            _ip("link", "add", self.a.veth, "netns", self.a.name, "type", "veth", "peer", "name", self.b.veth,
                "netns", self.b.name)  # fmt: skip
            for h in (self.a, self.b):
                _ip("-n", h.name, "link", "set", "lo", "up")
                _ip("-n", h.name, "addr", "add", f"{h.addr}/30", "dev", h.veth)
                _ip("-n", h.name, "link", "set", h.veth, "up")
                h.start()
        except BaseException:
            self.stop()
            raise
        return self

    def cut(self) -> None:
        """Drop every packet on the link, both ways, silently."""
        for h in (self.a, self.b):
            _tc(h.name, "qdisc", "replace", "dev", h.veth, "root", "pfifo", "limit", "0")
        self.is_cut = True

    def heal(self) -> None:
        for h in (self.a, self.b):
            _tc(h.name, "qdisc", "del", "dev", h.veth, "root", check=False)
        self.is_cut = False

    def stop(self) -> None:
        for h in (self.a, self.b):
            h.stop()
        for name in self._made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self._made.clear()

    def __enter__(self) -> Link:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
