"""How big the master's dispatch window should be (flow control, docs/rollout.md): the same
fan-out to ``n`` instant protocol-level agents (bench/ingest.py) with each window, the
master's share of the time and the most copies its queue held.

    python -m bench.flow_window 5000 250,1000,2000,5000
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness.broker import Mosquitto

from .client import BenchClient, check_summary
from .ingest import FakeAgents
from .master import MasterProc
from .scenarios import dispatch_peaks


def fanout(url: str, workdir: Path, n: int, window: int) -> dict[str, float]:
    prefix = f"bench-window-{uuid.uuid4().hex[:6]}"
    with MasterProc(url, prefix, workdir / f"w{window}", extra=["--dispatch-window", str(window)]) as master, \
            FakeAgents(url, prefix, n, respond=True) as fake:  # fmt: skip
        fake.register()
        master.wait_online(n, 120)
        with BenchClient(url, prefix) as client, dispatch_peaks(master, every=0.2) as peaks:
            done, seconds = client.run(fake.ids, timeout=300, parallel=n)
        problems = check_summary(done, fake.ids)
    return {"window": window, "agents": n, "seconds": round(seconds, 3), "peak_queued": peaks.get("queued", 0.0),
            "task_messages": fake.deliveries, "correct": not problems}  # fmt: skip


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 5000
    windows = [int(w) for w in (argv[1] if len(argv) > 1 else "250,1000,2000,5000").split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="mschedule-window-"))
    broker = Mosquitto(workdir / "broker", overrides={"connection_messages": "false"})
    broker.start()
    try:
        for window in windows:
            began = time.monotonic()
            print(fanout(broker.url, workdir, n, window), f"wall {time.monotonic() - began:.0f} s", flush=True)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
