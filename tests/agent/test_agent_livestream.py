"""LiveOutput (mschedule_agent/livestream.py): pure, with a hand-driven clock and a
publisher whose acknowledgements the test controls."""

from __future__ import annotations

import hashlib

import pytest

from mschedule_agent.livestream import LiveOutput
from mschedule_agent.protocol import OutputChunk, OutputEnd, decode


class Pub:
    def __init__(self) -> None:
        self.acked = False

    def wait(self, timeout: float) -> bool:
        return self.acked


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[object, Pub]] = []
        self.connected = True
        self.now = 100.0

    def publish(self, payload: bytes, qos: int) -> Pub:
        pub = Pub()
        self.sent.append((decode(payload), pub))
        return pub

    def ack_all(self) -> None:
        for _, pub in self.sent:
            pub.acked = True

    def chunks(self) -> list[OutputChunk]:
        return [m for m, _ in self.sent if isinstance(m, OutputChunk)]

    def end(self) -> OutputEnd:
        ends = [m for m, _ in self.sent if isinstance(m, OutputEnd)]
        assert len(ends) == 1
        return ends[0]


def live(wire: Wire, **kw: object) -> LiveOutput:
    return LiveOutput(
        task_id="t1", agent_id="a1", publish=wire.publish, connected=lambda: wire.connected,
        new_digest=hashlib.sha256, clock=lambda: wire.now, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def rebuild(chunks: list[OutputChunk], stream: str) -> bytes:
    out = bytearray()
    for c in chunks:
        if c.stream == stream:
            assert c.offset == len(out) + c.skipped
            out += b"?" * c.skipped + c.data
    return bytes(out)


def test_a_small_write_waits_for_the_flush_interval_then_goes_out():
    w = Wire()
    lo = live(w)
    lo.feed("stdout", b"start\n")
    assert w.chunks() == []
    assert lo.due_in(w.now) == pytest.approx(0.2)
    w.now += 0.2
    lo.poll()
    assert [(c.seq, c.stream, c.offset, c.data) for c in w.chunks()] == [(0, "stdout", 0, b"start\n")]
    assert lo.due_in(w.now) is None


def test_32_kib_waiting_flush_at_once_and_the_end_marker_has_totals_and_digests():
    w = Wire()
    lo = live(w)
    data = bytes(range(256)) * 300  # 76,800 bytes, not UTF-8
    lo.feed("stdout", data)
    lo.feed("stderr", b"err")
    assert [len(c.data) for c in w.chunks()] == [32768, 32768]
    w.ack_all()
    lo.close()
    assert rebuild(w.chunks(), "stdout") == data
    assert rebuild(w.chunks(), "stderr") == b"err"
    end = w.end()
    assert (end.stdout_bytes, end.stderr_bytes, end.skipped) == (len(data), 3, 0)
    assert end.stdout_sha256 == hashlib.sha256(data).hexdigest()
    assert end.stderr_sha256 == hashlib.sha256(b"err").hexdigest()
    assert end.seq == len(w.chunks()) == 4
    assert [c.seq for c in w.chunks()] == [0, 1, 2, 3]


def test_a_slow_broker_holds_back_the_stream_keeping_head_and_tail_and_saying_what_it_skipped():
    w = Wire()
    lo = live(w, window=2, hold_bytes=1000, chunk_bytes=500)
    total = b"".join(b"%06d\n" % i for i in range(100_000))  # 700,000 bytes, never acknowledged
    for i in range(0, len(total), 7000):
        lo.feed("stdout", total[i : i + 7000])
        w.now += 0.05
    assert len(w.chunks()) == 2  # the window: nothing more while unacknowledged
    w.ack_all()
    lo.close()
    chunks = w.chunks()
    # the 2 first chunks are the head (1000 bytes); then, after the gap, the rolling tail
    head_end = chunks[1].offset + len(chunks[1].data)
    assert head_end == 1000
    gap = [c for c in chunks if c.skipped]
    assert len(gap) == 1 and gap[0].offset == len(total) - 1000
    assert gap[0].offset - gap[0].skipped == head_end
    got = rebuild(chunks, "stdout")
    assert got[:head_end] == total[:head_end]
    assert got[-1000:] == total[-1000:] and len(got) == len(total)
    end = w.end()
    assert end.stdout_bytes == len(total) and end.skipped == gap[0].skipped
    assert end.stdout_sha256 == hashlib.sha256(total).hexdigest()  # the digest covers every byte


def test_memory_held_stays_bounded_whatever_is_written_while_disconnected():
    w = Wire()
    w.connected = False
    lo = live(w, hold_bytes=4096)
    for _ in range(300):
        lo.feed("stdout", b"x" * 65536)  # ~20 MB
    held = sum(len(s.head) + len(s.tail) for s in lo._streams.values())
    assert held <= 2 * 4096
    assert w.sent == []
    w.connected = True
    lo.close()
    assert w.end().skipped == 300 * 65536 - len(rebuild(w.chunks(), "stdout").replace(b"?", b""))


def test_a_failing_publisher_stops_the_live_view_but_never_raises():
    w = Wire()

    def broken(payload: bytes, qos: int) -> Pub:
        raise RuntimeError("boom")

    lo = LiveOutput(task_id="t1", agent_id="a1", publish=broken, connected=lambda: True, new_digest=hashlib.sha256,
                    clock=lambda: w.now)  # fmt: skip
    lo.feed("stdout", b"x" * 40000)
    lo.feed("stdout", b"more")
    lo.close()
    assert lo.due_in(w.now) is None


def test_a_fast_writer_streams_its_burst_then_at_the_rate_and_skips_the_rest():
    w = Wire()
    lo = live(w, rate_bytes=100_000, burst_bytes=200_000, hold_bytes=50_000)
    for _ in range(100):  # 3.2 MB in one second, acknowledged at once
        lo.feed("stdout", b"y" * 32768)
        w.ack_all()
        w.now += 0.01
    sent = sum(len(c.data) for c in w.chunks())
    assert 200_000 <= sent <= 200_000 + 100_000 * 1.0 + 32768  # the burst, then ~1 s at the rate
    w.now += 1.0
    w.ack_all()
    lo.close()
    end = w.end()
    assert end.stdout_bytes == 100 * 32768
    assert end.skipped == end.stdout_bytes - sum(len(c.data) for c in w.chunks())
    assert rebuild(w.chunks(), "stdout").endswith(b"y" * 1000)
