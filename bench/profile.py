"""Where the time goes: py-spy attached to a running process (the master, a fleet worker)
while a scenario's measured phase runs, summarised as the functions with the largest share
of samples, by own time (self) and including callees (total)."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: The checkout's root: frames of its own files are shown relative to it.
ROOT = str(Path(__file__).resolve().parent.parent)


def py_spy() -> str | None:
    return shutil.which("py-spy") or (str(Path(sys.executable).parent / "py-spy") if (Path(sys.executable).parent / "py-spy").exists() else None)


@contextmanager
def recording(pid: int, out: Path, *, rate: int = 250, idle: bool = False, gil: bool = False):
    """Record ``pid`` with py-spy while the block runs; yields a dict filled with the summary
    afterwards (empty when py-spy is not installed: ``pip install -e '.[bench]'``). ``gil``:
    only the thread holding the GIL is sampled, i.e. where the CPU goes, not who waits for it
    (a thread waiting to re-take the GIL after an SQLite call otherwise shows there)."""
    summary: dict = {}
    binary = py_spy()
    if binary is None:
        log.warning("py-spy is not installed; no profile (pip install -e '.[bench]')")
        yield summary
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking",
            "--threads"]  # fmt: skip
    if idle:
        argv.append("--idle")
    if gil:
        argv.append("--gil")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield summary
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if out.exists():
            summary.update(summarise(out.read_text(errors="replace")))
            summary["file"] = str(out)
        else:
            summary["error"] = (err or b"").decode(errors="replace")[-500:]


def _frame(text: str) -> str:
    """``func (path/to/file.py:123)`` -> ``file.py:func`` (package-relative when possible)."""
    name, _, where = text.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", f"{ROOT}/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{name.strip()}"


#: Leaf frames that are a thread waiting, not working. py-spy's own idle detection misses
#: some of them here (paho's select() shows up as a line of Client._loop).
IDLE_LEAVES = (
    "selectors.py:EpollSelector.select",
    "selectors.py:PollSelector.select",
    "selectors.py:SelectSelector.select",
    "paho/mqtt/client.py:Client._loop",
    "threading.py:Condition.wait",
    "threading.py:Event.wait",
    "threading.py:Thread.join",
    "threading.py:Thread._wait_for_tstate_lock",
    "subprocess.py:Popen._try_wait",
    "queue.py:Queue.get",
)


def _is_label(element: str) -> bool:
    """A collapsed stack's thread or process label (``thread (7317): MainThread`` with
    ``--threads``, ``process 42:"cmd"`` with ``--subprocesses``), not a frame: without
    ``--threads`` the first element is a real frame (``<module> (x.py:6)``) and must count."""
    return element.startswith(("thread (", "process "))


def summarise(raw: str, top: int = 15) -> dict:
    """Self and total shares of the busy samples per function (and per thread, when the
    stacks are labelled), from py-spy's collapsed-stack output (a thread waiting in
    select()/a condition is not counted)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        elements = stack.split(";")
        labels = []
        while elements and _is_label(elements[0]):
            labels.append(elements.pop(0))
        frames = [_frame(f) for f in elements]
        if not frames:  # a labelled thread with no Python frame: not running Python code
            idle += n
            continue
        if frames[-1] in IDLE_LEAVES:
            idle += n
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
        thread = next((lab.partition(": ")[2] or lab for lab in labels if lab.startswith("thread (")), None)
        if thread is not None:
            threads[thread] += n
    if not samples:
        return {"samples": 0, "idle_samples": idle}

    def share(c: Counter[str]) -> list[list]:
        return [[name, round(100 * n / samples, 1)] for name, n in c.most_common(top)]

    summary = {"samples": samples, "idle_samples": idle, "self_pct": share(own), "total_pct": share(total)}
    if threads:
        summary["threads_pct"] = share(threads)
    return summary
