"""``mschedule``: the command line, talking to the master's HTTP API only.

    mschedule agents [--json]
    mschedule run -t SELECTOR [-t ...] [--parallel N|N%] [--fail-count N] [--fail-rate R|N%]
                  [--plan '1,pause,5,20%,rest' | --canary N]
                  [--timeout S] [--on-abort kill|drain] [--delivery-timeout S] [--output-cap BYTES]
                  [--env K=V] [--cwd DIR] [--name N] [--request-id ID] [--yes]
                  (-c 'COMMAND' | SCRIPT_FILE) [--no-wait] [--json] [--follow] [--no-stream]
    mschedule targets SELECTOR... [--json]
    mschedule status TASK [--json]
    mschedule output TASK [AGENT] [--stderr] [--follow]
    mschedule kill TASK
    mschedule approve TASK [--by WHO]      (a PAUSED plan goes on)
    mschedule abort TASK [--by WHO]        (stop the rollout: it ends FAILED)
    mschedule tasks [--state S]
    mschedule job save|list|show|history|diff|default|run|push|pull ...   (see cli_jobs.py)
    mschedule schedule add|list|show|pause|resume|rm|next ...             (see cli_schedules.py)
    mschedule rerun TASK [--failed]
    mschedule history AGENT

The master is ``--master URL`` (or ``HOST:PORT``; before or after the command) or
``$MSCHEDULE_MASTER`` (default http://127.0.0.1:9900);
the token is ``$MSCHEDULE_TOKEN``. Task and agent ids may be shortened to any unique
prefix, as git's (tables show the shortest, at least 8 characters). ``run`` asks before
starting on more than ``--confirm-over`` targets (``$MSCHEDULE_CONFIRM_OVER``, default 20)
unless ``--yes``. Exit status: 0 success (for ``run``: the task ended
SUCCEED), 1 the task did not succeed, 2 bad usage or a request the master refused,
3 the master cannot be reached (or refused the token), 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
from urllib.parse import quote as _quote
from urllib.parse import urlencode, urlsplit, urlunsplit

# Imported where used, not here (issue 22: start <= 80 ms): rich (~60 ms) only to draw, the
# HTTP client (socket, ssl for https) only to talk, threading only to follow a task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

    from rich.console import Console
    from rich.table import Table

    from .cli_http import Response

    #: What ``main`` calls for a command (``set_defaults(fn=...)``).
    Command = Callable[["Client", argparse.Namespace, Console], int]

DEFAULT_MASTER = "http://127.0.0.1:9900"
DEFAULT_CONFIRM_OVER = 20  #: ``run`` asks before starting on more targets than this (unless --yes)

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

TASK_FINAL = frozenset({"SUCCEED", "FAILED", "KILLED"})
SUCCEEDED = frozenset({"SUCCEED"})
FAILED = frozenset({"FAILED", "TIMEOUT", "KILLED", "INTERRUPTED", "LOST", "UNREACHABLE", "REJECTED"})
ACTIVE = frozenset({"RUNNING"})  #: DISPATCHED is sent, not started: it counts as waiting
TARGET_FINAL = FAILED | SUCCEEDED | {"CANCELLED"}

PIPE_WIDTH = 240  #: table width when stdout is not a terminal
SHORT_ID = 8  #: the progress bar shows this much of the task id
BAR_WIDTH = 16  #: the progress bar's own width, in columns
#: The progress line but its counts: spinner, "<id> RUNNING", bar, "9999/9999", "0:00:00", 5 gaps.
BAR_FIXED = 1 + SHORT_ID + 1 + len("RUNNING") + BAR_WIDTH + 9 + 7 + 5
KEEPALIVE_TIMEOUT = 40.0  #: the event stream sends a keep-alive every 15 s; give up on it after this
POLL_INTERVAL = 2.0  #: at most this long between task reads while the event stream is down
LIVE_CHECK = 30.0  #: with the stream up, read the task anyway after this long without events
UNREACHABLE_PATIENCE = 60.0  #: while following a task, wait this long for a restarting master
STATE_STYLE = {
    "SUCCEED": "green", "FAILED": "red", "TIMEOUT": "red", "KILLED": "magenta", "INTERRUPTED": "red",
    "LOST": "red", "UNREACHABLE": "red", "REJECTED": "red", "CANCELLED": "dim", "RUNNING": "yellow",
    "DISPATCHED": "cyan", "WAITING": "dim",
}  # fmt: skip


class CliError(Exception):
    """A one-line error for the user, with the exit status to use."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ HTTP client


class Reply:
    """A whole answer. (A plain class, not a dataclass: dataclasses costs ~20 ms of start.)"""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def _without_password(url: str) -> str:
    """``url`` with the password of a ``user:password@`` part replaced by ``***``."""
    try:
        u = urlsplit(url)
        if u.password is None:
            return url
        return urlunsplit(u._replace(netloc=f"{u.username}:***@{u.netloc.rpartition('@')[2]}"))
    except ValueError:
        return "<the master URL>"


