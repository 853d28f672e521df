"""``mschedule schedule ...``: schedules from the command line (see docs/schedules.md).
Hooked into :func:`mschedule_master.cli.parser`.

    mschedule schedule add NAME --job JOB[@V] --cron EXPR [--tz ZONE] [--overlap POLICY]
                               [--misfire POLICY] [--paused] [run flags]
    mschedule schedule list | show NAME | pause NAME | resume NAME | rm NAME
    mschedule schedule next NAME [-n N]

Every command takes ``--json``. Fire times print in the schedule's zone.
"""

from __future__ import annotations

import argparse

from .cli import EXIT_OK, Client, command_help, escape, quote, when
from .cli import table as new_table
from .cli_jobs import add_run_flags, author, given_flags, print_json

TYPE_CHECKING = False  # rich, datetime and zoneinfo are imported where used (CLI start, issue 22)
if TYPE_CHECKING:
    from typing import Any

    from rich.console import Console

    from .cli import Command

OUTCOME_STYLE = {"fired": "green", "caught-up": "cyan", "missed": "yellow", "skipped-overlap": "yellow",
                 "queued": "blue", "not-started": "red"}  # fmt: skip


def at(ts: int | None, tz: str) -> str:
    """A fire time in the schedule's zone: ``2026-12-01 02:30 CET``."""
    if ts is None:
        return "-"
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def job_ref(doc: dict[str, Any]) -> str:
    """``backup@3``, or ``backup@default`` for a schedule that follows the job's default."""
    version = doc["version"]
    return f"{doc['job']}@{version}" if isinstance(version, int) else f"{doc['job']}{version}"


def _path(name: str, tail: str = "") -> str:
    return f"/api/v1/schedules/{quote(name)}{tail}"


# ------------------------------------------------------------------ commands


def cmd_add(client: Client, args: argparse.Namespace, console: Console) -> int:
    body: dict[str, Any] = {"name": args.schedule, "job": args.job, "cron": args.cron, "tz": args.tz,
                            "overlap": args.overlap, "misfire": args.misfire, "paused": args.paused,
                            "overrides": given_flags(args), "author": author()}  # fmt: skip
    doc = client.post("/api/v1/schedules", body)
    if args.json:
        return print_json(doc)
    console.print(f"schedule {escape(doc['name'])} added: {escape(_summary(doc))}")
    console.print(f"next fire time: {at(doc['next_fire'], doc['tz'])}" if doc["next_fire"] else "paused")
    return EXIT_OK


def _summary(doc: dict[str, Any]) -> str:
    return (f"{job_ref(doc)} on '{doc['cron']}' in {doc['tz']}, overlap {doc['overlap']}, "
            f"misfire {doc['misfire']}")  # fmt: skip


def cmd_list(client: Client, args: argparse.Namespace, console: Console) -> int:
    found = client.get("/api/v1/schedules")["schedules"]
    if args.json:
        return print_json(found)
    table = new_table(f"{len(found)} schedules")
    for col in ("NAME", "JOB", "CRON", "TZ", "OVERLAP", "MISFIRE", "STATE", "NEXT"):
        table.add_column(col)
    for d in found:
        state = "[yellow]paused[/]" if d["paused"] else "active"
        table.add_row(escape(d["name"]), escape(job_ref(d)), escape(d["cron"]), d["tz"],
                      d["overlap"], d["misfire"], state, at(d["next_fire"], d["tz"]))  # fmt: skip
    console.print(table)
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace, console: Console) -> int:
    doc = client.get(_path(args.schedule))
    if args.json:
        return print_json(doc)
    tz = doc["tz"]
    console.print(f"[bold]{escape(doc['name'])}[/]: {escape(_summary(doc))}")
    console.print(f"state: {'paused' if doc['paused'] else 'active'}; created {when(doc['created_at'])} "
                  f"by {escape(doc['created_by'])}")  # fmt: skip
    if doc["overrides"]:
        console.print(f"overrides: {escape(str(doc['overrides']))}")
    if doc["counts"]:
        console.print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["counts"].items())))
    if doc["missed_earlier"]:
        console.print(f"[yellow]{doc['missed_earlier']} older fire times missed (not listed one by one)[/]")
    console.print("next: " + ", ".join(at(t, tz) for t in doc["next"]))
    table = new_table("last runs, newest first")
    for col in ("FIRE TIME", "OUTCOME", "TASK", "STATE", "ERROR"):
        table.add_column(col)
    for r in doc["runs"]:
        style = OUTCOME_STYLE.get(r["outcome"], "")
        table.add_row(at(r["fire_time"], tz), f"[{style}]{r['outcome']}[/]", r["task_id"] or "-",
                      r["task_state"] or "-", escape(r["error"] or ""))  # fmt: skip
    console.print(table)
    return EXIT_OK


