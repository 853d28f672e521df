"""Targeting: resolve a task's selectors into a fixed, ordered list of agent ids.

Grammar of one selector (surrounding blanks ignored, none inside)::

    all           every ONLINE agent
    @name         a group from the master's config: a list of selectors (may name other groups)
    key=value     ONLINE agents with label key=value (exact value); dc=NAME: the agents whose messages
                  arrive from datacenter NAME (the bridge topology), never a label an agent gives itself
    web-*         ONLINE agents whose hostname matches the glob (fnmatch; has * ? or [)
    name          the agent with this id, or the agents with this exact hostname -- even offline

Several selectors = their union, ordered by hostname then id. Every error is an
:class:`UnknownSelector` (a ValueError) naming the offending selector:

- a selector that is malformed (:class:`InvalidSelector`) or names an unknown group;
- a selector that matches no agent at all;
- an online-only selector (all, glob, label, group) whose matches are all offline;
- a group that refers to itself, directly or not.

Inside a group, a member selector must match some agent (a typo is an error naming the
member and the group), but offline agents are skipped: a group matches only online
agents, and is an error only when none of them is online.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Protocol

_GLOB_CHARS = re.compile(r"[*?\[]")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  #: a group name or a label key
_TOKEN = re.compile(r"^[^\s+#/]+$")  #: an agent id, hostname or label value: one topic level, no blanks


class Agent(Protocol):
    """What targeting reads of an agent: a :class:`~.models.Agent`, or the registry's own
    record (:meth:`~.registry.Registry.targetable`: no copy of 100,000 agents per submission)."""

    @property
    def id(self) -> str: ...
    @property
    def hostname(self) -> str: ...
    @property
    def online(self) -> bool: ...
    @property
    def dc(self) -> str | None: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


class UnknownSelector(ValueError):
    """A selector that cannot be resolved; ``selector`` names it (as the user wrote it)."""

    def __init__(self, selector: str, message: str) -> None:
        super().__init__(message)
        self.selector = selector
        self.message = message


class InvalidSelector(UnknownSelector):
    """A selector that is not well formed."""


class SelectorKind(str, Enum):
    ALL = "all"  #: every online agent
    GROUP = "group"  #: @name
    LABEL = "label"  #: key=value (dc=NAME matches Agent.dc only)
    GLOB = "glob"  #: hostname glob, online agents only
    NAME = "name"  #: exact agent id or hostname, offline agents included


@dataclass(frozen=True, slots=True)
class Selector:
    text: str  #: as written (stripped)
    kind: SelectorKind
    key: str = ""  #: label key or group name
    value: str = ""  #: label value, glob pattern or name

    @property
    def online_only(self) -> bool:
        return self.kind is not SelectorKind.NAME


def parse_selector(s: str) -> Selector:
    """Validate one selector's syntax; raise :class:`InvalidSelector` naming it."""
    if not isinstance(s, str):
        raise InvalidSelector(repr(s), f"a target selector must be a string, not {s!r}")
    text = s.strip()
    if not text:
        raise InvalidSelector(str(s), "a target selector is empty")
    if any(c.isspace() for c in text):
        raise InvalidSelector(text, f"target selector {text!r} contains blanks")
    if text == "all":
        return Selector(text, SelectorKind.ALL)
    if text.startswith("@"):
        name = text[1:]
        if not _NAME.match(name):
            raise InvalidSelector(text, f"group selector {text!r}: expected @name (letters, digits, _ . -)")
        return Selector(text, SelectorKind.GROUP, key=name)
    if "=" in text:
        key, _, value = text.partition("=")
        if not _NAME.match(key) or not value or "=" in value:
            raise InvalidSelector(text, f"label selector {text!r}: expected key=value (one '=', a non-empty value)")
        return Selector(text, SelectorKind.LABEL, key=key, value=value)
    if not _TOKEN.match(text):
        raise InvalidSelector(text, f"target selector {text!r} contains characters not allowed in a name")
    if _GLOB_CHARS.search(text):
        return Selector(text, SelectorKind.GLOB, value=text)
    return Selector(text, SelectorKind.NAME, value=text)


