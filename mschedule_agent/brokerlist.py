"""The brokers a daemon may use (the nodes of one clustered broker), and which one is next.

``--broker`` takes one address or several: repeat the flag, or separate them with commas
(in the flag, the settings file and the environment alike; a file may also give a TOML
array). :class:`BrokerList` is the parsed list and the rotation over it, pure and without
I/O, so its rules are tested as a table: the transport connects to the current broker,
reports each failed attempt with :meth:`BrokerList.failed` and each CONNACK with
:meth:`BrokerList.connected`; after ``attempts`` failures in a row on one broker the next
one in the list becomes current (round robin). The reconnect backoff itself stays the
transport's (:func:`mschedule_agent.transport.backoff_delay`).

A persistent session survives the move only where the brokers share sessions: the nodes of
a NATS cluster do (JetStream replicates them); separate Mosquitto brokers, bridged or not,
do not (docs/deploy.md, "Several broker addresses").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transport import BrokerURL

#: Failed connection attempts in a row on one broker before the next one is tried.
ATTEMPTS_PER_BROKER = 3


def split_addresses(value: str | Iterable[str]) -> list[str]:
    """The addresses in ``value``: one string with comma-separated addresses, or several
    such strings (a repeated flag, a TOML array); blanks around each are dropped. A comma
    inside a password is written ``%2C``, as any reserved character of a URL's userinfo."""
    parts = [value] if isinstance(value, str) else list(value)
    return [a.strip() for part in parts for a in str(part).split(",") if a.strip()]


def join_addresses(value: str | Iterable[str]) -> str:
    """``value`` as one comma-separated string (how the settings keep it)."""
    return ",".join(split_addresses(value))


class BrokerList:
    """One or more broker URLs, tried in order; see the module docstring."""

    def __init__(self, urls: Sequence[BrokerURL], *, attempts: int = ATTEMPTS_PER_BROKER) -> None:
        if not urls:
            raise ValueError("no broker address given")
        if len({u.tls for u in urls}) > 1:
            raise ValueError("broker addresses mix mqtt:// and mqtts://: give one scheme for all of them")
        seen = [(u.host, u.port) for u in urls]
        dupes = sorted({f"{h}:{p}" for h, p in seen if seen.count((h, p)) > 1})
        if dupes:
            raise ValueError(f"broker address given twice: {', '.join(dupes)}")
        if attempts < 1:
            raise ValueError("attempts per broker must be >= 1")
        self.urls = tuple(urls)
        self.attempts = attempts
        self._index = 0
        self._failures = 0

    @classmethod
    def parse(cls, value: str | Iterable[str], *, attempts: int = ATTEMPTS_PER_BROKER) -> BrokerList:
        """Raises ValueError, whose message never holds a password."""
        from .transport import BrokerURL

        return cls([BrokerURL.parse(a) for a in split_addresses(value)], attempts=attempts)

    @property
    def current(self) -> BrokerURL:
        return self.urls[self._index]

    def round(self) -> list[BrokerURL]:
        """Every broker once, the current one first (a first connect takes the first that answers)."""
        return [*self.urls[self._index :], *self.urls[: self._index]]

    def select(self, url: BrokerURL) -> None:
        """Make ``url`` (one of the list) current, with no failures counted yet."""
        self._index = self.urls.index(url)
        self._failures = 0

    def failed(self) -> BrokerURL | None:
        """Count a failed attempt on the current broker; the next broker, now current, when
        this was its ``attempts``-th in a row (and the list has another), else None."""
        self._failures += 1
        if self._failures < self.attempts or len(self.urls) == 1:
            return None
        self.select(self.urls[(self._index + 1) % len(self.urls)])
        return self.current

    def connected(self) -> None:
        """The current broker accepted the connection: its failure count starts again."""
        self._failures = 0

    def __len__(self) -> int:
        return len(self.urls)

    def __str__(self) -> str:  # never prints a password
        return ",".join(str(u) for u in self.urls)
