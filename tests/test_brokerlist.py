"""The broker address list and its rotation (pure: no network)."""

from __future__ import annotations

import pytest

from mschedule_agent.brokerlist import ATTEMPTS_PER_BROKER, BrokerList, join_addresses, split_addresses

A, B, C = "mqtt://a:1883", "mqtt://b:1883", "mqtt://c:1883"


@pytest.mark.parametrize(
    ("given", "addresses"),
    [
        (A, [A]),
        (f"{A},{B}", [A, B]),
        (f" {A} , {B},", [A, B]),  # blanks and a trailing comma
        ([A, f"{B},{C}"], [A, B, C]),  # a repeated flag, one of them a list
        ("mqtt://u:p%2Cq@a:1", ["mqtt://u:p%2Cq@a:1"]),  # a comma in a password is %2C
    ],
)
def test_addresses_split_on_commas_and_repeats(given, addresses):
    assert split_addresses(given) == addresses
    assert join_addresses(given) == ",".join(addresses)


def test_a_percent_encoded_comma_stays_in_the_password():
    assert BrokerList.parse("mqtt://u:p%2Cq@a:1").current.password == "p,q"


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("", "no broker address"),
        (" , ", "no broker address"),
        (f"{A},mqtts://b:8883", "mix mqtt:// and mqtts://"),
        (f"{A},a", "given twice: a:1883"),  # a bare host is :1883 too
        (f"{A},mqtt://a:1883", "given twice"),
        (f"{A},http://b", "scheme"),
    ],
)
def test_a_bad_list_is_refused_saying_why(given, why):
    with pytest.raises(ValueError, match=why):
        BrokerList.parse(given)


def test_a_password_never_shows_in_the_list_or_its_errors():
    brokers = BrokerList.parse(f"mqtt://u:hunter2@a:1,{B}")
    assert "hunter2" not in str(brokers)
    with pytest.raises(ValueError) as e:
        BrokerList.parse("mqtt://u:hunter2@a:1,mqtt://u:hunter2@a:1")
    assert "hunter2" not in str(e.value)


def _trace(brokers: BrokerList, events: str) -> list[str]:
    """The current host after each event: f = a failed attempt, c = connected."""
    out = []
    for e in events:
        brokers.failed() if e == "f" else brokers.connected()
        out.append(brokers.current.host)
    return out


@pytest.mark.parametrize(
    ("addresses", "attempts", "events", "hosts"),
    [
        ([A, B, C], 3, "ff", ["a", "a"]),  # the current one keeps its attempts
        ([A, B, C], 3, "fff", ["a", "a", "b"]),  # ... then the next
        ([A, B, C], 3, "fffffffff", ["a", "a", "b", "b", "b", "c", "c", "c", "a"]),  # round robin
        ([A, B, C], 3, "ffcfff", ["a", "a", "a", "a", "a", "b"]),  # a CONNACK starts the count again
        ([A, B, C], 1, "fff", ["b", "c", "a"]),
        ([A], 3, "fffff", ["a"] * 5),  # one broker: it stays
    ],
)
def test_a_broker_that_fails_its_attempts_in_a_row_hands_over_to_the_next(addresses, attempts, events, hosts):
    assert _trace(BrokerList.parse(addresses, attempts=attempts), events) == hosts


def test_failed_names_the_new_broker_only_when_it_moves():
    brokers = BrokerList.parse([A, B])
    moves = [brokers.failed() for _ in range(ATTEMPTS_PER_BROKER)]
    assert [m.host if m else None for m in moves] == [None] * (ATTEMPTS_PER_BROKER - 1) + ["b"]


def test_a_round_starts_at_the_current_broker():
    brokers = BrokerList.parse([A, B, C], attempts=1)
    assert [u.host for u in brokers.round()] == ["a", "b", "c"]
    brokers.failed()
    assert [u.host for u in brokers.round()] == ["b", "c", "a"]
    brokers.select(brokers.urls[2])
    assert brokers.current.host == "c"