class Client:
    """The master's HTTP API (see cli_http.py); turns every failure into a CliError."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.shown = _without_password(self.base)  #: what error messages show
        self.token = token
        self.timeout = timeout

    def open(self, method: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None,
             timeout: float | None = None, accept: str = "application/json") -> Response:  # fmt: skip
        """Send a request; the caller reads and closes the answer (status < 400)."""
        from . import cli_http

        query = {k: v for k, v in (query or {}).items() if v is not None}
        target = path + ("?" + urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": accept}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = cli_http.request(self.base, method, target, headers=headers, body=data,
                                    timeout=timeout or self.timeout)  # fmt: skip
        except ValueError:
            raise CliError(f"bad master URL {self.shown!r} (expected like {DEFAULT_MASTER})") from None
        except OSError as e:
            reason = (e.strerror if not isinstance(e, cli_http.ProtocolError) else None) or str(e) or type(e).__name__
            raise CliError(
                f"cannot reach the master at {self.shown} ({reason}); is mschedule-master running? "
                "(set --master or MSCHEDULE_MASTER)",
                EXIT_UNREACHABLE,
            ) from None
        if resp.status >= 400:
            with resp:
                raise self._http_error(resp)
        return resp

    def request(self, method: str, path: str, **kw: Any) -> Reply:
        resp = self.open(method, path, **kw)
        try:
            with resp:
                return Reply(resp.status, resp.headers, resp.read())
        except OSError as e:  # the connection broke mid-answer
            raise CliError(f"lost the connection to the master at {self.shown} ({e})", EXIT_UNREACHABLE) from None

    def get(self, path: str, **query: Any) -> Any:
        return self._json(self.request("GET", path, query=query))

    def post(self, path: str, body: Any = None) -> Any:
        return self._json(self.request("POST", path, body=body if body is not None else {}))

    def _json(self, reply: Reply) -> Any:
        try:
            return reply.json()
        except ValueError:
            raise CliError(
                f"{self.shown} answered something that is not mschedule's JSON; is --master right?", EXIT_UNREACHABLE
            ) from None

    def _http_error(self, resp: Response) -> CliError:
        try:
            doc = json.loads(resp.read())
            message, field = doc.get("error") or resp.reason, doc.get("field")
        except (ValueError, AttributeError, OSError):
            return CliError(
                f"{self.shown} answered HTTP {resp.status} {resp.reason}, not mschedule's JSON; is --master right?",
                EXIT_UNREACHABLE,
            )
        if resp.status == 401:
            return CliError(f"the master refused the token ({message}); set MSCHEDULE_TOKEN", EXIT_UNREACHABLE)
        if resp.status >= 500:
            return CliError(f"the master failed: {message}", EXIT_UNREACHABLE)
        return CliError(f"{field}: {message}" if field and field not in message else message, EXIT_USAGE)


def sse_events(lines: Iterator[bytes]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` per server-sent event in ``lines``; comments and ids are skipped."""
    kind = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


class EventWatcher:
    """Reads the task's event stream (``GET /api/v1/events?task=ID``) in a thread.

    Every event goes into ``queue`` as ``(kind, doc)``; when the stream cannot be opened or
    breaks, a ``("lost", {})`` goes in and the watcher tries again after a second (a master
    restart). ``("hello", ...)`` says the stream is subscribed: from then on, nothing is missed.
    It owns its connection, so ``stop()`` can shut it down under a blocked read.
    """

    def __init__(self, client: Client, task_id: str) -> None:
        import queue
        import threading

        self.client = client
        self.task_id = task_id
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._resp: Response | None = None
        self._thread = threading.Thread(target=self._run, name="mschedule-events", daemon=True)

    def start(self) -> EventWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            resp.shutdown()
        self._thread.join(5)

    def _run(self) -> None:
        for _ in range(100_000):
            if self._stop.is_set():
                return
            try:
                self._read_stream()
            except (CliError, OSError, ValueError):
                pass
            if self._stop.is_set():
                return
            self.queue.put(("lost", {}))
            self._stop.wait(1.0)

    def _read_stream(self) -> None:
        resp = self.client.open("GET", "/api/v1/events", query={"task": self.task_id}, timeout=KEEPALIVE_TIMEOUT,
                                accept="text/event-stream")  # fmt: skip
        self._resp = resp
        try:
            if self._stop.is_set():
                return
            for kind, data in sse_events(resp.lines()):
                if self._stop.is_set():
                    return
                try:
                    doc = json.loads(data)
                except ValueError:
                    doc = {}
                self.queue.put((kind, doc if isinstance(doc, dict) else {}))
        finally:
            self._resp = None
            resp.close()


# ------------------------------------------------------------------ formatting


def bucket_counts(counts: dict[str, int]) -> dict[str, int]:
    """Target counts as the progress line shows them."""
    out = {"succeeded": 0, "failed": 0, "running": 0, "waiting": 0, "killed": 0, "cancelled": 0}
    for state, n in counts.items():
        if state in SUCCEEDED:
            out["succeeded"] += n
        elif state == "KILLED":
            out["killed"] += n
        elif state in FAILED:
            out["failed"] += n
        elif state in ACTIVE:
            out["running"] += n
        elif state == "CANCELLED":
            out["cancelled"] += n
        else:
            out["waiting"] += n
    return out


def counts_text(counts: dict[str, int], markup: bool = False, *, nonzero: bool = False) -> str:
    """``3 succeeded, 0 failed, 1 running, 0 waiting`` (killed and cancelled when any);
    ``nonzero``: only the counts that are not 0 (the progress bar's short form)."""
    b = bucket_counts(counts)
    parts = [
        ("green", f"{b['succeeded']} succeeded", b["succeeded"]),
        ("red", f"{b['failed']} failed", b["failed"]),
        ("yellow", f"{b['running']} running", b["running"]),
        ("", f"{b['waiting']} waiting", b["waiting"]),
    ]
    if b["killed"]:
        parts.append(("magenta", f"{b['killed']} killed", b["killed"]))
    if b["cancelled"]:
        parts.append(("dim", f"{b['cancelled']} cancelled", b["cancelled"]))
    shown = [(style, text) for style, text, n in parts if n or not nonzero]
    if not markup:
        return ", ".join(text for _, text in shown)
    return "  ".join(f"[{style}]{text}[/]" if style else text for style, text in shown)


def progress_text(counts: dict[str, int], total: int) -> str:
    """``103/120 done: 3 failed, 10 running, 7 waiting`` (the counts that are not 0 but
    the successes): short enough for a table cell at 80 columns."""
    rest = counts_text({s: n for s, n in counts.items() if s not in SUCCEEDED}, nonzero=True)
    return f"{done_count(counts)}/{total} done" + (f": {rest}" if rest else "")


