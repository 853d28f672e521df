"""``mschedule``: the command line, talking to the master's HTTP API only.

    mschedule agents [--json]
    mschedule run -t SELECTOR [-t ...] [--parallel N|N%] [--fail-count N] [--fail-rate R|N%]
                  [--timeout S] [--on-abort kill|drain] (-c 'COMMAND' | SCRIPT_FILE) [--no-wait] [--json]
    mschedule status TASK [--json]
    mschedule output TASK [AGENT] [--stderr]
    mschedule kill TASK
    mschedule tasks [--state S]
    mschedule job save|list|show|history|diff|default|run|push|pull ...   (see cli_jobs.py)
    mschedule schedule add|list|show|pause|resume|rm|next ...             (see cli_schedules.py)
    mschedule rerun TASK [--failed]
    mschedule history AGENT

The master is ``--master URL`` (or ``HOST:PORT``; before or after the command) or
``$MSCHEDULE_MASTER`` (default http://127.0.0.1:9900);
the token is ``$MSCHEDULE_TOKEN``. Exit status: 0 success (for ``run``: the task ended
SUCCEED), 1 the task did not succeed, 2 bad usage or a request the master refused,
3 the master cannot be reached (or refused the token), 130 interrupted.
"""

from __future__ import annotations

import argparse
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

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

TASK_FINAL = frozenset({"SUCCEED", "FAILED", "KILLED"})
SUCCEEDED = frozenset({"SUCCEED"})
FAILED = frozenset({"FAILED", "TIMEOUT", "KILLED", "INTERRUPTED", "LOST", "UNREACHABLE", "REJECTED"})
ACTIVE = frozenset({"DISPATCHED", "RUNNING"})
TARGET_FINAL = FAILED | SUCCEEDED | {"CANCELLED"}

PIPE_WIDTH = 240  #: table width when stdout is not a terminal
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


def counts_text(counts: dict[str, int], markup: bool = False) -> str:
    b = bucket_counts(counts)
    parts = [
        ("green", f"{b['succeeded']} succeeded"),
        ("red", f"{b['failed']} failed"),
        ("yellow", f"{b['running']} running"),
        ("", f"{b['waiting']} waiting"),
    ]
    if b["killed"]:
        parts.append(("magenta", f"{b['killed']} killed"))
    if b["cancelled"]:
        parts.append(("dim", f"{b['cancelled']} cancelled"))
    if not markup:
        return ", ".join(text for _, text in parts)
    return "  ".join(f"[{style}]{text}[/]" if style else text for style, text in parts)


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


def targets_table(task: dict[str, Any]) -> Table:
    out_table = table(f"task {task['id']}: {styled(task['state'])}")
    for col in ("Agent", "Host", "State", "Exit", "Duration", "Output"):
        out_table.add_column(col, overflow="fold")
    for agent_id, t in sorted(task.get("targets", {}).items()):
        out = target_output(t, "stdout").decode("utf-8", "replace").strip().splitlines()
        first = out[0][:60] + (" …" if len(out) > 1 or len(out[0]) > 60 else "") if out else ""
        if t.get("error"):
            first = first or f"error: {t['error']}"
        if t.get("reason") and t["state"] != "SUCCEED":
            first = first or t["reason"]
        state = styled(t["state"])
        if t.get("agent_state") and t["agent_state"] != t["state"]:
            state += f" (agent: {styled(t['agent_state'])})"  # a late result after the master's verdict
        if t.get("revised_from"):
            state += f" (revised from {t['revised_from']} at {when(t.get('revised_at'))})"
        if t.get("kill_pending"):
            state += " [magenta]KILL_PENDING[/]"  # asked to die; the agent has not confirmed it yet
        out_table.add_row(escape(agent_id), escape(t.get("hostname") or ""), state, exit_text(t),
                          duration(t.get("duration")), escape(first))  # fmt: skip
    return out_table


# ------------------------------------------------------------------ commands


def cmd_agents(client: Client, args: argparse.Namespace, console: Console) -> int:
    query = {"online": {True: "true", False: "false"}.get(args.online), "label": args.label, "hostname": args.hostname}
    agents = client.get("/api/v1/agents", **query)["agents"]
    if args.json:
        print(json.dumps(agents, indent=2))
        return EXIT_OK
    now = time.time()
    out_table = table(f"{len(agents)} agents")
    for col in ("ID", "Hostname", "IPs", "Labels", "Online", "Last heartbeat", "Running"):
        out_table.add_column(col, overflow="fold")
    for a in sorted(agents, key=lambda a: a["id"]):
        labels = " ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()))
        online = "[green]online[/]" if a["online"] else "[red]offline[/]"
        seen = a.get("last_seen") or a.get("last_heartbeat")
        out_table.add_row(escape(a["id"]), escape(a["hostname"]), escape(", ".join(a["ip"])), escape(labels), online,
                      ago(seen, now), str(len(a.get("running") or [])))  # fmt: skip
    console.print(out_table)
    return EXIT_OK


