"""Scenario 6 (issue 14): does live output make the master fall behind the results?

A fan-out of a script printing ~100 lines/s for a few seconds to N simulated agents (the
agent's real core and executor, so each runs a real process and streams its output), once
with live output off and once on. Measured: the master's CPU seconds over the run, the run's
wall time, and how long after the last script ended its result was stored (the master's
``finished_at`` minus the latest target's end)."""

from __future__ import annotations

from typing import Any

from .client import BenchClient, check_summary
from .fleetsim import Fleet
from .master import MasterProc
from .report import Check, Outcome

#: ~100 lines a second: perl prints, flushes and sleeps 10 ms in one light process.
SCRIPT = "perl -e '$|=1; for my $i (1..{lines}) {{ print \"line $i of a chatty script\\n\"; select(undef, undef, undef, 0.01) }}'"


def _one_run(client: BenchClient, master: MasterProc, ids: list[str], roles: dict[str, list[int]], script: str,
             stream: bool, o: Outcome) -> dict[str, Any]:  # fmt: skip
    from .scenarios import cpu_seconds

    before = cpu_seconds(roles)
    done, seconds = client.run(ids, timeout=max(120, len(ids) / 5), script=script, parallel=len(ids), stream=stream)
    after = cpu_seconds(roles)
    o.problems.extend(check_summary(done, ids))
    task = master.get(f"/api/v1/tasks/{done.task_id}", timeout=60)
    ends = [t["finished_at"] for t in task["targets"].values() if t.get("finished_at")]
    out = {role: round(after[role] - before[role], 2) for role in before}
    lost = [t for t in task["targets"].values() if t.get("output_bytes", 0) == 0]
    if lost:
        o.problems.append(f"{len(lost)} target(s) stored no output with stream={stream}")
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": out,
        "last_result_lag_s": round(task["finished_at"] - max(ends), 3) if ends and task.get("finished_at") else None,
    }


def scenario_6(ctx: Any) -> Outcome:
    """Fan-out of a script printing 100 lines/s: live output off vs on."""
    from .scenarios import _finish, _runs_check, cpu_of

    sizes = ctx.size("s6_sizes", [50], [100, 500])
    lines = ctx.size("s6_lines", 200, 300)
    script = SCRIPT.format(lines=lines)
    o = Outcome("6", f"fan-out printing 100 lines/s for {lines / 100:g} s, live output off vs on",
                params={"sizes": sizes, "lines": lines})  # fmt: skip
    for size in sizes:
        prefix = ctx.prefix(f"s6-{size}")
        d = ctx.dir(f"s6-{size}")
        with Fleet(ctx.broker.url, prefix, d, size) as fleet, MasterProc(ctx.broker.url, prefix, d) as master:
            master.wait_online(size, 120)
            with BenchClient(ctx.broker.url, prefix) as client:
                roles = cpu_of(ctx, master, fleet)
                for stream in (False, True):
                    o.metrics[f"{'on' if stream else 'off'}_{size}"] = _one_run(client, master, fleet.ids, roles, script,
                                                                             stream, o)  # fmt: skip
            _runs_check(fleet, 2 * size, o)
    big = sizes[-1]
    on, off = o.metrics[f"on_{big}"], o.metrics[f"off_{big}"]
    o.checks = [
        Check(f"{big} agents: result lag with live output on", on["last_result_lag_s"], 1.0, "s"),
        Check(f"{big} agents: run time on / off", round(on["seconds"] / off["seconds"], 2), 1.5, "x"),
    ]
    for size in sizes:
        a, b = o.metrics[f"off_{size}"], o.metrics[f"on_{size}"]
        o.info.append((f"{size} agents", f"off: {a['seconds']:g} s, master CPU {a['cpu_seconds'].get('master')} s; "
                       f"on: {b['seconds']:g} s, master CPU {b['cpu_seconds'].get('master')} s, "
                       f"result lag {b['last_result_lag_s']} s"))  # fmt: skip
    return _finish(o)