def resolve(
    selectors: list[str],
    agents: Iterable[Agent],
    groups: Mapping[str, list[str] | str] | None = None,
) -> list[str]:
    """The agent ids ``selectors`` name, by hostname then id. Raises :class:`UnknownSelector`."""
    if not selectors:
        raise UnknownSelector("", "no target selectors given")
    resolver = _Resolver(list(agents), groups or {})
    chosen: dict[str, Agent] = {}
    for text in selectors:
        for agent in resolver.top(parse_selector(text)):
            chosen[agent.id] = agent
    if not chosen:  # unreachable while every selector must match, kept as the last guard
        raise UnknownSelector(", ".join(selectors), "the selectors matched no agent")
    return [a.id for a in sorted(chosen.values(), key=lambda a: (a.hostname, a.id))]


class _Resolver:
    def __init__(self, agents: list[Agent], groups: Mapping[str, list[str] | str]) -> None:
        self.agents = agents
        self.groups = groups

    @cached_property
    def by_id(self) -> dict[str, Agent]:  # built for the first name selector only ("all" needs none)
        return {a.id: a for a in self.agents}

    @cached_property
    def by_hostname(self) -> dict[str, list[Agent]]:
        by_hostname: dict[str, list[Agent]] = {}
        for a in self.agents:
            by_hostname.setdefault(a.hostname, []).append(a)
        return by_hostname

    def top(self, sel: Selector) -> list[Agent]:
        """A selector as the user wrote it: must match, and online-only ones must match online agents."""
        matched = self.match(sel, ())
        if not matched:
            raise UnknownSelector(sel.text, f"target selector {sel.text!r} matched no agent")
        if sel.online_only:
            online = [a for a in matched if a.online]
            if not online:
                names = ", ".join(sorted(a.id for a in matched)[:10])
                raise UnknownSelector(sel.text, f"target selector {sel.text!r} matches only offline agents: {names}")
            return online
        return matched

    def match(self, sel: Selector, path: tuple[str, ...]) -> list[Agent]:
        """Every agent ``sel`` names, online or not (groups: their members' online agents)."""
        if sel.kind is SelectorKind.ALL:
            return list(self.agents)
        if sel.kind is SelectorKind.NAME:
            agent = self.by_id.get(sel.value)
            if agent is not None:
                return [agent]
            return list(self.by_hostname.get(sel.value, ()))
        if sel.kind is SelectorKind.GLOB:
            return [a for a in self.agents if fnmatchcase(a.hostname, sel.value)]
        if sel.kind is SelectorKind.LABEL:
            return [a for a in self.agents if has_label(a, sel.key, sel.value)]
        return self.group(sel, path)

    def group(self, sel: Selector, path: tuple[str, ...]) -> list[Agent]:
        name = sel.key
        if name in path:
            cycle = " -> ".join(f"@{p}" for p in (*path, name))
            raise UnknownSelector(sel.text, f"group {sel.text} refers to itself: {cycle}")
        if name not in self.groups:
            where = f" (in @{path[-1]})" if path else ""
            raise UnknownSelector(sel.text, f"unknown group {sel.text}{where}")
        found: dict[str, Agent] = {}
        members = self.groups[name]
        for member_text in [members] if isinstance(members, str) else members:  # a TOML string is a one-member group
            member = parse_selector(member_text)
            matched = self.match(member, (*path, name))
            if not matched:
                raise UnknownSelector(member.text, f"target selector {member.text!r} (in @{name}) matched no agent")
            found.update((a.id, a) for a in matched)
        online = [a for a in found.values() if a.online]
        return online or list(found.values())  # all offline: returned so that top() can say so


def has_label(agent: Agent, key: str, value: str) -> bool:
    """``key=value`` names ``agent``. ``dc`` is where its messages come from (Agent.dc, set
    by the topic they arrive on), never its own label: an agent cannot claim a datacenter."""
    if key == "dc":
        return agent.dc == value
    return agent.labels.get(key) == value
