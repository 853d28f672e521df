"""What the agent says about its machine: hostname and usable IPv4 addresses."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HostInfo:
    hostname: str
    ip: tuple[str, ...]


def usable_ipv4(addresses: Iterable[str]) -> list[str]:
    """Keep the IPv4 addresses worth reporting, as the design document filters them
    (drop link-local, loopback, multicast, reserved and unspecified); order kept, no repeats."""
    out: list[str] = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if ip.version != 4 or ip.is_link_local or ip.is_loopback or ip.is_multicast or ip.is_reserved:
            continue
        if ip.is_unspecified or str(ip) in out:
            continue
        out.append(str(ip))
    return out


def _interface_ipv4() -> list[str]:
    import netifaces  # netifaces2; imported here so tests and embedders can inject host info

    found: list[str] = []
    for iface in netifaces.interfaces():
        try:
            addrs = netifaces.ifaddresses(iface)
        except (OSError, ValueError):
            continue
        for entry in addrs.get(netifaces.InterfaceType.AF_INET, []):
            if entry.get("addr"):
                found.append(entry["addr"])
    return found


def collect(addresses: Callable[[], list[str]] = _interface_ipv4) -> HostInfo:
    """Read the hostname and addresses now. Never raises: a failure gives an empty list."""
    try:
        ips = usable_ipv4(addresses())
    except Exception:
        log.warning("cannot list network interfaces; reporting no addresses", exc_info=True)
        ips = []
    return HostInfo(hostname=socket.gethostname(), ip=tuple(ips))
