"""``mschedule job ...``, ``mschedule rerun`` and ``mschedule history``: jobs from the
command line (see docs/jobs.md). Hooked into :func:`mschedule_master.cli.parser`.

    mschedule job save NAME FILE [-m MSG] [--description TEXT] [defaults flags]
    mschedule job list | show NAME[@VERSION] | history NAME | diff NAME V1 V2
    mschedule job default NAME VERSION|latest
    mschedule job run NAME[@VERSION] [run flags]
    mschedule job push DIR [-m MSG]      mschedule job pull NAME[@VERSION] DIR
    mschedule rerun TASK [--failed]      mschedule history AGENT

Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import cli_args
from .cli import (
    EXIT_OK,
    EXIT_USAGE,
    Client,
    CliError,
    add_confirm_flags,
    add_plan_flags,
    b64,
    command_help,
    escape,
    finish,
    follow,
    plan_flag,
    quote,
    styled,
    when,
)
from .cli import table as new_table

# rich, the jobs module (hashlib, tomllib, orjson) and getpass are imported where used (CLI start, issue 22).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from rich.console import Console


def author() -> str:
    """Who saves or runs: ``user@host`` of this shell."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """``NAME@VERSION`` -> (NAME, VERSION); the version may be a number, latest or default."""
    name, sep, version = ref.rpartition("@")
    if not sep:
        return ref, None
    if not (version.isdigit() or version in ("latest", "default")):
        raise CliError(f"bad version {version!r} in {ref!r}: use NAME@N, NAME@latest or NAME@default")
    return name, version


def print_json(doc: Any) -> int:
    print(json.dumps(doc, indent=2))
    return EXIT_OK


# ------------------------------------------------------------------ flags


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """``run``'s flags, each without a default: only those given override (or set) a
    job's defaults."""
    p.add_argument("-t", "--target", action="append", metavar="SELECTOR", help="agent id or selector (repeatable)")
    p.add_argument("--parallel", type=cli_args.parallel, metavar="N|N%", help="targets running at once")
    p.add_argument("--fail-count", type=cli_args.fail_count, metavar="N", help="abort after more than N failures")
    p.add_argument("--fail-rate", type=cli_args.fail_rate, metavar="R|N%", help="abort when failures exceed this share")
    p.add_argument("--timeout", type=cli_args.seconds, metavar="S", help="seconds per target (0 = none)")
    p.add_argument("--on-abort", choices=("kill", "drain"))
    p.add_argument("--name", help="the task's name (default NAME@VERSION)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE")
    p.add_argument("--cwd")
    add_plan_flags(p)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run fields the flags give, as ``submit`` fields."""
    out: dict[str, Any] = {}
    if args.target:
        out["targets"] = args.target
    if args.parallel is not None:
        out["parallel"] = args.parallel
    if args.fail_count is not None:
        out["fail_count"] = args.fail_count
    if args.fail_rate is not None:
        out["fail_rate"] = args.fail_rate
    if args.timeout is not None:
        out["timeout"] = args.timeout
    if args.on_abort is not None:
        out["on_abort"] = args.on_abort
    if args.name:
        out["name"] = args.name
    if args.env:
        out["env"] = parse_env(args.env)
    if args.cwd:
        out["cwd"] = args.cwd
    task_plan = plan_flag(args)
    if task_plan is not None:
        out["plan"] = task_plan
    return out


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CliError(f"env: {item!r} is not KEY=VALUE")
        env[k] = v
    return env


# ------------------------------------------------------------------ commands


def latest_or_none(client: Client, name: str) -> dict[str, Any] | None:
    try:
        latest: dict[str, Any] = client.get(f"/api/v1/jobs/{quote(name)}/versions/latest")
        return latest
    except CliError as e:
        if "not found" in str(e):
            return None
        raise


def open_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cmd_save(client: Client, args: argparse.Namespace, console: Console) -> int:
    try:
        script = sys.stdin.buffer.read() if args.file == "-" else open_bytes(args.file)
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    previous = None if args.clear_defaults else latest_or_none(client, args.job)
    defaults = {**(previous or {}).get("defaults", {}), **given_flags(args)}
    description = args.description if args.description is not None else (previous or {}).get("description", "")
    body = {"script": b64(script), "description": description, "defaults": defaults,
            "message": args.message or "", "author": author()}  # fmt: skip
    doc = client.post(f"/api/v1/jobs/{quote(args.job)}/versions", body)
    if args.json:
        return print_json(doc)
    if doc["created"]:
        sha = doc["script_sha256"][:12]
        console.print(f"{doc['job']}: version {doc['version']} saved (sha256 {sha})", markup=False)
    else:
        console.print(f"{doc['job']}: unchanged, still version {doc['version']}", markup=False)
    return EXIT_OK


def cmd_list(client: Client, args: argparse.Namespace, console: Console) -> int:
    found = client.get("/api/v1/jobs")["jobs"]
    if args.json:
        return print_json(found)
    table = new_table(f"{len(found)} jobs")
    for col in ("Name", "Latest", "Default", "Description", "Saved", "By"):
        table.add_column(col, overflow="fold")
    for j in found:
        default = f"{j['default_version']}{' (pinned)' if j['pinned'] else ''}"
        table.add_row(escape(j["name"]), str(j["latest"]), default, escape(j["description"]), when(j["updated_at"]),
                      escape(j["author"]))  # fmt: skip
    console.print(table)
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace, console: Console) -> int:
    name, version = split_ref(args.ref)
    doc = client.get(f"/api/v1/jobs/{quote(name)}/versions/{quote(version or 'default')}")
    if args.json:
        return print_json(doc)
    console.print(f"{doc['job']}@{doc['version']}  saved {when(doc['created_at'])} by {doc['author']}"
                  f"{': ' + doc['message'] if doc['message'] else ''}", markup=False)  # fmt: skip
    console.print(f"script sha256 {doc['script_sha256']}", markup=False)
    if doc["description"]:
        console.print(f"description: {doc['description']}", markup=False)
    from . import jobs

    text = jobs.defaults_toml(doc["defaults"]).rstrip("\n")
    console.print("defaults:" + ("\n" + text if text else " none"), markup=False)
    console.rule("script", align="left")
    script = doc["script"] if doc["script_encoding"] == "utf-8" else "(binary script, base64)\n" + doc["script"]
    console.print(script.rstrip("\n"), markup=False, highlight=False)
    return EXIT_OK


def cmd_history(client: Client, args: argparse.Namespace, console: Console) -> int:
    doc = client.get(f"/api/v1/jobs/{quote(args.job)}")
    runs = client.get(f"/api/v1/jobs/{quote(args.job)}/runs", limit=args.limit)["runs"]
    if args.json:
        return print_json({"job": doc, "runs": runs})
    versions = new_table(f"{doc['name']}: versions (default {doc['default_version']})")
    for col in ("Version", "Saved", "By", "Message", "Script sha256"):
        versions.add_column(col, overflow="fold")
    for v in doc["versions"]:
        versions.add_row(str(v["version"]), when(v["created_at"]), escape(v["author"]), escape(v["message"]),
                         v["script_sha256"][:16])  # fmt: skip
    console.print(versions)
    table = new_table(f"{doc['name']}: runs, newest first")
    for col in ("Task", "Version", "Started", "By", "State", "Targets", "Re-run of"):
        table.add_column(col, overflow="fold")
    for r in runs:
        counts = " ".join(f"{k}={n}" for k, n in sorted(r["counts"].items()))
        table.add_row(r["task_id"], str(r["version"]), when(r["created_at"]), escape(r["submitted_by"] or "-"),
                      styled(r["state"]), counts, r["rerun_of"] or "")  # fmt: skip
    console.print(table)
    return EXIT_OK


def cmd_diff(client: Client, args: argparse.Namespace, console: Console) -> int:
    doc = client.get(f"/api/v1/jobs/{quote(args.job)}/diff", **{"from": args.v1, "to": args.v2})
    if args.json:
        return print_json(doc)
    print(doc["diff"] or f"{args.job}@{doc['from']} and @{doc['to']} are identical")
    return EXIT_OK


def cmd_default(client: Client, args: argparse.Namespace, console: Console) -> int:
    if args.version == "latest":
        version = None
    elif args.version.isdigit():
        version = int(args.version)
    else:
        raise CliError("VERSION is a version number or 'latest'")
    doc = client.post(f"/api/v1/jobs/{quote(args.job)}/default", {"version": version})
    if args.json:
        return print_json(doc)
    how = "pinned" if doc["pinned"] else "the latest"
    console.print(f"{doc['name']}: default version {doc['default_version']} ({how})", markup=False)
    return EXIT_OK


def cmd_run(client: Client, args: argparse.Namespace, console: Console) -> int:
    from . import cli_ids, cli_targets

    name, version = split_ref(args.ref)
    if args.target:
        args.target = cli_ids.agent_selectors(client, args.target)
    if not args.yes:  # as ``mschedule run``: ask before a wide rollout (the job's own targets too)
        targets = run_targets(client, name, version, args.target)
        if targets:  # none: the master says what is missing
            cli_targets.confirm(client, targets, args.confirm_over, console)
    body = {**given_flags(args), "author": author()}
    if version is not None:
        body["version"] = int(version) if version.isdigit() else version  # or latest / default
    task = client.post(f"/api/v1/jobs/{quote(name)}/run", body)
    return _follow_task(client, task, args, console, f"{name}@{task['job_version']}")


def run_targets(client: Client, name: str, version: str | None, given: list[str] | None) -> list[str]:
    """The selectors a job run starts on: ``-t`` when given, else the version's defaults."""
    if given:
        return given
    doc = client.get(f"/api/v1/jobs/{quote(name)}/versions/{quote(version or 'default')}")
    targets: list[str] = doc["defaults"].get("targets") or []
    return targets


