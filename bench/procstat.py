"""CPU and memory of a process from /proc (Linux): what the resource targets are judged on."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  #: monotonic seconds
    cpu: float  #: user + system CPU seconds used so far
    rss: int  #: resident set size, bytes


def sample(pid: int) -> Sample:
    """One reading of ``pid``'s CPU time (utime+stime) and RSS. Raises OSError if it is gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime are fields 14, 15
    return Sample(time.monotonic(), cpu, rss_bytes(pid))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_uss_bytes(pid: int) -> tuple[int, int]:
    """(PSS, USS): RSS with shared pages split between their users, and private pages only.
    RSS counts every shared library page (libssl, libpython) in full."""
    pss = uss = 0
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            if key == b"Pss":
                pss = int(rest.split()[0]) * 1024
            elif key in (b"Private_Clean", b"Private_Dirty"):
                uss += int(rest.split()[0]) * 1024
    return pss, uss


def cpu_share(a: Sample, b: Sample) -> float:
    """Share of one core used between two samples (0.25 = 25 % of one core)."""
    wall = b.at - a.at
    return (b.cpu - a.cpu) / wall if wall > 0 else 0.0


class Watch:
    """Samples a process every ``interval`` seconds while the caller does something else:
    ``w.poll()`` from a wait loop, then ``w.summary()``."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[Sample] = [sample(pid)]

    def poll(self) -> None:
        if time.monotonic() - self.samples[-1].at >= self.interval:
            try:
                self.samples.append(sample(self.pid))
            except OSError:
                pass

    def summary(self) -> dict[str, float]:
        try:
            self.samples.append(sample(self.pid))
        except OSError:
            pass
        first, last = self.samples[0], self.samples[-1]
        return {
            "seconds": round(last.at - first.at, 2),
            "cpu_share": round(cpu_share(first, last), 4),
            "rss_max_mb": round(max(s.rss for s in self.samples) / 2**20, 1),
            "rss_end_mb": round(last.rss / 2**20, 1),
        }
