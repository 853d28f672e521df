"""The follow route (``?follow=1``, mschedule_master/follow.py) and what a follower makes of
it (followmarks.py): ``offset=N`` resumes without repeats, and a chunk lost on the way is
marked skipped, then filled from the result once it comes (issue 14). Pure tables first,
then the real service (the Rig of conftest.py: real store and engine, no network) served
over HTTP, where a lost chunk can be made on purpose."""

from __future__ import annotations

import threading
import time

import pytest

from harness.api import serve_in_thread
from mschedule_agent.protocol import OutputChunk, Result, Started
from mschedule_master import cli_http
from mschedule_master.follow import HOLE_WAIT, _Position, fill_holes, held
from mschedule_master.followmarks import Position, filled, holes_text, parse_holes, rebuild, skipped_line
from mschedule_master.liveoutput import Chunk
from mschedule_master.models import Target
from mschedule_master.states import TargetState

# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("pieces", "pos"),
    [
        ([b"abc", b"de"], 5),
        ([b"ab" + skipped_line(7) + b"cd"], 11),  # a skipped line counts as the bytes it stands for
        ([b"ab\n[mschedule: 7 by", b"tes skipped]\ncd"], 11),  # cut anywhere
        ([b"ab\n[mschedule: 7 bytes skipped]", b"\n", b"cd"], 11),
        ([b"ab", skipped_line(3), skipped_line(4), b"c"], 10),
        ([b"abcd" + filled(1, b"xy") + b"more"], 4),  # a filled part: the stream was over
        ([b"abcd\n[mschedule: 2 bytes skipped at byte 1, from the result:]", b"\nxy", b"zz"], 4),
        ([b"[mschedule: 7 bytes skipped]"], 28),  # not a line of its own: the script's bytes
    ],
)
def test_a_follower_counts_its_place_in_the_stream(pieces, pos):
    at = Position()
    for p in pieces:
        at.feed(p)
    assert at.pos == pos


def test_a_follower_remembers_the_ranges_shown_skipped_however_the_lines_were_cut():
    at = Position(5)
    for p in (b"ab\n[mschedule: 7 by", b"tes skipped]\ncd", skipped_line(3), b"e"):
        at.feed(p)
    assert at.holes == [(7, 14), (16, 19)] and at.pos == 20
    assert holes_text(at.holes) == "7-14,16-19" and parse_holes("7-14,16-19", 20) == at.holes


@pytest.mark.parametrize("text", ["7-14,12-19", "5-5", "1-30", "a-b", "7", "7-14;", ",".join(["1-2"] * 101)])
def test_holes_that_do_not_fit_the_offset_are_refused(text):
    with pytest.raises(ValueError, match="holes"):
        parse_holes(text, 20)


def test_a_followers_holes_are_filled_from_the_result_as_far_as_it_holds_them():
    at = _Position(2)  # resumed at byte 2
    got = at.take([Chunk("stdout", 0, 0, b"abcd"), Chunk("stdout", 10, 6, b"kl")], 0.0)
    assert got == b"cd" + skipped_line(6) + b"kl" and at.holes == [(4, 10)]
    assert at.take([Chunk("stdout", 20, 0, b"uv")], 1.0) == b""  # 12..20 lost on the way: wait
    assert at.take([Chunk("stdout", 20, 0, b"uv")], 1.0 + HOLE_WAIT + 0.1) == skipped_line(8) + b"uv"
    assert at.holes == [(4, 10), (12, 20)]
    whole = Target(task_id="t", agent_id="a", state=TargetState.SUCCEED, stdout=bytes(range(65, 87)), stdout_bytes=22)
    assert fill_holes(whole, "stdout", at.holes) == filled(4, b"EFGHIJ") + filled(12, b"MNOPQRST")
    # cap 10 of a 22-byte stream: the head 0..5 and the tail 17..22 are kept
    cut = Target(task_id="t", agent_id="a", state=TargetState.SUCCEED, stdout=b"ABCDERSTUV", stdout_bytes=22,
                 stdout_truncated=True)  # fmt: skip
    assert held(cut, "stdout", 4, 10) == [(4, b"E")] and held(cut, "stdout", 12, 20) == [(17, b"RST")]
    assert held(cut, "stdout", 6, 16) == []


def test_rebuild_puts_the_filled_parts_in_their_holes():
    followed = b"ab" + skipped_line(3) + b"fg" + filled(2, b"cde")
    assert rebuild(followed) == b"abcdefg"


# --------------------------------------------------------------------------- over HTTP


