"""daemon.settle_heap: after start-up the master's heap is frozen out of the cyclic
collector's scans and the collector runs at GC_THRESHOLDS; cyclic garbage made later is
still collected."""

from __future__ import annotations

import gc
import weakref

from mschedule_master.daemon import GC_THRESHOLDS, settle_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_heap_freezes_what_lives_and_still_collects_later_cycles():
    thresholds = gc.get_threshold()
    try:
        long_lived = [_Node() for _ in range(100)]
        settle_heap()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() >= len(long_lived)  # no longer scanned
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle made after start-up
        gone = weakref.ref(a)
        del a, b
        for _ in range(10):  # a collection another thread has under way makes collect() a no-op
            gc.collect()
            if gone() is None:
                break
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
