"""Settings in layers: named defaults < a TOML file < the environment < command-line flags.

Both daemons build their settings dataclass this way (the master imports this module;
the agent never imports the master). This is the shared mechanics: where the file is
(``--config`` or ``<PREFIX>CONFIG``), reading it, collecting the ``<PREFIX><NAME>``
variables and the flags given, and merging the layers, later ones winning. Each daemon's
``config.py`` keeps its own field types, checks and error messages.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class FileError(Exception):
    """The settings file cannot be read (``unreadable``) or is not valid TOML."""

    def __init__(self, path: str, why: str, *, unreadable: bool) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why
        self.unreadable = unreadable


def config_path(flag: str | None, env: Mapping[str, str], prefix: str) -> str | None:
    """The settings file: the ``--config`` flag, else ``<prefix>CONFIG``, else none."""
    return flag or env.get(prefix + "CONFIG")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The file's top-level table, as written. Raises FileError."""
    import tomllib  # only with a config file: ~1.4 MB of an idle agent otherwise

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise FileError(str(path), str(e), unreadable=True) from None
    except tomllib.TOMLDecodeError as e:
        raise FileError(str(path), str(e), unreadable=False) from None
    return doc


def names(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with keys spelled as flags (``delivery-timeout``) turned into setting names."""
    return {k.replace("-", "_"): v for k, v in doc.items()}


def env_layer(env: Mapping[str, str], prefix: str) -> list[tuple[str, str, str]]:
    """(setting name, variable, value) of every ``<prefix><NAME>`` variable but
    ``<prefix>CONFIG``, in the environment's order; names lower-cased."""
    return [
        (key[len(prefix) :].lower(), key, value)
        for key, value in env.items()
        if key.startswith(prefix) and key != prefix + "CONFIG"
    ]


def flag_layer(ns: argparse.Namespace) -> dict[str, Any]:
    """The flags given (not None), ``--config`` left out."""
    return {name: value for name, value in vars(ns).items() if value is not None and name != "config"}


def merge(layers: Iterable[Mapping[str, Any]], *, additive: Iterable[str] = ()) -> dict[str, Any]:
    """Later layers win, key by key; an ``additive`` key (a mapping, e.g. labels) adds up
    across layers instead, a later layer winning per inner key."""
    adding = set(additive)
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in adding:
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged
