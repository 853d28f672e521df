"""The keys an agent trusts, read from a TOML file and re-read when it changes.

::

    [[keys]]
    public = "base64 of the 32-byte Ed25519 public key"   # from NAME.pub
    kid = "ed25519-0123456789abcdef"   # optional; checked against the key when given
    role = "master"                    # "master": signs dispatches and kills; "operator": approves job versions
    not_before = 2026-12-01T00:00:00Z  # optional: TOML date-time or epoch seconds
    not_after = 2027-06-01T00:00:00Z   # optional

Rotation needs no restart: add the new key (overlapping windows), switch the master to it,
then delete the old one. The agent stats the file before every signed message it checks,
so a change (a revocation too) applies from the next message. A file that cannot be read
or parsed trusts nothing until it is fixed: a typo never keeps a revoked key alive.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .keys import decode_public, key_id

log = logging.getLogger(__name__)

#: "master": signs dispatches and kills (the online key); "operator": approves job versions (offline)
ROLES = frozenset({"master", "operator"})


@dataclass(frozen=True, slots=True)
class TrustedKey:
    kid: str
    public: bytes
    role: str = "master"
    not_before: float | None = None  #: epoch seconds; None = always
    not_after: float | None = None

    def valid_at(self, when: float) -> bool:
        return (self.not_before is None or when >= self.not_before) and (self.not_after is None or when <= self.not_after)


def _when(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigError(where, "a date-time needs a time zone (e.g. ...Z)")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(where, f"expected a date-time or epoch seconds, not {value!r}")


def parse(doc: dict[str, Any], source: str) -> dict[str, TrustedKey]:
    """The ``[[keys]]`` of a parsed trust file, by kid. Raises ConfigError."""
    entries = doc.get("keys", [])
    if not isinstance(entries, list) or set(doc) - {"keys"}:
        raise ConfigError(source, "a trust file holds only [[keys]] tables")
    out: dict[str, TrustedKey] = {}
    for i, e in enumerate(entries):
        where = f"{source}: keys[{i}]"
        if not isinstance(e, dict) or set(e) - {"public", "kid", "role", "not_before", "not_after"}:
            raise ConfigError(where, "expected public, kid, role, not_before, not_after")
        try:
            public = decode_public(str(e.get("public", "")))
        except ValueError as err:
            raise ConfigError(where, str(err)) from None
        kid = key_id(public)
        if e.get("kid", kid) != kid:
            raise ConfigError(where, f"kid {e['kid']!r} does not match the key ({kid})")
        role = e.get("role", "master")
        if role not in ROLES:
            raise ConfigError(where, f"role must be one of {sorted(ROLES)}, not {role!r}")
        key = TrustedKey(kid, public, role, _when(e.get("not_before"), where), _when(e.get("not_after"), where))
        out[kid] = key
    return out


def load(path: Path) -> dict[str, TrustedKey]:
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(str(path), f"cannot read the trust file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"the trust file is not valid TOML: {e}") from None
    return parse(doc, str(path))


class TrustStore:
    """The trusted keys of one file, re-read whenever its (mtime, size, inode) changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, TrustedKey] = {}
        self.error: str | None = None  #: why the file trusts nothing now, when it cannot be used
        self.refresh()
        if self.error is not None:
            raise ConfigError(str(path), self.error)

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as e:
            self._fail(f"cannot read the trust file {self.path}: {e.strerror}")
            return
        if stamp == self._stamp and self.error is None:
            return
        try:
            keys = load(self.path)
        except ConfigError as e:
            self._fail(str(e))
            self._stamp = stamp
            return
        changed = self._stamp is not None
        self._stamp, self._keys, self.error = stamp, keys, None
        log.log(logging.WARNING if changed else logging.INFO, "trusting %d key(s) from %s: %s",
                len(keys), self.path, " ".join(sorted(keys)) or "none")  # fmt: skip

    def _fail(self, why: str) -> None:
        if why != self.error:
            log.error("%s: trusting no key until it is fixed", why)
        self._keys, self.error = {}, why

    def get(self, kid: str) -> TrustedKey | None:
        """The trusted key ``kid`` as of the file now (re-read when it changed)."""
        self.refresh()
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return sorted(self._keys)
