"""The lines a followed output carries besides the script's bytes (``?follow=1``, :mod:`.follow`),
and how a follower reads its place in the stream back from what it received, to resume
with ``offset=N`` after a reconnect (:mod:`.cli_live`).

- ``\\n[mschedule: N bytes skipped]\\n`` stands for N bytes of the stream that are not there:
  the agent never sent them live, they were lost on the way, or the result no longer holds
  them. It counts as those N bytes of the stream.
- ``\\n[mschedule: N bytes skipped at byte X, from the result:]\\n`` then the bytes, then
  ``\\n[mschedule: end of the bytes from byte X]\\n``: once the target has ended, the bytes
  skipped earlier that its stored result holds (those this answer skipped, and those an
  earlier answer did, as ``holes=START-END,...`` names them). They come after the stream's
  last byte and are no part of its position (they were counted where they were skipped).

A script that prints such a line itself confuses only its own follower's resume position.
No imports beyond ``re``: the CLI loads this module (it starts in ~60 ms).
"""

from __future__ import annotations

import re

SKIPPED = re.compile(rb"\n\[mschedule: (\d+) bytes skipped\]\n")
FILLED = re.compile(rb"\n\[mschedule: (\d+) bytes skipped at byte (\d+), from the result:\]\n")
LONGEST = 128  #: bytes: longer than any marker line (two 20-digit numbers included)
ASKED_HOLES = 100  #: skipped ranges a follower remembers, and asks to have filled, at most


def skipped_line(n: int) -> bytes:
    return b"\n[mschedule: %d bytes skipped]\n" % n


def filled(start: int, data: bytes) -> bytes:
    """Skipped bytes from ``start`` on, given once the result has them."""
    return (b"\n[mschedule: %d bytes skipped at byte %d, from the result:]\n" % (len(data), start) + data
            + b"\n[mschedule: end of the bytes from byte %d]\n" % start)  # fmt: skip


class Position:
    """Where a follower is in the stream: the bytes it received, a skipped line counting as
    the bytes it stands for; nothing from the first filled part on (it comes at the end).
    ``holes``: the skipped ranges, ``(start, end)``, the first :data:`ASKED_HOLES` of them (a
    follower that reconnects asks for them to be filled: ``holes=START-END,...``)."""

    def __init__(self, pos: int = 0) -> None:
        self.pos = pos
        self.filling = False  #: a filled part began: the stream itself was over
        self.holes: list[tuple[int, int]] = []
        self._tail = b""  #: the last bytes received, where a marker may have begun

    def feed(self, piece: bytes) -> None:
        if self.filling or not piece:
            return
        buf, old = self._tail + piece, len(self._tail)
        fill = FILLED.search(buf)  # (one wholly in the tail would have stopped the count before)
        end = len(buf) if fill is None else fill.start()
        base = self.pos - old  # the place of buf[0], were every byte of buf a byte of the stream
        for m in SKIPPED.finditer(buf, 0, end):
            if m.end() > old:  # ends in this piece: not counted yet
                n = int(m.group(1))
                if len(self.holes) < ASKED_HOLES:
                    self.holes.append((base + m.start(), base + m.start() + n))
                base += n - len(m.group(0))
        self.pos = base + end
        self.filling = fill is not None
        self._tail = buf[:end][-LONGEST:]


def holes_text(holes: list[tuple[int, int]]) -> str:
    """``START-END,...``: the ``holes`` query parameter of a follow."""
    return ",".join(f"{a}-{b}" for a, b in holes[:ASKED_HOLES])


def parse_holes(text: str, offset: int) -> list[tuple[int, int]]:
    """The ``holes`` parameter; ValueError when it is not ``START-END,...`` with at most
    :data:`ASKED_HOLES` ranges, each non-empty, in order and below ``offset``."""
    holes: list[tuple[int, int]] = []
    for part in text.split(",") if text else []:
        a, sep, b = part.partition("-")
        if not (sep and a.isascii() and a.isdigit() and b.isascii() and b.isdigit()):
            raise ValueError(f"holes: {part[:40]!r} is not START-END")
        start, end = int(a), int(b)
        if not (holes[-1][1] if holes else 0) <= start < end <= offset:
            raise ValueError("holes: each range START-END ends after it starts, after the one before, by offset")
        holes.append((start, end))
    if len(holes) > ASKED_HOLES:
        raise ValueError(f"holes: at most {ASKED_HOLES} ranges")
    return holes


def rebuild(followed: bytes) -> bytes:
    """The stream as a whole follow's bytes give it: skipped lines as that many ``?``, then
    each filled part put in its place. Equal to the stored output when nothing stayed
    skipped (tests use it; a follower may too)."""
    fill = FILLED.search(followed)
    stream, fills = (followed, b"") if fill is None else (followed[: fill.start()], followed[fill.start() :])
    out = bytearray()
    last = 0
    for m in SKIPPED.finditer(stream):
        out += stream[last : m.start()] + b"?" * int(m.group(1))
        last = m.end()
    out += stream[last:]
    for m in FILLED.finditer(fills):
        n, at = int(m.group(1)), int(m.group(2))
        out[at : at + n] = fills[m.end() : m.end() + n]
    return bytes(out)