def done_count(counts: dict[str, int]) -> int:
    return sum(n for s, n in counts.items() if s in TARGET_FINAL)


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    secs = max(0, int(now - ts))
    if secs < 60:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def escape(text: str) -> str:
    """rich's markup escape, with rich imported only when something is drawn."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def table(title: str) -> Table:
    """A rich table with its title on the left."""
    from rich.table import Table

    return Table(title=title, title_justify="left")


def styled(state: str) -> str:
    style = STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/]" if style else state


def decode_stream(text: str, encoding: str) -> bytes:
    if encoding == "base64":
        import base64

        return base64.b64decode(text)
    return text.encode()


def target_output(target: dict[str, Any], stream: str) -> bytes:
    if stream == "stderr":
        return decode_stream(target.get("stderr", ""), target.get("stderr_encoding", "utf-8"))
    return decode_stream(target.get("output", ""), target.get("output_encoding", "utf-8"))


def exit_text(t: dict[str, Any]) -> str:
    if t.get("code") is None:
        return "-"
    return f"{t['code']} (signal {t['signal']})" if t.get("signal") else str(t["code"])


def targets_table(task: dict[str, Any], offline: frozenset[str] = frozenset()) -> Table:
    """One row per target; ``offline``: agent ids known to be offline (a target not yet
    accepted by one of them is waiting for it, not running)."""
    from .cli_ids import shortest_unique
    from .cli_text import visible

    out_table = table(f"task {task['id']}: {styled(task['state'])}")
    for col in ("Agent", "Host", "State", "Exit", "Duration"):
        out_table.add_column(col, no_wrap=col != "Host", overflow="fold")
    out_table.add_column("Output", overflow="fold", ratio=1)
    targets = task.get("targets", {})
    short = shortest_unique(targets)
    for agent_id, t in sorted(targets.items()):
        out = visible(target_output(t, "stdout").decode("utf-8", "replace")).strip().splitlines()
        first = out[0][:60] + (" …" if len(out) > 1 or len(out[0]) > 60 else "") if out else ""
        if t.get("error"):
            first = first or f"error: {t['error']}"
        if t.get("reason") and t["state"] != "SUCCEED":
            first = first or t["reason"]
        first = visible(first, keep_newlines=False)
        state = styled(t["state"])
        if agent_id in offline and t["state"] in ("WAITING", "DISPATCHED") and not t.get("acked"):
            state += " (agent offline: waiting for it)"
        if t.get("agent_state") and t["agent_state"] != t["state"]:
            state += f" (agent: {styled(t['agent_state'])})"  # a late result after the master's verdict
        if t.get("revised_from"):
            state += f" (revised from {t['revised_from']} at {when(t.get('revised_at'))})"
        if t.get("kill_pending"):
            state += " [magenta]KILL_PENDING[/]"  # asked to die; the agent has not confirmed it yet
        out_table.add_row(escape(short[agent_id]), escape(visible(t.get("hostname") or "", keep_newlines=False)),
                          state, exit_text(t), duration(t.get("duration")), escape(first))  # fmt: skip
    return out_table


# ------------------------------------------------------------------ commands


def cmd_agents(client: Client, args: argparse.Namespace, console: Console) -> int:
    query = {"online": {True: "true", False: "false"}.get(args.online), "label": args.label, "hostname": args.hostname}
    agents = client.get("/api/v1/agents", **query)["agents"]
    if args.json:
        print(json.dumps(agents, indent=2))
        return EXIT_OK
    console.print(agents_table(agents, f"{plural(len(agents), 'agent')}"))
    return EXIT_OK


def agents_table(agents: list[dict[str, Any]], title: str) -> Table:
    """The fleet, one row per agent, ids as their shortest unique prefixes."""
    from .cli_ids import shortest_unique
    from .cli_text import visible

    now = time.time()
    out_table = table(title)
    for col in ("ID", "Hostname", "IPs", "Labels", "Online", "Last heartbeat", "Running"):
        out_table.add_column(col, overflow="fold", no_wrap=col in ("ID", "Online"))
    short = shortest_unique(a["id"] for a in agents)
    for a in sorted(agents, key=lambda a: a["id"]):
        labels = " ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()))
        online = "[green]online[/]" if a["online"] else "[red]offline[/]"
        seen = a.get("last_seen") or a.get("last_heartbeat")
        out_table.add_row(escape(short[a["id"]]), escape(visible(a["hostname"], keep_newlines=False)),
                          escape(", ".join(a["ip"])), escape(visible(labels, keep_newlines=False)), online,
                          ago(seen, now), str(len(a.get("running") or [])))  # fmt: skip
    return out_table


def plural(n: int, word: str) -> str:
    from .cli_text import plural as _plural

    return _plural(n, word)


def read_script(args: argparse.Namespace) -> bytes:
    if args.command is not None:
        if args.script_file is not None:
            raise CliError("give either -c COMMAND or SCRIPT_FILE, not both")
        command: str = args.command
        return command.encode()
    if args.script_file is None:
        raise CliError("give the script: -c 'COMMAND' or a SCRIPT_FILE ('-' reads stdin)")
    if args.script_file == "-":
        return sys.stdin.buffer.read()
    try:
        with open(args.script_file, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"cannot read {args.script_file}: {e.strerror}") from None


def build_submit(args: argparse.Namespace, script: bytes) -> dict[str, Any]:
    body: dict[str, Any] = {
        "targets": args.target,
        "script": b64(script),
        "fail_count": args.fail_count,
        "timeout": args.timeout,
        "on_abort": args.on_abort,
    }
    if args.parallel is not None:  # left out: 1, and the master's unplanned_target_limit applies
        body["parallel"] = args.parallel
    task_plan = plan_flag(args)
    if task_plan is not None:
        body["plan"] = task_plan
    for name in ("fail_rate", "delivery_timeout", "output_cap", "request_id"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.name:
        body["name"] = args.name
    if args.env:
        env = {}
        for item in args.env:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise CliError(f"env: {item!r} is not KEY=VALUE")
            env[k] = v
        body["env"] = env
    if args.cwd:
        body["cwd"] = args.cwd
    if getattr(args, "stream", True) is False:
        body["stream"] = False
    return body


def plan_flag(args: argparse.Namespace) -> str | list[Any] | None:
    """``--plan`` (its text, or JSON steps when it starts with '[') or ``--canary N``."""
    if args.plan is not None and args.canary is not None:
        raise CliError("give either --plan or --canary, not both")
    if args.canary is not None:
        return f"{args.canary},pause,rest"
    if args.plan is not None and args.plan.lstrip().startswith("["):
        try:
            steps: list[Any] = json.loads(args.plan)
        except ValueError as e:
            raise CliError(f"--plan: not valid JSON: {e}") from None
        return steps
    text: str | None = args.plan
    return text


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", metavar="STEPS", help="rollout plan: steps like 1,pause,5,20%%,rest ('pause 10m' for a "
                   "timed pause), or JSON steps with their own limits (docs/rollout.md)")
    p.add_argument("--canary", metavar="N", help="N targets first, then pause until approved, then the rest "
                   "(the plan N,pause,rest)")  # fmt: skip


def _who(args: argparse.Namespace) -> dict[str, Any]:
    if args.by:
        return {"by": args.by}
    from .cli_jobs import author

    return {"by": author()}


def cmd_approve(client: Client, args: argparse.Namespace, console: Console) -> int:
    task = client.post(f"/api/v1/tasks/{quote(args.task)}/approve", _who(args))
    console.print(f"task {task['id']} approved: now {task['state']} ({counts_text(task['counts'])})",
                  highlight=False, markup=False)  # fmt: skip
    return EXIT_OK


def cmd_abort(client: Client, args: argparse.Namespace, console: Console) -> int:
    task = client.post(f"/api/v1/tasks/{quote(args.task)}/abort", _who(args))
    console.print(f"abort requested for task {task['id']} (now {task['state']}: {counts_text(task['counts'])})",
                  highlight=False, markup=False)  # fmt: skip
    return EXIT_OK


def plan_text(task: dict[str, Any]) -> str:
    """``1 > [pause] > 4`` with the current step marked: what status shows of a plan."""
    parts = []
    for s in task.get("plan_stages") or []:
        if s["kind"] == "pause":
            word = "pause" if s["pause"] is None else f"pause {s['pause']:g}s"
        else:
            word = f"{s['targets']} (parallel {s['parallel']})"
        parts.append(f"[{word}]" if s["current"] else word)
    return " > ".join(parts)


def add_confirm_flags(p: argparse.ArgumentParser) -> None:
    """``--yes`` and ``--confirm-over``: ``run`` and ``job run`` ask before a wide rollout."""
    from . import cli_args

    p.add_argument("-y", "--yes", action="store_true", help="start without asking, however many targets")
    p.add_argument("--confirm-over", type=cli_args.count, metavar="N",
                   default=os.environ.get("MSCHEDULE_CONFIRM_OVER", str(DEFAULT_CONFIRM_OVER)),
                   help="ask before starting on more than N targets (env MSCHEDULE_CONFIRM_OVER; default %(default)s)")


def cmd_run(client: Client, args: argparse.Namespace, console: Console) -> int:
    from . import cli_ids, cli_targets

    script = read_script(args)
    args.target = cli_ids.agent_selectors(client, args.target)
    if not args.yes:
        cli_targets.confirm(client, args.target, args.confirm_over, console)
    task = client.post("/api/v1/tasks", build_submit(args, script))
    if args.no_wait:
        print(json.dumps(task, indent=2) if args.json else task["id"])
        return EXIT_OK
    if not args.json:
        plan_note = f"; plan {plan_text(task)}" if task.get("plan_stages") else ""
        console.print(f"task [bold]{task['id']}[/] submitted to {plural(task['target_count'], 'target')} "
                      f"(parallel {task['parallel']}{escape(plan_note)})", highlight=False)  # fmt: skip
        waiting = offline_targets(client, task)
        if waiting:
            console.print(f"waiting for {plural(len(waiting), 'offline agent')}: {', '.join(waiting[:5])}"
                          f"{' ...' if len(waiting) > 5 else ''}", highlight=False, markup=False)  # fmt: skip
    task = follow(client, task["id"], console, show=not args.json, lines=args.follow and not args.json)
    return finish(task, console, args.json, all_output=args.show_output)


def follow(client: Client, task_id: str, console: Console, *, show: bool, lines: bool = False) -> dict[str, Any]:
    """Wait for the task to end, showing progress; Ctrl-C asks whether to kill it.
    ``lines``: print the targets' output lines as they come, prefixed by host."""
    watcher = EventWatcher(client, task_id).start()
    try:
        return _follow(client, task_id, console, watcher, show, lines)
    finally:
        watcher.stop()


