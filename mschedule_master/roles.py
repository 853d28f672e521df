"""API tokens and their roles (issue 16; docs/security.md).

Each token has a name (what the audit trail records as "who") and a role:

* ``viewer``: read everything (GET);
* ``operator``: also run and stop things: submit, kill, re-run, run a job, approve/abort;
* ``admin``: also change what can run: job versions and defaults, schedules (and keys).

Configured in the master's TOML file::

    [tokens.alice]
    role = "operator"
    sha256 = "<hex sha256 of the token>"   # or: token = "<the token>" (then keep the file 0600)

The single ``token`` setting (``--token``, ``MSCHEDULE_TOKEN``) is an ``admin`` token named
``token``. :func:`required_role` decides each route from its method and path template:
a route added later is ``admin`` unless it reads or acts on tasks, so it fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

ROLES = ("viewer", "operator", "admin")  #: each may do what the ones before it may

#: Non-GET routes that only read (a selector's preview): every role may use them.
VIEWER_ROUTES = frozenset({("POST", "/api/v1/targets/resolve")})
#: Non-GET routes an operator may use (path templates); every other non-GET route is admin.
OPERATOR_PREFIXES = ("/task", "/api/v1/tasks")
OPERATOR_ROUTES = frozenset({
    ("POST", "/api/v1/jobs/{name}/run"),
    # an approval's authority is the operator's offline signature; uploading it changes nothing else
    ("POST", "/api/v1/jobs/{name}/versions/{version}/approvals"),
})  # fmt: skip


def rank(role: str) -> int:
    return ROLES.index(role)


def required_role(method: str, path: str) -> str:
    if method in ("GET", "HEAD", "OPTIONS") or (method, path) in VIEWER_ROUTES:
        return "viewer"
    if (method, path) in OPERATOR_ROUTES or any(path == p or path.startswith(p + "/") for p in OPERATOR_PREFIXES):
        return "operator"
    return "admin"


def allows(role: str, method: str, path: str) -> bool:
    return rank(role) >= rank(required_role(method, path))


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    role: str
    sha256: bytes  #: of the token; the token itself is not kept

    def __repr__(self) -> str:
        return f"Token(name={self.name!r}, role={self.role!r})"


class Tokens:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = list(tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def names(self) -> list[str]:
        return [t.name for t in self._tokens]

    def tokens(self) -> list[Token]:
        return list(self._tokens)

    def match(self, given: str) -> Token | None:
        """The token ``given`` is, comparing in constant time against every one."""
        digest = hashlib.sha256(given.encode()).digest()
        found = None
        for t in self._tokens:
            if hmac.compare_digest(digest, t.sha256):
                found = t
        return found


def parse(tokens: dict[str, Any], legacy: str | None = None) -> Tokens:
    """The ``[tokens]`` table (and the legacy single token). Raises ConfigError."""
    out: list[Token] = []
    if legacy:
        out.append(Token("token", "admin", hashlib.sha256(legacy.encode()).digest()))
    if not isinstance(tokens, dict):
        raise ConfigError("tokens must be a table of [tokens.NAME] entries", "tokens")
    for name, entry in tokens.items():
        where = f"tokens.{name}"
        if not isinstance(entry, dict) or set(entry) - {"role", "token", "sha256"}:
            raise ConfigError(f"{where}: expected role and one of token, sha256", where)
        role = entry.get("role")
        if role not in ROLES:
            raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}", where)
        if ("token" in entry) == ("sha256" in entry):
            raise ConfigError(f"{where}: give exactly one of token, sha256", where)
        if "token" in entry:
            secret = entry["token"]
            if not isinstance(secret, str) or len(secret) < 16:
                raise ConfigError(f"{where}: a token needs at least 16 characters", where)
            digest = hashlib.sha256(secret.encode()).digest()
        else:
            try:
                digest = bytes.fromhex(str(entry["sha256"]))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(f"{where}: sha256 must be 64 hex digits", where)
        out.append(Token(name, role, digest))
    if len({t.sha256 for t in out}) != len(out):
        raise ConfigError("two tokens are the same secret: each needs its own", "tokens")
    return Tokens(out)
