"""Importing paho-mqtt, optionally without the modules a plain TCP connection never uses.

No paho import happens when this module is imported: the agent's entry point (daemon.py)
calls ``import_paho(defer_unused=True)`` before anything else imports paho.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in for a module paho imports but a plain TCP connection never uses; the
    real module is imported on the first attribute access (thread-safe: the import lock)."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        vars(self).update(vars(module))  # later accesses skip __getattr__
        return getattr(module, attr)


def import_paho(*, defer_unused: bool = False) -> types.ModuleType:
    """Import ``paho.mqtt.client``; with ``defer_unused``, without ``ssl``, ``hashlib`` and
    ``urllib.request`` (only the agent's entry point asks for that: daemon.py).

    THE ONE PLACE that keeps TLS and friends out of a plain ``mqtt://`` process. paho
    imports those three at import time; a plain TCP connection uses none of them (TLS,
    websockets and a SOCKS proxy do), and they were ~8 MB of an idle agent's 28.7 MB RSS
    (libssl/libcrypto, http.client, email). While paho is imported, each one not already
    loaded is a :class:`_Deferred` stand-in in ``sys.modules``; afterwards the stand-ins
    leave ``sys.modules`` (anyone else's ``import ssl`` gets the real module) but stay in
    paho's globals, where the first attribute access (``tls_set`` for ``mqtts://``, a
    websocket handshake) imports the real module. ``paho_shim.InflightClient._sock_recv/_sock_send`` keep
    paho's ``except ssl.SSL...`` clauses off the plain socket's path. urllib.request is
    only deferred without PySocks installed (paho reads proxy settings through it only
    then). importlib's own LazyLoader does not fit: on 3.11 every later ``import ssl``
    statement loads the module (it reads ``__spec__``)."""
    if "paho.mqtt.client" in sys.modules or not defer_unused:
        import paho.mqtt.client

        return paho.mqtt.client
    names = ["ssl", "hashlib"]
    if importlib.util.find_spec("socks") is None:
        names.append("urllib.request")
    stand_ins = {n: _Deferred(n) for n in names if n not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        if "urllib.request" in stand_ins:
            import urllib

            urllib.request = stand_ins["urllib.request"]  # replaced by a real import
        import paho.mqtt.client
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    return paho.mqtt.client
