"""Short ids, as git's: any unique prefix of a task or agent id stands for it, and tables
show each id's shortest unique prefix, at least :data:`MIN_SHOWN` characters.

A prefix names the one id that starts with it; none is left to the master's own "not found",
several are an error listing them. Full ids (32 characters) are used as given.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .cli import EXIT_USAGE, CliError

MIN_SHOWN = 8  #: tables show at least this many characters of an id
FULL = 32  #: a task or agent id in full (uuid4 hex)
_LISTED = 5  #: an ambiguous prefix's error lists this many of the ids it matches


class AmbiguousId(CliError):
    """A prefix that more than one id starts with (a usage error: exit 2)."""

    def __init__(self, what: str, prefix: str, matches: list[str]) -> None:
        shown = ", ".join(matches[:_LISTED]) + (" ..." if len(matches) > _LISTED else "")
        super().__init__(f"{what} id prefix {prefix!r} is ambiguous ({shown}); give more characters", EXIT_USAGE)


def shortest_unique(ids: Iterable[str], min_len: int = MIN_SHOWN) -> dict[str, str]:
    """Each id -> its shortest prefix (at least ``min_len``) that no other id of ``ids`` shares."""
    ordered = sorted(set(ids))
    out: dict[str, str] = {}
    for i, ident in enumerate(ordered):
        need = min_len
        for other in (ordered[i - 1] if i else None, ordered[i + 1] if i + 1 < len(ordered) else None):
            if other is not None:
                need = max(need, _common(ident, other) + 1)
        out[ident] = ident[:need]
    return out


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def expand(prefix: str, ids: Iterable[str], what: str) -> str:
    """The id of ``ids`` that ``prefix`` names: itself when it is one, else the one id starting
    with it, else ``prefix`` unchanged (none: the caller's lookup says not found).
    Raises AmbiguousId."""
    ids = list(ids)
    if prefix in ids or not prefix:
        return prefix
    matches = sorted(i for i in ids if i.startswith(prefix))
    if len(matches) > 1:
        raise AmbiguousId(what, prefix, matches)
    return matches[0] if matches else prefix


def task_id(client: Any, prefix: str) -> str:
    """The task id ``prefix`` names, asking the master for the ids that start with it."""
    if len(prefix) >= FULL or not prefix:
        return prefix
    page = client.get("/api/v1/tasks", id_prefix=prefix, limit=_LISTED + 1)["tasks"]
    return expand(prefix, [t["id"] for t in page], "task")


def is_plain_name(selector: str) -> bool:
    """A selector that names one agent by id or hostname (not all, a label, a glob or a group)."""
    return selector != "all" and not any(c in selector for c in "=*?[@")


def agent_selectors(client: Any, selectors: list[str]) -> list[str]:
    """``-t`` values with agent id prefixes expanded (a name that is an agent's hostname or id stays)."""
    plain = [s for s in selectors if is_plain_name(s.strip())]
    if not plain:
        return selectors
    agents = client.get("/api/v1/agents")["agents"]
    names = {a["hostname"] for a in agents}
    ids = [a["id"] for a in agents]
    return [expand(s, ids, "agent") if s in plain and s not in names else s for s in selectors]
