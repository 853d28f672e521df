"""The CLI's live output: ``mschedule output TASK AGENT --follow`` and what ``mschedule run``
shows of its targets' output while they run (docs: README "Live output").

``follow_output`` copies the follow route's chunked answer to stdout as it comes (``tail
-f``, ending with the target); when the connection drops or the master restarts, it asks
again with ``offset=`` the bytes it has and ``holes=`` the ranges it was shown skipped
(:mod:`.followmarks`): nothing repeats, and the holes are filled at the end.
:class:`Lines` turns the task's ``output`` events into whole lines per target and stream,
for ``run --follow`` (``host: line``, interleaved like pdsh) and for the latest line per
target that ``run`` shows under its progress bar.
"""

from __future__ import annotations

import base64
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import quote

from .followmarks import ASKED_HOLES, Position, holes_text

#: A follow waits this long (seconds) for the master to send something: a quiet script
#: sends nothing for as long as it is quiet; a master that goes away closes the connection.
FOLLOW_READ_TIMEOUT = 24 * 3600.0
#: Seconds between two tries to follow again after the master went away (doubling up to 2 s).
RECONNECT_FIRST = 0.2
#: Longest line kept per target and stream before it is shown cut (a script printing
#: without newlines must not grow the CLI).
MAX_LINE = 4096
#: Targets whose latest line ``run`` shows under its progress bar (the most recent ones).
LATEST_ROWS = 8


