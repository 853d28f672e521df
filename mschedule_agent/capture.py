"""Bounded capture of one output stream: keeps the head and the tail, counts the rest."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Captured:
    data: bytes  #: head + tail when truncated, else everything
    total: int  #: bytes the stream produced
    truncated: bool


class HeadTail:
    """Feed chunks; memory stays below about ``3 * cap`` bytes whatever the stream's size.

    The first ``cap // 2`` bytes and the last ``cap - cap // 2`` bytes are kept.
    """

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError("cap must be >= 0")
        self.cap = cap
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if not chunk or self._tail_cap == 0:
            return
        if len(chunk) >= self._tail_cap:
            self._tail = bytearray(chunk[-self._tail_cap:])
            return
        self._tail += chunk
        if len(self._tail) > 2 * self._tail_cap:
            del self._tail[: len(self._tail) - self._tail_cap]

    def result(self) -> Captured:
        truncated = self.total > self.cap
        tail = bytes(self._tail[-self._tail_cap:]) if self._tail_cap else b""
        return Captured(bytes(self._head) + tail, self.total, truncated)