class Follower(threading.Thread):
    def __init__(self, url: str, path: str) -> None:
        super().__init__(daemon=True)
        self.resp = cli_http.request(url, "GET", path, headers={}, body=None, timeout=30)
        self.data = b""
        self.start()

    def run(self) -> None:
        with self.resp:
            for piece in self.resp.pieces():
                self.data += piece

    def wait_for(self, needle: bytes, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.data and time.monotonic() < deadline:
            time.sleep(0.02)
        assert needle in self.data, self.data


@pytest.fixture
def served(rig):
    gen = serve_in_thread(rig.service)
    live = next(gen)
    try:
        yield rig, live
    finally:
        gen.close()


def start_task(rig, live) -> str:
    def go() -> str:
        rig.register("a1", hostname="web-1")
        task_id = rig.submit(["a1"]).task_id
        rig.from_agent("a1", Started(id=task_id, agent_id="a1", started_at=rig.clock()))
        return task_id

    return live.call(go)


def send(rig, live, task_id: str, seq: int, offset: int, data: bytes) -> None:
    msg = OutputChunk(id=task_id, agent_id="a1", seq=seq, stream="stdout", offset=offset, data=data)
    live.call(lambda: rig.feed(rig.incoming(rig.topics.output("a1", task_id), msg)))


def finish(rig, live, task_id: str, output: bytes) -> None:
    live.call(lambda: rig.from_agent("a1", Result(id=task_id, agent_id="a1", state="SUCCEED", code=0, output=output)))


def test_a_lost_chunk_is_marked_skipped_then_filled_from_the_result(served):
    rig, live = served
    task_id = start_task(rig, live)
    path = f"/api/v1/tasks/{task_id}/targets/a1/output?follow=1"
    follower = Follower(live.url, path)
    send(rig, live, task_id, 0, 0, b"one\n")
    send(rig, live, task_id, 2, 8, b"three\n")  # seq 1 (4..8, "two\n") lost on the way
    follower.wait_for(b"three\n", timeout=HOLE_WAIT + 5)
    assert follower.data == b"one\n" + skipped_line(4) + b"three\n"  # honest: marked, after HOLE_WAIT
    finish(rig, live, task_id, b"one\ntwo\nthree\nfour\n")
    follower.join(10)
    assert not follower.is_alive(), "the follow did not end with the target"
    assert follower.data == b"one\n" + skipped_line(4) + b"three\nfour\n" + filled(4, b"two\n")
    assert rebuild(follower.data) == b"one\ntwo\nthree\nfour\n"


def test_offset_resumes_a_follow_without_repeats_running_or_ended(served):
    rig, live = served
    task_id = start_task(rig, live)
    base = f"/api/v1/tasks/{task_id}/targets/a1/output"
    send(rig, live, task_id, 0, 0, b"one\ntwo\n")
    follower = Follower(live.url, base + "?follow=1&offset=4")
    follower.wait_for(b"two\n")
    assert follower.resp.headers["x-mschedule-offset"] == "4"
    send(rig, live, task_id, 1, 8, b"three\n")
    follower.wait_for(b"three\n")
    finish(rig, live, task_id, b"one\ntwo\nthree\nfour\n")
    follower.join(10)
    assert follower.data == b"two\nthree\nfour\n"
    ended = cli_http.request(live.url, "GET", base + "?follow=1&offset=14", headers={}, body=None, timeout=10)
    with ended:
        assert ended.read() == b"four\n"
    # a follower that saw 4..8 skipped in an earlier answer asks for it: filled at the end
    again = cli_http.request(live.url, "GET", base + "?follow=1&offset=14&holes=4-8", headers={}, body=None, timeout=10)
    with again:
        assert again.read() == b"four\n" + filled(4, b"two\n")
    for query, field in (("offset=4", "offset"), ("follow=1&offset=-1", "offset"), ("follow=1&offset=x", "offset"),
                         ("holes=1-2", "holes"), ("follow=1&offset=3&holes=1-4", "holes")):  # fmt: skip
        bad = cli_http.request(live.url, "GET", f"{base}?{query}", headers={}, body=None, timeout=10)
        with bad:
            assert bad.status == 400 and field in bad.read().decode()


def test_run_follow_shows_a_lost_chunk_skipped_then_fills_it_and_the_lost_end_from_the_result(served, capsys):
    from mschedule_agent.protocol import OutputEnd
    from mschedule_master import cli

    rig, live = served
    live.call(lambda: rig.register("a1", hostname="web-1"))
    sha = "0" * 64

    def agent() -> None:  # the agent's side, once the CLI watches the task's events
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (live.call(lambda: rig.service.tasks()) and live.open_streams()):
            time.sleep(0.02)
        (task,) = live.call(lambda: rig.service.tasks())
        live.call(lambda: rig.from_agent("a1", Started(id=task.id, agent_id="a1", started_at=rig.clock())))
        send(rig, live, task.id, 0, 0, b"one\n")
        send(rig, live, task.id, 2, 8, b"three\n")  # seq 1 ("two\n") and seq 3 ("four\n") lost on the way
        live.call(lambda: rig.feed(rig.incoming(rig.topics.output("a1", task.id), OutputEnd(
            id=task.id, agent_id="a1", seq=4, stdout_bytes=19, stderr_bytes=0, stdout_sha256=sha, stderr_sha256=sha))))
        time.sleep(0.3)  # (the CLI shows what came before the result)
        finish(rig, live, task.id, b"one\ntwo\nthree\nfour\n")

    feeder = threading.Thread(target=agent, daemon=True)
    feeder.start()
    assert cli.main(["--master", live.url, "run", "-t", "a1", "--follow", "-c", "echo"]) == 0
    feeder.join(10)
    shown = [ln.removeprefix("web-1: ") for ln in capsys.readouterr().out.splitlines() if ln.startswith("web-1: ")]
    assert shown == ["one", "[mschedule: 4 bytes skipped]", "three", "four",
                     "[mschedule: 4 bytes skipped at byte 4, from the result:]", "two",
                     "[mschedule: end of the bytes from byte 4]"], shown  # fmt: skip