def _follow(client: Client, task_id: str, console: Console, watcher: EventWatcher, show: bool,
            lines: bool = False) -> dict[str, Any]:
    """Events drive it: the view redraws from their counts, the end is noticed when its event
    arrives. The task is read only at the start, after (re)subscribing, on ``resync`` and at
    the end; only while the stream is down does it poll."""
    import queue

    from .cli_live import Lines

    view = _ProgressView(console, task_id) if show and console.is_terminal else _LineView(console, task_id, show)
    output = Lines()
    killing = False
    paused_noted = False  # the "approve with" hint was shown for the current pause
    live = False  # subscribed: the stream will tell of every change
    read = True  # the task must be read (again)
    task: dict[str, Any] = {}
    reached = time.monotonic()  # the master last answered
    with view:
        while True:
            try:
                if read:
                    try:
                        task = client.get(f"/api/v1/tasks/{quote(task_id)}", targets=0)  # counts only: cheap
                    except CliError as e:
                        # A master restart loses nothing: keep following for a while.
                        if e.status != EXIT_UNREACHABLE or time.monotonic() - reached > UNREACHABLE_PATIENCE:
                            raise
                        view.note(f"master unreachable; retrying for up to {UNREACHABLE_PATIENCE:.0f}s")
                        try:  # a second, or less if the stream is back
                            for kind, doc in _wait(watcher, 1.0):
                                live, _, task = _apply(kind, doc, live, True, task)
                        except queue.Empty:
                            pass
                        continue
                    reached, read = time.monotonic(), False
                    view.update(task)
                if task["state"] in TASK_FINAL:
                    for agent_id, _stream, text in output.finish():
                        view.line(output.prefixed(agent_id, text), shown=lines)
                    final: dict[str, Any] = client.get(f"/api/v1/tasks/{quote(task_id)}", outputs=1)
                    return final
                if task["state"] == "PAUSED" and not paused_noted:
                    view.say(f"paused: go on with: mschedule approve {task_id} (or: mschedule abort {task_id})")
                paused_noted = task["state"] == "PAUSED"
                try:
                    events = _wait(watcher, LIVE_CHECK if live else poll_interval(task["target_count"]))
                except queue.Empty:
                    read = True  # polling: only while the stream is down (or a check on a quiet one)
                    continue
                for kind, doc in events:
                    live, read, task = _apply(kind, doc, live, read, task)
                    _show_output(kind, doc, output, view, lines, lambda a: output.from_result(client, task_id, a))
                if not read:
                    view.update(task)
            except KeyboardInterrupt:
                if killing:
                    raise
                view.pause()
                if not ask_kill(console, task_id):
                    console.print(f"task {task_id} keeps running; follow it with: mschedule status {task_id}",
                                  highlight=False, markup=False)  # fmt: skip
                    raise
                try:
                    client.post(f"/api/v1/tasks/{quote(task_id)}/kill")
                except CliError as e:  # it ended meanwhile (409): show how
                    if e.status == EXIT_UNREACHABLE:
                        raise
                    console.print(str(e), highlight=False, markup=False)
                    read = True
                    view.resume()
                    continue
                console.print(f"kill requested for task {task_id}; waiting for the targets to stop "
                              "(Ctrl-C again to stop waiting)", highlight=False)  # fmt: skip
                killing = True
                view.resume()


