"""Targeting, pure: selectors against an in-memory fleet."""

from __future__ import annotations

import time

import pytest

from mschedule_master.models import Agent
from mschedule_master.targeting import InvalidSelector, SelectorKind, UnknownSelector, parse_selector, resolve


def agent(id: str, hostname: str, online: bool = True, dc: str | None = None, **labels: str) -> Agent:
    return Agent(
        id=id,
        hostname=hostname,
        ip=["10.0.0.1"],
        labels=labels,
        version="1",
        capacity=4,
        online=online,
        dc=dc,
        started_at=None,
        last_seen=None,
        last_heartbeat=None,
        heartbeat_interval=5.0,
    )


FLEET = [
    agent("id-web2", "web-2", role="web"),
    agent("id-web1", "web-1", role="web", dc="eu"),
    agent("id-web3", "web-3", online=False, role="web"),
    agent("id-db1", "db-1", role="db", dc="eu"),
    agent("id-db2", "db-2", online=False, role="db"),
    agent("id-old", "old-1", online=False, role="legacy"),
    agent("id-twin-a", "twin"),
    agent("id-twin-b", "twin", online=False),
    agent("id-lbl", "lbl-1", dc="us"),
]

GROUPS = {
    "web": ["role=web"],
    "front": ["@web", "lbl-1"],
    "everything": ["@front", "@data"],
    "data": ["db-*"],
    "loop-a": ["@loop-b"],
    "loop-b": ["@loop-a"],
    "self": ["@self"],
    "typo": ["web-1", "wbe-2"],
    "ghost": ["@nowhere"],
    "stale": ["old-1"],
    "mixed": ["id-web3", "web-2"],
}


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        (["all"], ["id-db1", "id-lbl", "id-twin-a", "id-web1", "id-web2"]),
        (["id-web2"], ["id-web2"]),
        (["web-2"], ["id-web2"]),
        (["web-*"], ["id-web1", "id-web2"]),
        (["web-[12]"], ["id-web1", "id-web2"]),
        (["web-?"], ["id-web1", "id-web2"]),
        (["role=web"], ["id-web1", "id-web2"]),
        (["dc=eu"], ["id-db1", "id-web1"]),  # dc field
        (["dc=us"], ["id-lbl"]),
        (["@web"], ["id-web1", "id-web2"]),
        (["@front"], ["id-lbl", "id-web1", "id-web2"]),
        (["@everything"], ["id-db1", "id-lbl", "id-web1", "id-web2"]),
        (["@mixed"], ["id-web2"]),  # offline members of a group are skipped
        (["web-2", "role=db", "web-2"], ["id-db1", "id-web2"]),  # union without duplicates
        ([" web-1 "], ["id-web1"]),
    ],
)
def test_resolve_returns_matching_agents_by_hostname_then_id(selectors, expected):
    assert resolve(selectors, FLEET, GROUPS) == expected


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        (["id-web3"], ["id-web3"]),  # an explicit id matches an offline agent
        (["web-3"], ["id-web3"]),  # so does an exact hostname
        (["twin"], ["id-twin-a", "id-twin-b"]),  # every agent with that hostname
        (["old-1", "web-1"], ["id-old", "id-web1"]),
    ],
)
def test_explicit_names_match_offline_agents_too(selectors, expected):
    assert resolve(selectors, FLEET, GROUPS) == expected


@pytest.mark.parametrize(
    ("selectors", "bad", "words"),
    [
        (["nosuch"], "nosuch", "matched no agent"),
        (["web-1", "nosuch"], "nosuch", "matched no agent"),
        (["zz-*"], "zz-*", "matched no agent"),
        (["role=none"], "role=none", "matched no agent"),
        (["role=legacy"], "role=legacy", "only offline"),
        (["old-*"], "old-*", "only offline"),
        (["@stale"], "@stale", "only offline"),
        (["@nosuch"], "@nosuch", "unknown group"),
        (["@ghost"], "@nowhere", "unknown group @nowhere (in @ghost)"),
        (["@typo"], "wbe-2", "(in @typo) matched no agent"),
        (["@loop-a"], "@loop-a", "@loop-a -> @loop-b -> @loop-a"),
        (["@self"], "@self", "refers to itself"),
        ([], "", "no target selectors"),
    ],
)
def test_resolve_errors_name_the_selector_at_fault(selectors, bad, words):
    with pytest.raises(UnknownSelector) as err:
        resolve(selectors, FLEET, GROUPS)
    assert err.value.selector == bad
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)