def follow_output(client: Any, task_id: str, agent_id: str, stream: str, out: BinaryIO, *,
                  patience: float | None = None, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
    """Write one target's ``stream`` to ``out`` as it is written, until the target ends.
    An answer that breaks off, or ends while the target still runs (the master restarted),
    is asked for again from where it stopped, as long as the master answers within
    ``patience`` seconds (default: as ``run`` waits for a restarting master)."""
    from .cli import EXIT_UNREACHABLE, UNREACHABLE_PATIENCE, CliError

    patience = UNREACHABLE_PATIENCE if patience is None else patience
    at = Position()
    reached, delay, noted = clock(), RECONNECT_FIRST, False
    while True:
        try:
            _copy(client, task_id, agent_id, stream, at, out)
            if _ended(client, task_id, agent_id):
                return
            reached, delay = clock(), RECONNECT_FIRST  # it answered: the patience starts again
        except CliError as e:
            if e.status != EXIT_UNREACHABLE or clock() - reached > patience:
                raise
        except OSError:  # the answer broke off: the master went away mid-answer (it answered until now)
            reached, delay = clock(), RECONNECT_FIRST
        if at.filling:
            return  # the stream was over; a filled part broke off (the stored output has it all)
        if not noted:
            print(f"mschedule: the follow broke off at byte {at.pos}; following again from there",
                  file=sys.stderr, flush=True)  # fmt: skip
            noted = True
        sleep(delay)
        delay = min(2.0, delay * 2)


def _copy(client: Any, task_id: str, agent_id: str, stream: str, at: Position, out: BinaryIO) -> None:
    """One follow answer, from byte ``at.pos``, copied to ``out`` (OSError: it broke off)."""
    path = f"/api/v1/tasks/{quote(task_id, safe='')}/targets/{quote(agent_id, safe='')}/output"
    query = {"stream": stream, "follow": "1", "offset": str(at.pos) if at.pos else None,
             "holes": holes_text(at.holes) or None}  # fmt: skip
    resp = client.open("GET", path, query=query, timeout=FOLLOW_READ_TIMEOUT, accept="application/octet-stream")
    with resp:
        for piece in resp.pieces():
            out.write(piece)
            out.flush()
            at.feed(piece)


def _ended(client: Any, task_id: str, agent_id: str) -> bool:
    """Whether the target will write no more (its result is stored, or it has a final verdict)."""
    from .cli import TARGET_FINAL

    t = client.get(f"/api/v1/tasks/{quote(task_id, safe='')}")["targets"][agent_id]
    return t.get("agent_state") is not None or t["state"] in TARGET_FINAL


def chunk_bytes(data: dict[str, Any]) -> bytes:
    """The bytes of an ``output`` event's data (UTF-8 text or base64)."""
    text = data.get("data")
    if not isinstance(text, str):
        return b""
    if data.get("encoding") == "base64":
        try:
            return base64.b64decode(text)
        except ValueError:
            return b""
    return text.encode("utf-8", "surrogateescape")


class Lines:
    """Whole lines out of ``output`` events, per (target, stream); the latest per target."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, str], bytes] = {}
        self._ends: dict[tuple[str, str], int] = {}
        self._holes: dict[tuple[str, str], list[tuple[int, int]]] = {}  #: ranges shown skipped
        self._totals: dict[tuple[str, str], int] = {}  #: each stream's length, from ``output_end``
        self.hosts: dict[str, str] = {}
        self.latest: OrderedDict[str, str] = OrderedDict()  #: agent id -> its latest line, most recent last

    def name(self, agent_id: str) -> str:
        return self.hosts.get(agent_id) or agent_id

    def feed(self, data: dict[str, Any]) -> list[tuple[str, str, str]]:
        """One event's data -> the lines it completes, as ``(agent id, stream, text)``."""
        agent_id, stream = data.get("agent_id"), data.get("stream")
        offset = data.get("offset")
        if not isinstance(agent_id, str) or stream not in ("stdout", "stderr") or not isinstance(offset, int):
            return []
        if isinstance(data.get("hostname"), str):
            self.hosts[agent_id] = data["hostname"]
        key = (agent_id, stream)
        chunk = chunk_bytes(data)
        end = self._ends.get(key, 0)
        if offset + len(chunk) <= end:
            return []  # seen already (a re-read after a resync)
        lines: list[tuple[str, str, str]] = []
        self._ends[key] = offset + len(chunk)
        if offset > end:  # skipped by the agent, or lost on the way: say so (and fill it at the end)
            holes = self._holes.setdefault(key, [])
            if len(holes) < ASKED_HOLES:
                holes.append((end, offset))
            lines += self._flush(key)
            lines.append((agent_id, stream, f"[mschedule: {offset - end} bytes skipped]"))
        elif offset < end:
            chunk = chunk[end - offset :]
        buf = self._partial.get(key, b"") + chunk
        *whole, rest = buf.split(b"\n")
        if len(rest) > MAX_LINE:
            whole.append(rest[:MAX_LINE] + b" [...]")
            rest = b""
        self._partial[key] = rest
        lines += [(agent_id, stream, w.decode("utf-8", "replace")) for w in whole]
        for _, _, text in lines[-1:]:
            if text.strip():
                self.latest[agent_id] = text
                self.latest.move_to_end(agent_id)
        return lines

    def ended_at(self, data: dict[str, Any]) -> None:
        """An ``output_end`` event: how long each stream of its target is."""
        agent_id = data.get("agent_id")
        for stream in ("stdout", "stderr"):
            total = data.get(f"{stream}_bytes")
            if isinstance(agent_id, str) and isinstance(total, int):
                self._totals[(agent_id, stream)] = total

    def from_result(self, client: Any, task_id: str, agent_id: str) -> list[tuple[str, str, str]]:
        """A target has ended: what its lines lack (the bytes lost after the last chunk that
        came, and the ranges shown skipped), from the stored result through the follow
        route (``offset``, ``holes``), as lines. Nothing to ask when nothing is missing."""
        lines: list[tuple[str, str, str]] = []
        for stream in ("stdout", "stderr"):
            key = (agent_id, stream)
            end, holes = self._ends.get(key, 0), self._holes.pop(key, [])
            if not holes and self._totals.get(key, 0) <= end:
                continue
            path = f"/api/v1/tasks/{quote(task_id, safe='')}/targets/{quote(agent_id, safe='')}/output"
            query = {"stream": stream, "follow": "1", "offset": str(end), "holes": holes_text(holes) or None}
            try:
                with client.open("GET", path, query=query, timeout=60, accept="application/octet-stream") as resp:
                    rest = resp.read()
            except Exception:  # noqa: BLE001 - a view: the summary at the end has the output
                continue
            got = self.feed({"agent_id": agent_id, "stream": stream, "offset": end,
                             "data": base64.b64encode(rest).decode(), "encoding": "base64"})  # fmt: skip
            lines += [ln for i, ln in enumerate(got) if ln[2] or not _beside_mark(got, i)]
        return lines

    def finish(self, agent_id: str | None = None) -> list[tuple[str, str, str]]:
        """The unfinished last lines (of one target, or of all): the output ended there."""
        out: list[tuple[str, str, str]] = []
        for key in [k for k in self._partial if agent_id is None or k[0] == agent_id]:
            out += self._flush(key)
        return out

    def _flush(self, key: tuple[str, str]) -> list[tuple[str, str, str]]:
        rest = self._partial.pop(key, b"")
        return [(key[0], key[1], rest.decode("utf-8", "replace"))] if rest else []

    def prefixed(self, agent_id: str, text: str) -> str:
        """``host: line``, as pdsh prints."""
        return f"{self.name(agent_id)}: {text}"


def _beside_mark(lines: list[tuple[str, str, str]], i: int) -> bool:
    """Whether line ``i`` is next to a ``[mschedule: ...]`` line (the empty line its leading
    newline makes: not shown)."""
    return any(0 <= j < len(lines) and lines[j][2].startswith("[mschedule: ") for j in (i - 1, i + 1))