def _show_output(kind: str, doc: dict[str, Any], output: Any, view: Any, lines: bool,
                 from_result: Callable[[str], list[tuple[str, str, str]]]) -> None:  # fmt: skip
    """An ``output`` event's whole lines: printed with ``--follow``; the latest line of each
    target is shown under the progress bar either way. A target's end ends its last line;
    with ``--follow``, what its lines lack (gaps, a lost end) comes from its result first."""
    raw = doc.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if kind == "output":
        done = output.feed(data)
    elif kind == "output_end":
        output.ended_at(data)
        return
    elif kind == "target" and data.get("state") in TARGET_FINAL and isinstance(data.get("agent_id"), str):
        done = (from_result(data["agent_id"]) if lines else []) + output.finish(data["agent_id"])
    else:
        return
    for agent_id, _stream, text in done:
        view.line(output.prefixed(agent_id, text), shown=lines)
    view.latest({output.name(a): text for a, text in output.latest.items()})


def poll_interval(target_count: int) -> float:
    """How often to re-read a task while the event stream is down: a big task less often."""
    return min(POLL_INTERVAL, 0.1 + 0.002 * target_count)


def _wait(watcher: EventWatcher, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """The next event and every one queued behind it (one redraw for a burst); raises queue.Empty."""
    import queue

    events = [watcher.queue.get(timeout=timeout)]
    for _ in range(100_000):
        try:
            events.append(watcher.queue.get_nowait())
        except queue.Empty:
            break
    return events


def _apply(
    kind: str, doc: dict[str, Any], live: bool, read: bool, task: dict[str, Any]
) -> tuple[bool, bool, dict[str, Any]]:
    """One event on (live, read, task): a task's counts and state come in its events."""
    given = doc.get("data")
    data: dict[str, Any] = given if isinstance(given, dict) else {}
    if kind == "hello":
        return True, True, task  # subscribed now: read once, to catch what happened before
    if kind == "lost":
        return False, True, task  # the stream broke: read, then poll until it is back
    if kind == "resync":
        return live, True, task  # events were dropped
    if kind in ("task", "target") and task:
        state = data.get("task_state") if kind == "target" else data.get("state")
        counts = data.get("counts")
        return live, read, {**task, "state": state or task["state"],
                            "counts": counts if isinstance(counts, dict) else task["counts"]}  # fmt: skip
    return live, read, task


def ask_kill(console: Console, task_id: str) -> bool:
    console.print(f"\nKill task {task_id}? [y/N] ", end="", highlight=False, markup=False)
    try:
        answer = sys.stdin.readline()
    except (KeyboardInterrupt, OSError, ValueError):
        answer = ""
    return answer.strip().lower() in ("y", "yes")


class _ProgressView:
    """A rich progress bar with the counts, for a terminal."""

    def __init__(self, console: Console, task_id: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        # Fits 80 columns: the short id, a fixed bar, and the counts (only those not 0) last,
        # cut with an ellipsis to what the line has left rather than squeezing the bar away.
        real = console.real if isinstance(console, LazyConsole) else console
        left = max(10, real.width - BAR_FIXED)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TimeElapsedColumn(),
            TextColumn("{task.fields[counts]}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=left)),
            console=real,
        )
        self.bar = self.progress.add_task(task_id, total=None, counts="")
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        self._lines = Text("", no_wrap=True, overflow="ellipsis")
        self.live = Live(Group(self.progress, self._lines), console=self.progress.console, refresh_per_second=8)

    def __enter__(self) -> _ProgressView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def line(self, text: str, *, shown: bool) -> None:
        """One whole line of a target's output, printed above the bar when ``shown``."""
        if shown:
            self.live.console.print(text, markup=False, highlight=False)

    def latest(self, lines: dict[str, str]) -> None:
        """Each target's latest line (the most recent targets), under the bar."""
        from .cli_live import LATEST_ROWS

        rows = list(lines.items())[-LATEST_ROWS:]
        self._lines.plain = "\n".join(f"  {host}: {text}" for host, text in rows)

    def update(self, task: dict[str, Any]) -> None:
        self.progress.update(
            self.bar,
            description=f"{task['id'][:SHORT_ID]} {task['state']}",
            total=task["target_count"],
            completed=done_count(task["counts"]),
            counts=counts_text(task["counts"], markup=True, nonzero=True),
        )

    def note(self, text: str) -> None:
        self.progress.update(self.bar, description=text)

    def say(self, text: str) -> None:
        """A line above the bar, kept (the bar's description changes with the next update)."""
        self.progress.console.print(text, highlight=False, markup=False)

    def pause(self) -> None:
        self.live.stop()

    def resume(self) -> None:
        self.live.start()


class _LineView:
    """Plain lines, one per change, when stdout is not a terminal."""

    def __init__(self, console: Console, task_id: str, show: bool) -> None:
        self.console = console
        self.show = show
        self.last: tuple[str, tuple[tuple[str, int], ...]] | None = None
        self.last_note = ""

    def __enter__(self) -> _LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, task: dict[str, Any]) -> None:
        key = (task["state"], tuple(sorted(bucket_counts(task["counts"]).items())))
        if not self.show or key == self.last:
            return
        self.last = key
        self.last_note = ""
        self.console.print(
            f"{time.strftime('%H:%M:%S')} task {task['id']} {task['state']}: "
            f"{done_count(task['counts'])}/{task['target_count']} done - {counts_text(task['counts'])}",
            highlight=False,
            markup=False,
        )

    def say(self, text: str) -> None:
        self.note(text)

    def note(self, text: str) -> None:
        if self.show and text != self.last_note:
            self.console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, markup=False)
        self.last_note = text

    def line(self, text: str, *, shown: bool) -> None:
        if shown:
            self.console.print(text, highlight=False, markup=False)

    def latest(self, lines: dict[str, str]) -> None:
        pass  # no place to redraw: plain lines only

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