def cmd_rerun(client: Client, args: argparse.Namespace, console: Console) -> int:
    task = client.post(f"/api/v1/tasks/{quote(args.task)}/rerun", {"failed": args.failed, "author": author()})
    return _follow_task(client, task, args, console, f"re-run of {args.task}")


def _follow_task(client: Client, task: dict[str, Any], args: argparse.Namespace, console: Console, what: str) -> int:
    """As ``mschedule run`` does: print the id (--no-wait) or follow the task to its end."""
    if args.no_wait:
        return print_json(task) if args.json else (print(task["id"]) or EXIT_OK)
    if not args.json:
        n = task["target_count"]
        console.print(f"task [bold]{task['id']}[/] ({escape(what)}) submitted to {n} target{'s' if n != 1 else ''} "
                      f"(parallel {task['parallel']})", highlight=False)  # fmt: skip
    done = follow(client, task["id"], console, show=not args.json)
    return finish(done, console, args.json, all_output=args.show_output)


def cmd_push(client: Client, args: argparse.Namespace, console: Console) -> int:
    from . import jobs

    try:
        found = jobs.read_dir(args.dir)  # every file checked before anything is saved
    except jobs.JobError as e:
        raise CliError(f"{e}; nothing saved", EXIT_USAGE) from None
    if not found:
        raise CliError(f"{args.dir}: no job files here")
    message = args.message or f"job push {args.dir}"
    results = []
    for f in found:
        c = f.content
        body = {"script": b64(c.script), "description": c.description, "defaults": c.defaults,
                "message": message, "author": author()}  # fmt: skip
        doc = client.post(f"/api/v1/jobs/{quote(f.name)}/versions", body)
        results.append({"job": f.name, "version": doc["version"], "created": doc["created"], "file": f.path})
    if args.json:
        return print_json(results)
    for r in results:
        state = f"version {r['version']} saved" if r["created"] else f"unchanged (version {r['version']})"
        console.print(f"{r['job']}: {state}", markup=False)
    return EXIT_OK


