"""``mschedule targets SELECTOR...``: which agents the selectors match now, before anything
runs (``POST /api/v1/targets/resolve``); and ``run``'s question before a wide rollout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli import EXIT_OK, EXIT_USAGE, Client, CliError, agents_table, command_help, plural
from .cli_ids import agent_selectors

#: A declined or refused wide rollout names this many of its hosts.
_SHOWN_HOSTS = 5


def add_commands(sub: Any) -> None:
    p = sub.add_parser("targets", help=command_help("targets"))
    p.add_argument("selector", nargs="+", metavar="SELECTOR", help="as run's -t (agent id or prefix, label, glob ...)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_targets)


def resolve(client: Client, selectors: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = client.post("/api/v1/targets/resolve", {"targets": selectors})
    return doc


def cmd_targets(client: Client, args: argparse.Namespace, console: Any) -> int:
    selectors = agent_selectors(client, args.selector)
    doc = resolve(client, selectors)
    if args.json:
        print(json.dumps(doc["agents"], indent=2))
        return EXIT_OK
    verb = "matches" if doc["count"] == 1 else "match"
    console.print(agents_table(doc["agents"], f"{plural(doc['count'], 'agent')} {verb} {' '.join(selectors)}"),
                  highlight=False)  # fmt: skip
    return EXIT_OK


def confirm(client: Client, selectors: list[str], limit: int, console: Any) -> None:
    """Return when the task may start: at most ``limit`` targets, or the user said yes.
    Raises CliError when it may not (declined, or no terminal to ask on)."""
    doc = resolve(client, selectors)
    n = doc["count"]
    if n <= limit:
        return
    hosts = [a["hostname"] for a in doc["agents"][:_SHOWN_HOSTS]]
    what = f"{plural(n, 'target')} ({', '.join(hosts)}{', ...' if n > len(hosts) else ''})"
    if not sys.stdin.isatty():
        raise CliError(f"{' '.join(selectors)} match {what}, more than {limit}: add --yes to start anyway "
                       "(or --confirm-over N)", EXIT_USAGE)  # fmt: skip
    console.print(f"Start on {what}? [y/N] ", end="", highlight=False, markup=False)
    try:
        answer = sys.stdin.readline()
    except (KeyboardInterrupt, OSError, ValueError):
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("not started", EXIT_USAGE)