def finish(task: dict[str, Any], console: Console, as_json: bool, *, all_output: bool = False) -> int:
    from .cli_text import visible

    status = EXIT_OK if task["state"] == "SUCCEED" else EXIT_TASK_FAILED
    if as_json:
        print(json.dumps(task, indent=2))
        return status
    from .cli_ids import shortest_unique

    console.print(targets_table(task))
    short = shortest_unique(task.get("targets", {}))
    for agent_id, t in sorted(task.get("targets", {}).items()):
        if t["state"] == "SUCCEED" and not all_output:
            continue
        out, err = target_output(t, "stdout"), target_output(t, "stderr")
        if not (out or err) and (t["state"] == "CANCELLED" or not (t.get("reason") or t.get("error"))):
            continue
        host = f" ({escape(visible(t['hostname'], keep_newlines=False))})" if t.get("hostname") else ""
        console.rule(f"{escape(short[agent_id])}{host}: {styled(t['state'])}, exit {exit_text(t)}", align="left")
        if t.get("reason"):
            console.print(f"reason: {visible(t['reason'])}", markup=False, highlight=False)
        if t.get("error"):
            console.print(f"error: {visible(t['error'])}", markup=False, highlight=False)
        if out:
            console.print(visible(out.decode("utf-8", "replace").rstrip("\n")), markup=False, highlight=False)
        if err:
            console.print(visible(err.decode("utf-8", "replace").rstrip("\n")), markup=False, highlight=False,
                          style="red")  # fmt: skip
    reason = f" ({task['reason']})" if task.get("reason") else ""
    console.print(f"task {task['id']} {styled(task['state'])}{escape(reason)}: {counts_text(task['counts'])}",
                  highlight=False)  # fmt: skip
    if task.get("revised_at"):
        console.print(f"verdict revised at {when(task['revised_at'])} by late reports from agents",
                      markup=False, highlight=False)  # fmt: skip
    return status


def cmd_status(client: Client, args: argparse.Namespace, console: Console) -> int:
    from .cli_ids import task_id

    args.task = task_id(client, args.task)
    task = client.get(f"/api/v1/tasks/{quote(args.task)}", outputs=1)
    if args.json:
        print(json.dumps(task, indent=2))
    else:
        fail_count = "no limit" if task["fail_count"] in (None, -1) else task["fail_count"]
        fail_rate = "no limit" if task["fail_rate"] in (None, -1) else task["fail_rate"]
        limits = (f"parallel {task['parallel']}, fail_count {fail_count}, fail_rate {fail_rate}, "
                  f"timeout {task['timeout'] or 'none'}, on_abort {task['on_abort']}")  # fmt: skip
        console.print(f"task [bold]{task['id']}[/] {styled(task['state'])}"
                      f"{escape(' (' + task['reason'] + ')') if task.get('reason') else ''}", highlight=False)
        revised = f", verdict revised {when(task['revised_at'])}" if task.get("revised_at") else ""
        console.print(f"created {when(task['created_at'])}, finished {when(task['finished_at'])}{revised}; "
                      f"targets {escape(' '.join(task['targets_spec']))}; {limits}", markup=False, highlight=False)
        if task.get("plan_stages"):
            paused = f"; paused since {when(task['paused_at'])}" if task.get("paused_at") else ""
            console.print(f"plan: {plan_text(task)}{paused}", markup=False, highlight=False)
            for a in task.get("approvals") or []:
                console.print(f"  step {a['step']} approved by {a['by']} {when(a['at'])}", markup=False, highlight=False)
        if task.get("aborted_by"):
            console.print(f"aborted by {task['aborted_by']['by']} {when(task['aborted_by']['at'])}", markup=False,
                          highlight=False)  # fmt: skip
        console.print(counts_text(task["counts"]), highlight=False)
        delivery = task.get("delivery") or {}
        if delivery.get("reason"):  # flow control holds copies back (docs/rollout.md, "Flow control")
            console.print(f"delivery {delivery['reason']}", markup=False, highlight=False)
        console.print(targets_table(task, offline_agents(client, task)))  # fmt: skip
    return EXIT_OK if task["state"] in ("SUCCEED", "WAITING", "RUNNING", "PAUSED") else EXIT_TASK_FAILED


def offline_targets(client: Client, task: dict[str, Any]) -> list[str]:
    """The task's targets whose agents are offline now, as "hostname (short id)": named on
    purpose, they wait for their agents (until the delivery timeout), they do not run."""
    from .cli_text import visible

    offline = {a["id"]: a["hostname"] for a in client.get("/api/v1/agents", online="false")["agents"]}
    if not offline:
        return []
    targets = task.get("targets") or client.get(f"/api/v1/tasks/{quote(task['id'])}").get("targets", {})
    return [f"{visible(offline[a] or '', keep_newlines=False)} ({a[:SHORT_ID]})" for a in sorted(targets) if a in offline]


def offline_agents(client: Client, task: dict[str, Any]) -> frozenset[str]:
    """The task's targets whose agents are offline, when some target still waits for its agent."""
    if not any(t["state"] in ("WAITING", "DISPATCHED") for t in task.get("targets", {}).values()):
        return frozenset()
    return frozenset(a["id"] for a in client.get("/api/v1/agents", online="false")["agents"])