def cmd_pull(client: Client, args: argparse.Namespace, console: Console) -> int:
    name, version = split_ref(args.ref)
    doc = client.get(f"/api/v1/jobs/{quote(name)}/versions/{quote(version or 'default')}")
    import base64

    from . import jobs

    script = doc["script"].encode() if doc["script_encoding"] == "utf-8" else base64.b64decode(doc["script"])
    content = jobs.make_content(script, doc["description"], doc["defaults"])
    try:
        written = jobs.write_job(args.dir, doc["job"], content)
    except OSError as e:
        raise CliError(f"cannot write to {args.dir}: {e.strerror}") from None
    if args.json:
        return print_json({"job": doc["job"], "version": doc["version"], "files": [str(p) for p in written]})
    console.print(f"{doc['job']}@{doc['version']} -> {', '.join(str(p) for p in written)}", markup=False)
    return EXIT_OK


def cmd_agent_history(client: Client, args: argparse.Namespace, console: Console) -> int:
    rows = client.get(f"/api/v1/agents/{quote(args.agent)}/history", limit=args.limit)["history"]
    if args.json:
        return print_json(rows)
    table = new_table(f"{args.agent}: what ran here, newest first")
    for col in ("Task", "Job", "Started", "State", "Exit", "Script sha256 (reported)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        job = f"{r['job']}@{r['version']}" if r["job"] else escape(r["name"] or "-")
        reported = r["reported_sha256"] or "-"
        if r["reported_sha256"] and r["script_sha256"] and r["reported_sha256"] != r["script_sha256"]:
            reported += " [red](mismatch)[/]"
        table.add_row(r["task_id"], escape(job), when(r["created_at"]), styled(r["state"]),
                      "-" if r["code"] is None else str(r["code"]), reported)  # fmt: skip
    console.print(table)
    return EXIT_OK


# ------------------------------------------------------------------ parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``job``, ``rerun`` and ``history`` to the ``mschedule`` subcommands."""
    j = sub.add_parser("job", help=command_help("job"))
    js = j.add_subparsers(dest="job_cmd", required=True, metavar="JOB_COMMAND")

    p = js.add_parser("save", help="save FILE as the next version of NAME (if it changed)")
    p.add_argument("job", metavar="NAME")
    p.add_argument("file", metavar="FILE", help="the script ('-' = stdin)")
    p.add_argument("-m", "--message", help="why this version")
    p.add_argument("--description")
    p.add_argument("--clear-defaults", action="store_true", help="do not keep the latest version's defaults")
    add_run_flags(p)
    p.set_defaults(fn=cmd_save)

    p = js.add_parser("list", help="every job")
    p.set_defaults(fn=cmd_list)

    p = js.add_parser("show", help="a version: defaults and script")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p.set_defaults(fn=cmd_show)

    p = js.add_parser("history", help="a job's versions and runs")
    p.add_argument("job", metavar="NAME")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(fn=cmd_history)

    p = js.add_parser("diff", help="what changed between two versions")
    p.add_argument("job", metavar="NAME")
    p.add_argument("v1", metavar="V1")
    p.add_argument("v2", metavar="V2")
    p.set_defaults(fn=cmd_diff)

    p = js.add_parser("default", help="pin the version runs take (or 'latest')")
    p.add_argument("job", metavar="NAME")
    p.add_argument("version", metavar="VERSION")
    p.set_defaults(fn=cmd_default)

    p = js.add_parser("run", help="run a version (flags override its defaults) and follow it")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    add_run_flags(p)
    add_confirm_flags(p)
    _follow_flags(p)
    p.set_defaults(fn=cmd_run)

    p = js.add_parser("push", help="save every job file of DIR that changed")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("-m", "--message")
    p.set_defaults(fn=cmd_push)

    p = js.add_parser("pull", help="write a job's version into DIR")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(fn=cmd_pull)

    for q in js.choices.values():
        q.add_argument("--json", action="store_true")

    r = sub.add_parser("rerun", help=command_help("rerun"))
    r.add_argument("task", metavar="TASK")
    r.add_argument("--failed", action="store_true")
    _follow_flags(r)
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_rerun)

    h = sub.add_parser("history", help=command_help("history"))
    h.add_argument("agent", metavar="AGENT")
    h.add_argument("--limit", type=int, default=50)
    h.add_argument("--json", action="store_true")
    h.set_defaults(fn=cmd_agent_history)


def _follow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show-output", action="store_true", help="print every target's output at the end")
    p.add_argument("--no-wait", action="store_true", help="print the task id and return")
