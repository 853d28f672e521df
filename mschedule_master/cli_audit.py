"""``mschedule audit``: read and check the audit trail (docs/security.md). Hooked into
:func:`mschedule_master.cli.parser`.

    mschedule audit [--task ID] [--action A] [--after SEQ] [--limit N] [--json]
    mschedule audit verify [--db PATH] [--json]

``verify`` asks the master, or with ``--db`` reads the database file itself (read-only), so
the check does not depend on the master it checks. Exit 0: the chain holds; 1: it does not.
"""

from __future__ import annotations

import argparse
import sqlite3
from typing import Any

from .cli import EXIT_OK, EXIT_TASK_FAILED, CliError, command_help, escape, when
from .cli import table as new_table
from .cli_jobs import print_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rich.console import Console

    from .cli import Client


def _what(r: dict[str, Any]) -> str:
    d = r["detail"]
    parts = [f"{k}={v}" for k, v in d.items() if v not in (None, "", [], {}) and k not in ("script_sha256",)]
    if d.get("script_sha256"):
        parts.append(f"sha256={d['script_sha256'][:12]}")
    return " ".join(parts)


def cmd_list(client: Client, args: argparse.Namespace, console: Console) -> int:
    doc = client.get("/api/v1/audit", task_id=args.task, action=args.action, after=args.after, limit=args.limit)
    if args.json:
        return print_json(doc)
    t = new_table(f"{len(doc['records'])} audit records, oldest first")
    for col in ("SEQ", "WHEN", "WHO", "ACTION", "TASK", "WHAT"):
        t.add_column(col)
    for r in doc["records"]:
        t.add_row(str(r["seq"]), when(r["at"]), escape(r["actor"]), r["action"], r["task_id"] or "-", escape(_what(r)))
    console.print(t)
    return EXIT_OK


def verify_file(path: str) -> dict[str, Any]:
    from .audit import verify

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise CliError(f"cannot open {path}: {e}") from None
    try:
        return verify(conn).as_json()
    except sqlite3.Error as e:
        raise CliError(f"cannot read the audit trail of {path}: {e}") from None
    finally:
        conn.close()


def cmd_verify(client: Client, args: argparse.Namespace, console: Console) -> int:
    doc = verify_file(args.db) if args.db else client.get("/api/v1/audit/verify")
    if args.json:
        print_json(doc)
    elif doc["ok"]:
        console.print(f"audit trail intact: {doc['count']} record(s), head {doc['head_seq']} {doc['head_hash']}")
    else:
        console.print(f"[red]audit trail damaged[/]: {doc['count']} record(s) read")
        for p in doc["problems"]:
            console.print(f"  {escape(p)}")
    return EXIT_OK if doc["ok"] else EXIT_TASK_FAILED


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = sub.add_parser("audit", help=command_help("audit"))
    a.add_argument("--task", metavar="ID", help="only this task's records")
    a.add_argument("--action", help="only this action (submit, kill, outcome, job_version, schedule_add, ...)")
    a.add_argument("--after", type=int, default=0, metavar="SEQ", help="records after this sequence number")
    a.add_argument("--limit", type=int, default=100)
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_list)
    asub = a.add_subparsers(dest="audit_cmd", metavar="COMMAND")
    v = asub.add_parser("verify", help="walk the hash chain: detect edited and deleted records (exit 1)")
    v.add_argument("--db", metavar="PATH", help="check this master database file directly (read-only)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_verify)