def cmd_output(client: Client, args: argparse.Namespace, console: Console) -> int:
    from .cli_ids import FULL, expand, task_id

    stream = "stderr" if args.stderr else "stdout"
    out = sys.stdout.buffer
    args.task = task_id(client, args.task)
    if args.agent and len(args.agent) < FULL:
        targets = client.get(f"/api/v1/tasks/{quote(args.task)}").get("targets", {})
        args.agent = expand(args.agent, targets, "agent")
    if args.follow:
        if not args.agent:
            raise CliError("--follow needs an AGENT: mschedule output TASK AGENT --follow")
        from .cli_live import follow_output

        follow_output(client, args.task, args.agent, stream, out)
        return EXIT_OK
    if args.agent:
        reply = client.request("GET", f"/api/v1/tasks/{quote(args.task)}/targets/{quote(args.agent)}/output",
                               query={"stream": stream})  # fmt: skip
        out.write(reply.body)
        out.flush()
        return EXIT_OK
    task = client.get(f"/api/v1/tasks/{quote(args.task)}", outputs=1)
    for agent_id, t in sorted(task.get("targets", {}).items()):
        data = target_output(t, stream)
        error = f", error: {t['error']}" if t.get("error") else ""
        revised = f", revised from {t['revised_from']}" if t.get("revised_from") else ""
        out.write(f"=== {agent_id} ({t['state']}, exit {exit_text(t)}{error}{revised}) ===\n".encode())
        out.write(data if not data or data.endswith(b"\n") else data + b"\n")
    out.flush()
    return EXIT_OK


def cmd_kill(client: Client, args: argparse.Namespace, console: Console) -> int:
    from .cli_ids import task_id

    args.task = task_id(client, args.task)
    task = client.post(f"/api/v1/tasks/{quote(args.task)}/kill")
    console.print(f"kill requested for task {task['id']} (now {task['state']}: {counts_text(task['counts'])})",
                  highlight=False, markup=False)  # fmt: skip
    return EXIT_OK


def cmd_tasks(client: Client, args: argparse.Namespace, console: Console) -> int:
    page = client.get("/api/v1/tasks", state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(page["tasks"], indent=2))
        return EXIT_OK
    from .cli_ids import shortest_unique
    from .cli_text import visible

    out_table = table("tasks, newest first")
    for col in ("ID", "Name", "State", "Progress", "Created"):
        out_table.add_column(col, overflow="fold", no_wrap=col in ("ID", "State", "Created"))
    short = shortest_unique(t["id"] for t in page["tasks"])
    for t in page["tasks"]:
        out_table.add_row(escape(short[t["id"]]), escape(visible(t["name"], keep_newlines=False)), styled(t["state"]),
                          progress_text(t["counts"], t["target_count"]), when(t["created_at"]))  # fmt: skip
    console.print(out_table)
    return EXIT_OK


def quote(part: str) -> str:
    return _quote(part, safe="")


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ parsing


#: Commands defined in other modules, in the order ``--help`` lists them: name -> (module,
#: help). Only the module of the command being run is imported, and only that command's
#: arguments are built: all of them were ~45 ms of every start on a 2-core machine.
_ELSEWHERE: dict[str, tuple[str, str]] = {
    "targets": ("cli_targets", "preview which agents selectors match (nothing runs)"),
    "job": ("cli_jobs", "saved jobs with versions (docs/jobs.md)"),
    "rerun": ("cli_jobs", "run a task again (--failed: only its failed / not-run targets)"),
    "history": ("cli_jobs", "what ran on an agent: job versions, sha256, results"),
    "schedule": ("cli_schedules", "run a job on a cron (docs/schedules.md)"),
    "keys": ("cli_keys", "signing keys (no master needed)"),
    "audit": ("cli_audit", "who did what (the audit trail), and check it"),
}


def command_help(name: str) -> str:
    """The one-line help of a command defined in another module (listed without importing it)."""
    return _ELSEWHERE[name][1]


class _Sink:
    """Takes any parser-building call and does nothing: the arguments of a command not run."""

    @property
    def choices(self) -> dict[str, Any]:  # a sub-command group's parsers (none built here)
        return {}

    def __getattr__(self, _name: str) -> Callable[..., _Sink]:
        return self._take

    def _take(self, *_args: Any, **_kw: Any) -> _Sink:
        return self


