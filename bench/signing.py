"""``python -m bench.signing``: what signing costs (issue 16), in-process, no broker.

The master seals one copy per agent (its header signed, the body hashed once per fan-out);
the agent verifies each copy (signature, then the body's sha256, then the script's). Prints
the median and p99 per copy for small and large scripts, with the machine's load.

    python -m bench.signing [--copies N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from mschedule_agent import keys
from mschedule_agent.gate import Gate
from mschedule_agent.protocol import Task, encode
from mschedule_master.sealing import Sealer


def _pcts(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s) * 1e6, s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6


def run(copies: int) -> list[str]:
    key = keys.generate()
    lines = [f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {copies} copies per size"]
    with tempfile.TemporaryDirectory() as d:
        trust = Path(d) / "trust.toml"
        import base64

        trust.write_text(f'[[keys]]\npublic = "{base64.b64encode(key.public).decode()}"\n')
        from mschedule_agent.trust import TrustStore

        store = TrustStore(trust)
        for size in (1024, 1024 * 1024):
            script = b"#" * size
            now = time.time()
            body = encode(Task(id="t" * 32, script=script, expires_at=now + 60))
            sealer = Sealer(key, clock=time.time)
            seal, opened = [], []
            for i in range(copies):
                aud = f"{i:032x}"
                t0 = time.perf_counter()
                data = sealer.task(body, task_id="t" * 32, script=script, agent_id=aud, expires_at=now + 60)
                seal.append(time.perf_counter() - t0)
                gate = Gate(agent_id=aud, mode="enforce", trust=store, now=time.time)
                t0 = time.perf_counter()
                gate.open(data, Task)
                opened.append(time.perf_counter() - t0)
            (s50, s99), (v50, v99) = _pcts(seal), _pcts(opened)
            lines.append(f"script {size:>8} B: seal p50 {s50:8.0f} us p99 {s99:8.0f} us | "
                         f"verify+decode p50 {v50:8.0f} us p99 {v99:8.0f} us")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.signing")
    p.add_argument("--copies", type=int, default=200)
    for line in run(p.parse_args().copies):
        print(line)


if __name__ == "__main__":
    main()