def cmd_pause(client: Client, args: argparse.Namespace, console: Console) -> int:
    return _done(client.post(_path(args.schedule, "/pause")), "paused", args, console)


def cmd_resume(client: Client, args: argparse.Namespace, console: Console) -> int:
    return _done(client.post(_path(args.schedule, "/resume")), "resumed", args, console)


def _done(doc: dict[str, Any], what: str, args: argparse.Namespace, console: Console) -> int:
    if args.json:
        return print_json(doc)
    tail = f"; next fire time {at(doc['next_fire'], doc['tz'])}" if doc["next_fire"] else ""
    console.print(f"schedule {escape(doc['name'])} {what}{tail}")
    return EXIT_OK


def cmd_rm(client: Client, args: argparse.Namespace, console: Console) -> int:
    doc = client._json(client.request("DELETE", _path(args.schedule)))
    if args.json:
        return print_json(doc)
    console.print(f"schedule {escape(args.schedule)} removed (its tasks stay)")
    return EXIT_OK


def cmd_next(client: Client, args: argparse.Namespace, console: Console) -> int:
    tz = client.get(_path(args.schedule))["tz"]
    times = client.get(_path(args.schedule, "/next"), n=args.n)["next"]
    if args.json:
        return print_json(times)
    from datetime import datetime
    from zoneinfo import ZoneInfo

    for t in times:
        console.print(f"{at(t, tz)}  ({datetime.fromtimestamp(t, ZoneInfo('UTC')).strftime('%H:%MZ')})")
    return EXIT_OK


# ------------------------------------------------------------------ parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``schedule`` to the ``mschedule`` subcommands."""
    s = sub.add_parser("schedule", help=command_help("schedule"))
    ss = s.add_subparsers(dest="schedule_cmd", required=True, metavar="SCHEDULE_COMMAND")

    p = ss.add_parser("add", help="run JOB[@V] on a cron expression")
    p.add_argument("schedule", metavar="NAME")
    p.add_argument("--job", required=True, metavar="JOB[@V]", help="@V pins a version; else the default at fire time")
    p.add_argument("--cron", required=True, metavar="EXPR", help="5 fields, or @hourly @daily @weekly ...")
    p.add_argument("--tz", default="UTC", metavar="ZONE", help="IANA zone the cron reads (default UTC)")
    p.add_argument("--overlap", default="skip", metavar="POLICY", help="skip (default), queue(N) or allow(N)")
    p.add_argument("--misfire", default="run_once", metavar="POLICY",
                   help="skip, run_once (default) or catch_up(N, DEADLINE)")  # fmt: skip
    p.add_argument("--paused", action="store_true", help="add it paused")
    add_run_flags(p)
    _add(p, cmd_add)

    _add(ss.add_parser("list", help="every schedule"), cmd_list)
    for name, fn, help_text in (
        ("show", cmd_show, "a schedule, its next fire times and its last runs with outcomes"),
        ("pause", cmd_pause, "pause: nothing fires until resumed"),
        ("resume", cmd_resume, "resume from now (the paused fire times do not run)"),
        ("rm", cmd_rm, "remove a schedule and its records (its tasks stay)"),
        ("next", cmd_next, "preview the next fire times"),
    ):
        p = ss.add_parser(name, help=help_text)
        p.add_argument("schedule", metavar="NAME")
        if name == "next":
            p.add_argument("-n", type=int, default=10, help="how many (default 10)")
        _add(p, fn)


def _add(p: argparse.ArgumentParser, fn: Command) -> None:
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=fn)