class _Commands:
    """The subcommands action, building only ``wanted``'s parser in full (all of them when
    ``wanted`` is :data:`ALL`); every other command is registered with its help alone, so
    ``--help`` lists it and a typo is told the choices."""

    ALL = object()

    def __init__(self, sub: Any, wanted: object) -> None:
        self._sub = sub
        self._wanted = wanted

    def add_parser(self, name: str, **kw: Any) -> Any:
        if self._wanted is _Commands.ALL or name == self._wanted:
            return self._sub.add_parser(name, **kw)
        self._sub.add_parser(name, help=kw.get("help"))
        return _Sink()


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (after :func:`hoist_master`), if any."""
    it = iter(argv)
    for arg in it:
        if arg == "--master":
            next(it, None)
        elif not arg.startswith("-"):
            return arg
    return None


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; given ``argv``, built only as far as parsing it needs (see _Commands)."""
    from . import cli_args

    p = argparse.ArgumentParser(prog="mschedule", description="Run shell scripts on a fleet through mschedule-master.")
    p.add_argument("--master", default=os.environ.get("MSCHEDULE_MASTER", DEFAULT_MASTER),
                   help="master URL (env MSCHEDULE_MASTER; default %(default)s); token from env MSCHEDULE_TOKEN")
    wanted: object = _Commands.ALL if argv is None else _command_of(argv)
    sub: Any = _Commands(p.add_subparsers(dest="cmd", required=True, metavar="COMMAND"), wanted)

    a = sub.add_parser("agents", help="list the fleet")
    a.add_argument("--json", action="store_true")
    a.add_argument("--online", action="store_const", const=True, help="only online agents")
    a.add_argument("--offline", dest="online", action="store_const", const=False, help="only offline agents")
    a.add_argument("--label", metavar="KEY=VALUE")
    a.add_argument("--hostname", metavar="GLOB")
    a.set_defaults(fn=cmd_agents)

    r = sub.add_parser("run", help="run a script on targets and follow it")
    r.add_argument("-t", "--target", action="append", required=True, metavar="SELECTOR",
                   help="agent id or selector (repeatable)")
    r.add_argument("-c", dest="command", metavar="COMMAND", help="the script as one command line")
    r.add_argument("script_file", nargs="?", metavar="SCRIPT_FILE", help="the script file ('-' = stdin)")
    r.add_argument("--parallel", type=cli_args.parallel, default=None, metavar="N|N%",
                   help="targets running at once (default 1)")
    add_plan_flags(r)
    r.add_argument("--fail-count", type=cli_args.fail_count, default=-1, metavar="N",
                   help="abort after more than N failures (-1, the default: no limit)")
    r.add_argument("--fail-rate", type=cli_args.fail_rate, default=None, metavar="R|N%",
                   help="abort when failures exceed this share")
    r.add_argument("--timeout", type=cli_args.seconds, default=0, metavar="S", help="seconds per target (0 = none)")
    r.add_argument("--on-abort", choices=("kill", "drain"), default="kill")
    r.add_argument("--delivery-timeout", type=cli_args.positive_seconds, metavar="S",
                   help="seconds an agent has to accept the task (default: the master's)")
    r.add_argument("--output-cap", type=cli_args.byte_count, metavar="BYTES", help="keep at most this much output")
    r.add_argument("--name", default="")
    r.add_argument("--env", action="append", metavar="KEY=VALUE")
    r.add_argument("--cwd", metavar="DIR", help="run the script there (default /)")
    r.add_argument("--request-id", metavar="ID", help="submitting the same request again returns the same task")
    add_confirm_flags(r)
    r.add_argument("--show-output", action="store_true", help="print every target's output at the end, not only "
                   "the failed ones")
    r.add_argument("--no-wait", action="store_true", help="print the task id and return")
    r.add_argument("--json", action="store_true", help="print the task as JSON (no progress)")
    r.add_argument("-f", "--follow", action="store_true", help="print the targets' output as it is written, "
                   "each line prefixed by its host (default: the latest line of each target under the progress)")
    r.add_argument("--no-stream", dest="stream", action="store_false",
                   help="the targets send their output only at the end (the submit's stream: false)")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="show a task and its targets")
    s.add_argument("task")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)

    o = sub.add_parser("output", help="print targets' output")
    o.add_argument("task")
    o.add_argument("agent", nargs="?")
    o.add_argument("--stderr", action="store_true")
    o.add_argument("-f", "--follow", action="store_true", help="with AGENT: print the output as it is written "
                   "(tail -f), until the target ends; it reconnects on its own, without repeats")
    o.set_defaults(fn=cmd_output)

    k = sub.add_parser("kill", help="kill a task")
    k.add_argument("task")
    k.set_defaults(fn=cmd_kill)

    for name, fn, text in (("approve", cmd_approve, "let a PAUSED plan go on (a timed pause ends early)"),
                           ("abort", cmd_abort, "stop a task's rollout: waiting targets are cancelled, it ends FAILED")):
        q = sub.add_parser(name, help=text)
        q.add_argument("task")
        q.add_argument("--by", metavar="WHO", help="who (default: user@host)")
        q.set_defaults(fn=fn)

    t = sub.add_parser("tasks", help="list tasks, newest first")
    t.add_argument("--state", type=str.upper, choices=("WAITING", "RUNNING", "PAUSED", "SUCCEED", "FAILED", "KILLED"))
    t.add_argument("--limit", type=int, default=20)
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=cmd_tasks)

    # targets; job, rerun, history; schedule ...; keys ...; audit (they import this module's helpers)
    load = {m for c, (m, _) in _ELSEWHERE.items() if wanted is _Commands.ALL or c == wanted}
    done: set[str] = set()
    for name, (module, text) in _ELSEWHERE.items():
        if module not in load:
            sub.add_parser(name, help=text)
        elif module not in done:  # its add_commands registers all of its commands, in this order
            done.add(module)
            importlib.import_module(f"{__package__}.{module}").add_commands(sub)
    return p  # fmt: skip


def make_console() -> Console:
    """Rich output; when piped, wide enough that table rows stay on one line for grep."""
    from rich.console import Console

    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH if piped else None)


class LazyConsole:
    """Stands in for a rich Console, made on first use: ``--help`` and ``--json`` never import rich."""

    def __init__(self) -> None:
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        """The rich Console itself, for rich code that needs one (not a stand-in)."""
        if self._console is None:
            self._console = make_console()
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def master_url(text: str) -> str:
    """``--master`` as given: a URL, or ``HOST:PORT`` / ``HOST`` meaning plain http."""
    text = text.strip()
    if "://" in text or not text or any(c.isspace() or c in "/?#@" for c in text):
        return text  # a URL, or not a host: the client says "bad master URL"
    return f"http://{text}"


def hoist_master(argv: Sequence[str]) -> list[str]:
    """Let ``--master`` stand anywhere (``mschedule agents --master H:P``, as git's ``-C``
    must not be but users type it): move it before the subcommand, where argparse reads it."""
    rest: list[str] = []
    front: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":  # what follows is data, never an option
            rest += [arg, *it]
            break
        if arg == "--master":
            front += [arg, next(it, "")]
        elif arg.startswith("--master="):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


def main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    given = hoist_master(sys.argv[1:] if argv is None else list(argv))
    args = parser(given).parse_args(given)
    if console is None:
        lazy: Any = LazyConsole()  # passes for a Console: it hands every attribute to one made on first use
        console = lazy
    client = Client(master_url(args.master), os.environ.get("MSCHEDULE_TOKEN") or None)
    fn: Command = args.fn
    try:
        return fn(client, args, console)
    except CliError as e:
        _err(f"mschedule: error: {e}")
        return e.status
    except KeyboardInterrupt:
        _err("mschedule: interrupted")
        task_id = getattr(args, "task", None)
        if task_id:
            _err(f"follow it with: mschedule status {task_id}")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


def entry() -> None:
    """The ``mschedule`` command: :func:`main`, then an exit that does not scan the heap.
    The interpreter's own exit collects garbage while it tears the modules down: 13-15 ms
    after a ``run`` on a 2-core machine, a third of the time from the task's end to the
    prompt. Frozen objects are skipped by those collections (5 ms); everything is still
    torn down and flushed as usual (files, atexit handlers)."""
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    # As the package's module, not as __main__: cli_jobs imports this module's CliError.
    from mschedule_master.cli import entry as _entry

    _entry()
