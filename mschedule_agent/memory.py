"""Give memory back to the system after large messages (glibc; a no-op elsewhere).

glibc's malloc serves a block of 128 KiB or more from a mapping of its own, but once such
a block is freed it raises that threshold (up to 32 MiB), so the next large blocks come
from the heap, which keeps what is freed. A daemon that once handled a 16 MB message (the
payload, its base64 text, the decoded script and their copies) kept all of it: an agent
stayed at 89 MB instead of 25, a master that stored 25 results of 8 MiB at 537 MB.
:class:`Trimmer` hands the free memory back after large messages.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

#: A message at least this large is followed by a trim.
LARGE_MESSAGE = 1024 * 1024


def _load() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the C library this interpreter runs on
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_size_t,)
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _load()


def trim() -> None:
    """Return the C heap's free memory to the system (madvise and a shorter heap)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


#: glibc's mallopt() parameter number for the mmap threshold.
M_MMAP_THRESHOLD = -3


def map_large_blocks(threshold: int = LARGE_MESSAGE) -> bool:
    """Serve every block of ``threshold`` bytes or more from its own mapping, returned to
    the system as soon as it is freed (glibc; False where there is nothing to set). Costs
    a mapping per large block: for the agent, which sees few large messages, not for the
    master, whose stream of large results :class:`Trimmer` handles."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


class Trimmer:
    """:meth:`note` each message's size (any thread); :meth:`tick` from a periodic loop
    trims once after large messages, when their handling is over and their buffers freed
    (a trim inside the message callback would run while paho still holds the payload)."""

    def __init__(self, threshold: int = LARGE_MESSAGE) -> None:
        self.threshold = threshold
        self._due = False
        self.trims = 0

    def note(self, size: int) -> None:
        if size >= self.threshold:
            self._due = True

    @property
    def due(self) -> bool:
        """A large message was noted since the last trim (its caches may be emptied first)."""
        return self._due

    def tick(self) -> None:
        if self._due:
            self._due = False
            trim()
            self.trims += 1


#: The process has one C heap, so one Trimmer for it: both daemons note into this one.
heap = Trimmer()