def number(text: str) -> int | float | str:
    """``"3"`` -> 3, ``"0.2"`` -> 0.2, anything else (``"20%"``) as given; the master validates."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


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
        "parallel": number(args.parallel),
        "fail_count": args.fail_count,
        "timeout": args.timeout,
        "on_abort": args.on_abort,
    }
    if args.fail_rate is not None:
        body["fail_rate"] = number(args.fail_rate)
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
    return body


def cmd_run(client: Client, args: argparse.Namespace, console: Console) -> int:
    task = client.post("/api/v1/tasks", build_submit(args, read_script(args)))
    if args.no_wait:
        print(json.dumps(task, indent=2) if args.json else task["id"])
        return EXIT_OK
    if not args.json:
        n = task["target_count"]
        console.print(f"task [bold]{task['id']}[/] submitted to {n} target{'s' if n != 1 else ''} "
                      f"(parallel {task['parallel']})", highlight=False)  # fmt: skip
    task = follow(client, task["id"], console, show=not args.json)
    return finish(task, console, args.json, all_output=args.show_output)


def follow(client: Client, task_id: str, console: Console, *, show: bool) -> dict[str, Any]:
    """Wait for the task to end, showing progress; Ctrl-C asks whether to kill it."""
    watcher = EventWatcher(client, task_id).start()
    try:
        return _follow(client, task_id, console, watcher, show)
    finally:
        watcher.stop()


def _follow(client: Client, task_id: str, console: Console, watcher: EventWatcher, show: bool) -> dict[str, Any]:
    """Events drive it: the view redraws from their counts, the end is noticed when its event
    arrives. The task is read only at the start, after (re)subscribing, on ``resync`` and at
    the end; only while the stream is down does it poll."""
    import queue

    view = _ProgressView(console, task_id) if show and console.is_terminal else _LineView(console, task_id, show)
    killing = False
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
                    final: dict[str, Any] = client.get(f"/api/v1/tasks/{quote(task_id)}", outputs=1)
                    return final
                try:
                    events = _wait(watcher, LIVE_CHECK if live else poll_interval(task["target_count"]))
                except queue.Empty:
                    read = True  # polling: only while the stream is down (or a check on a quiet one)
                    continue
                for kind, doc in events:
                    live, read, task = _apply(kind, doc, live, read, task)
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
                client.post(f"/api/v1/tasks/{quote(task_id)}/kill")
                console.print(f"kill requested for task {task_id}; waiting for the targets to stop "
                              "(Ctrl-C again to stop waiting)", highlight=False)  # fmt: skip
                killing = True
                view.resume()


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

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console.real if isinstance(console, LazyConsole) else console,
        )
        self.bar = self.progress.add_task(task_id, total=None, counts="")

    def __enter__(self) -> _ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, task: dict[str, Any]) -> None:
        self.progress.update(
            self.bar,
            description=f"{task['id']} {task['state']}",
            total=task["target_count"],
            completed=done_count(task["counts"]),
            counts=counts_text(task["counts"], markup=True),
        )

    def note(self, text: str) -> None:
        self.progress.update(self.bar, description=text)

    def pause(self) -> None:
        self.progress.stop()

    def resume(self) -> None:
        self.progress.start()


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

    def note(self, text: str) -> None:
        if self.show and text != self.last_note:
            self.console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, markup=False)
        self.last_note = text

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


def finish(task: dict[str, Any], console: Console, as_json: bool, *, all_output: bool = False) -> int:
    status = EXIT_OK if task["state"] == "SUCCEED" else EXIT_TASK_FAILED
    if as_json:
        print(json.dumps(task, indent=2))
        return status
    console.print(targets_table(task))
    for agent_id, t in sorted(task.get("targets", {}).items()):
        if t["state"] == "SUCCEED" and not all_output:
            continue
        out, err = target_output(t, "stdout"), target_output(t, "stderr")
        if not (out or err) and (t["state"] == "CANCELLED" or not (t.get("reason") or t.get("error"))):
            continue
        console.rule(f"{escape(agent_id)}: {styled(t['state'])}, exit {exit_text(t)}", align="left")
        if t.get("reason"):
            console.print(f"reason: {t['reason']}", markup=False, highlight=False)
        if t.get("error"):
            console.print(f"error: {t['error']}", markup=False, highlight=False)
        if out:
            console.print(out.decode("utf-8", "replace").rstrip("\n"), markup=False, highlight=False)
        if err:
            console.print(err.decode("utf-8", "replace").rstrip("\n"), markup=False, highlight=False, style="red")
    reason = f" ({task['reason']})" if task.get("reason") else ""
    console.print(f"task {task['id']} {styled(task['state'])}{escape(reason)}: {counts_text(task['counts'])}",
                  highlight=False)  # fmt: skip
    if task.get("revised_at"):
        console.print(f"verdict revised at {when(task['revised_at'])} by late reports from agents",
                      markup=False, highlight=False)  # fmt: skip
    return status


def cmd_status(client: Client, args: argparse.Namespace, console: Console) -> int:
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
        console.print(counts_text(task["counts"]), highlight=False)
        console.print(targets_table(task))  # fmt: skip
    return EXIT_OK if task["state"] in ("SUCCEED", "WAITING", "RUNNING") else EXIT_TASK_FAILED


def cmd_output(client: Client, args: argparse.Namespace, console: Console) -> int:
    stream = "stderr" if args.stderr else "stdout"
    out = sys.stdout.buffer
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
    task = client.post(f"/api/v1/tasks/{quote(args.task)}/kill")
    console.print(f"kill requested for task {task['id']} (now {task['state']}: {counts_text(task['counts'])})",
                  highlight=False, markup=False)  # fmt: skip
    return EXIT_OK


def cmd_tasks(client: Client, args: argparse.Namespace, console: Console) -> int:
    page = client.get("/api/v1/tasks", state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(page["tasks"], indent=2))
        return EXIT_OK
    out_table = table("tasks, newest first")
    for col in ("ID", "Name", "State", "Targets", "Progress", "Created"):
        out_table.add_column(col, overflow="fold")
    for t in page["tasks"]:
        out_table.add_row(escape(t["id"]), escape(t["name"]), styled(t["state"]), str(t["target_count"]),
                      counts_text(t["counts"]), when(t["created_at"]))  # fmt: skip
    console.print(out_table)
    return EXIT_OK


def quote(part: str) -> str:
    return _quote(part, safe="")


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ parsing


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mschedule", description="Run shell scripts on a fleet through mschedule-master.")
    p.add_argument("--master", default=os.environ.get("MSCHEDULE_MASTER", DEFAULT_MASTER),
                   help="master URL (env MSCHEDULE_MASTER; default %(default)s); token from env MSCHEDULE_TOKEN")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

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
    r.add_argument("--parallel", default="1", metavar="N|N%", help="targets running at once (default 1)")
    r.add_argument("--fail-count", type=int, default=-1, metavar="N", help="abort after more than N failures")
    r.add_argument("--fail-rate", default=None, metavar="R|N%", help="abort when failures exceed this share")
    r.add_argument("--timeout", type=float, default=0, metavar="S", help="seconds per target (0 = none)")
    r.add_argument("--on-abort", choices=("kill", "drain"), default="kill")
    r.add_argument("--name", default="")
    r.add_argument("--env", action="append", metavar="KEY=VALUE")
    r.add_argument("--cwd")
    r.add_argument("--show-output", action="store_true", help="print every target's output at the end, not only "
                   "the failed ones")
    r.add_argument("--no-wait", action="store_true", help="print the task id and return")
    r.add_argument("--json", action="store_true", help="print the task as JSON (no progress)")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="show a task and its targets")
    s.add_argument("task")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)

    o = sub.add_parser("output", help="print targets' output")
    o.add_argument("task")
    o.add_argument("agent", nargs="?")
    o.add_argument("--stderr", action="store_true")
    o.set_defaults(fn=cmd_output)

    k = sub.add_parser("kill", help="kill a task")
    k.add_argument("task")
    k.set_defaults(fn=cmd_kill)

    t = sub.add_parser("tasks", help="list tasks, newest first")
    t.add_argument("--state", type=str.upper, choices=("WAITING", "RUNNING", "SUCCEED", "FAILED", "KILLED"))
    t.add_argument("--limit", type=int, default=20)
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=cmd_tasks)

    from . import cli_jobs  # job, rerun, history (it imports this module's helpers)

    cli_jobs.add_commands(sub)
    from . import cli_schedules  # schedule add|list|show|pause|resume|rm|next

    cli_schedules.add_commands(sub)
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
    args = parser().parse_args(hoist_master(sys.argv[1:] if argv is None else list(argv)))
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


if __name__ == "__main__":
    # As the package's module, not as __main__: cli_jobs imports this module's CliError.
    from mschedule_master.cli import main as _main

    sys.exit(_main())