def test_all_on_an_empty_fleet_is_an_error():
    with pytest.raises(UnknownSelector, match="matched no agent"):
        resolve(["all"], [], {})


def test_all_with_every_agent_offline_says_so():
    with pytest.raises(UnknownSelector, match="only offline"):
        resolve(["all"], [agent("a", "h", online=False)])


@pytest.mark.parametrize(
    ("text", "kind", "key", "value"),
    [
        ("all", SelectorKind.ALL, "", ""),
        ("@web", SelectorKind.GROUP, "web", ""),
        ("@web.eu-1", SelectorKind.GROUP, "web.eu-1", ""),
        ("role=web", SelectorKind.LABEL, "role", "web"),
        ("dc=eu", SelectorKind.LABEL, "dc", "eu"),
        ("arch=linux/amd64", SelectorKind.LABEL, "arch", "linux/amd64"),  # any value without blanks
        ("web-*", SelectorKind.GLOB, "", "web-*"),
        ("h[0-9]", SelectorKind.GLOB, "", "h[0-9]"),
        ("host.example.com", SelectorKind.NAME, "", "host.example.com"),
        ("  spaced  ", SelectorKind.NAME, "", "spaced"),
    ],
)
def test_parse_selector_recognises_each_form(text, kind, key, value):
    sel = parse_selector(text)
    assert (sel.kind, sel.key, sel.value) == (kind, key, value)


@pytest.mark.parametrize(
    "text", ["", "   ", "@", "@two words", "@a/b", "=web", "role=", "role==web", "a b", "ro le=web", "web/1", "host#1", "x+y"]
)
def test_parse_selector_rejects_malformed_selectors(text):
    with pytest.raises(InvalidSelector):
        parse_selector(text)


def test_a_malformed_member_of_a_group_is_an_error_naming_it():
    with pytest.raises(InvalidSelector) as err:
        resolve(["@bad"], FLEET, {"bad": ["role="]})
    assert err.value.selector == "role="


def test_resolve_is_deterministic_whatever_the_fleet_order():
    assert resolve(["all"], list(reversed(FLEET))) == resolve(["all"], FLEET)


def test_ten_thousand_explicit_names_resolve_quickly():
    fleet = [agent(f"id-{i}", f"host-{i:05d}") for i in range(10_000)]
    began = time.process_time()
    got = resolve([f"host-{i:05d}" for i in range(10_000)], fleet)
    assert len(got) == 10_000 and got[0] == "id-0"
    assert time.process_time() - began < 5  # a linear scan per name is quadratic: many seconds


def test_a_group_given_as_one_string_is_a_one_member_group():
    assert resolve(["@g"], FLEET, {"g": "role=web"}) == ["id-web1", "id-web2"]


@pytest.mark.parametrize("member", [3, None, ["web-1"]])
def test_a_group_member_that_is_not_a_string_is_an_invalid_selector(member):
    with pytest.raises(InvalidSelector, match="must be a string"):
        resolve(["@g"], FLEET, {"g": [member]})


@pytest.mark.parametrize(
    "selectors", [["all"], ["web-*"], ["role=web"], ["dc=eu"], ["twin"], ["id-web3"], ["@web"], ["role=db", "id-old"]]
)
def test_the_registrys_own_records_resolve_as_its_copies_do(selectors):
    """Engine.submit resolves against Registry.targetable() (no copies): the same answer."""
    from mschedule_agent import protocol
    from mschedule_master.registry import Registry

    registry = Registry()
    for a in FLEET:
        msg = protocol.Register(id=a.id, hostname=a.hostname, ip=a.ip, labels=a.labels, heartbeat=5.0)
        registry.on_status(msg, a.dc, 1.0)
        if not a.online:
            registry.on_status(protocol.Offline(id=a.id), a.dc, 1.0)
    assert [a.online for a in registry.agents()] == [a.online for a in FLEET]
    groups = {"web": ["role=web"]}
    assert resolve(selectors, registry.targetable(), groups) == resolve(selectors, registry.agents(), groups)
