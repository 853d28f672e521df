"""Run one script in its own process group, capture its output, enforce timeout and kill.

Each run owns one thread (``Run``): it starts the process, multiplexes stdout, stderr,
a pidfd (process exit) and a wake-up pipe (kill requests) on one selector, and reports
an :class:`Outcome`. Nothing here touches MQTT or the ledger.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .capture import Captured, HeadTail
from .protocol import TargetState

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
#: After the script's main process exits, how long to keep reading output that
#: background children still write, before closing the pipes.
DRAIN_AFTER_EXIT = 1.0
#: After SIGKILL, how long to wait for the group to vanish before giving up on it.
KILL_WAIT = 5.0
#: Poll interval while waiting for a terminated group to empty (no fd tells us that).
GROUP_POLL = 0.05
DEFAULT_SHELL = "/bin/sh"


class OutputSink(Protocol):
    """Where a run's output goes as it is read, besides the result (see :mod:`.livestream`).
    Called on the run's thread; its methods must not block and must not raise."""

    def feed(self, stream: str, data: bytes) -> None: ...

    def due_in(self, now: float) -> float | None: ...

    def poll(self, now: float | None = None) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RunSpec:
    task_id: str
    script: bytes
    timeout: float = 0.0  #: seconds; 0 = no limit
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    output_cap: int = 1024 * 1024
    kill_grace: float = 5.0
    #: Called on the run's own thread before the script is written and executed (the
    #: agent's durable RUNNING mark: a slow disk then stalls this run, not the MQTT
    #: thread). If it raises, nothing is executed: the outcome is FAILED, code None.
    before_exec: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    #: Live output: fed every piece of stdout/stderr as it is read, closed once the
    #: streams are; None = the output goes only into the result.
    output: OutputSink | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str  #: a protocol TargetState name
    code: int | None  #: exit status; 128 + signal after a signal death; None if it never ran
    signal: int | None
    stdout: Captured
    stderr: Captured
    started_at: float
    finished_at: float
    pid: int | None = None
    error: str = ""
    #: sha256 (hex) of the script file as written and executed; None when nothing was executed
    script_sha256: str | None = None


def file_sha256(path: str) -> str:
    """The sha256 (hex) of a file's bytes."""
    h = new_sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def new_sha256() -> _Hash:
    """A sha256 from CPython's built-in implementation: ``hashlib`` would load OpenSSL's
    libcrypto (``_hashlib``, MBs of RSS), which an agent keeps out (test_agent_footprint)."""
    try:
        # CPython's private modules: typeshed has no stub of them for Python 3.11
        from _sha2 import sha256  # type: ignore[import-not-found]  # CPython >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11
        except ImportError:  # another Python: the standard way
            from hashlib import sha256
    h: _Hash = sha256()
    return h


def interpreter(script: bytes, path: str) -> list[str]:
    """argv to run ``path``: its ``#!`` line split as Linux does (interpreter plus at most
    one argument), else ``/bin/sh path``."""
    if script.startswith(b"#!"):
        line = script[2:].split(b"\n", 1)[0].strip().decode("utf-8", "surrogateescape")
        if line:
            parts = line.split(None, 1)
            return [*parts, path]
    return [DEFAULT_SHELL, path]


class Executor:
    """Starts runs. Each script is written to its own file in ``tmp_dir``, a private (0700)
    directory; without one, the executor makes a private directory of its own."""

    def __init__(self, *, tmp_dir: Path | str | None = None, now: Callable[[], float] = time.time) -> None:
        if tmp_dir is None:
            self.tmp_dir = tempfile.mkdtemp(prefix="mschedule-agent-")
            weakref.finalize(self, shutil.rmtree, self.tmp_dir, True)
        else:
            self.tmp_dir = str(tmp_dir)
            Path(self.tmp_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.tmp_dir, 0o700)
        self._now = now

    def clean_stale(self) -> None:
        """Remove scripts a crashed agent left in ``tmp_dir`` (call it only for an agent's
        own directory, before any run starts)."""
        for p in Path(self.tmp_dir).glob("mschedule-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def identify(self, pid: int) -> str | None:
        """See :func:`process_identity`."""
        return process_identity(pid)

    def kill_orphan(self, pgid: int, identity: str | None, grace: float) -> bool:
        """See :func:`kill_orphan_group`."""
        return kill_orphan_group(pgid, identity, grace)

    def start(
        self, spec: RunSpec, *, on_started: Callable[[int], None], on_done: Callable[[Outcome], None]
    ) -> Run:
        run = Run(spec, tmp_dir=self.tmp_dir, now=self._now, on_started=on_started, on_done=on_done)
        run.start()
        return run


class Run:
    """One script run on its own thread. ``kill(state, reason)`` from any thread."""

    def __init__(
        self,
        spec: RunSpec,
        *,
        tmp_dir: str,
        now: Callable[[], float],
        on_started: Callable[[int], None],
        on_done: Callable[[Outcome], None],
    ) -> None:
        self.spec = spec
        self.pid: int | None = None
        self._tmp_dir = tmp_dir
        self._now = now
        self._on_started = on_started
        self._on_done = on_done
        self._lock = threading.Lock()
        self._term_state: str | None = None  # TIMEOUT or KILLED once we decided to stop it
        self._term_reason = ""
        self._term_at: float | None = None  # monotonic time SIGTERM was sent
        self._killed_at: float | None = None  # monotonic time SIGKILL was sent
        self._names: dict[int, str] = {}  #: stdout/stderr fd -> stream name, for the output sink
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._main, name=f"run-{spec.task_id}", daemon=True)
        self.done = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def kill(self, state: str = TargetState.KILLED, reason: str = "killed on request") -> None:
        """Ask the run to stop: SIGTERM to its group now, SIGKILL after the grace period."""
        with self._lock:
            if self._term_state is None:
                self._term_state, self._term_reason = state, reason
            if self._wake_w < 0:
                return  # finished: its pipe is closed (and the fd number may be reused)
            try:
                os.write(self._wake_w, b"k")
            except OSError:
                pass  # the pipe is full: a wake-up is already pending

    # ------------------------------------------------------------------ the run thread
    def _main(self) -> None:
        started = self._now()
        path = None
        try:
            if self.spec.before_exec is not None:
                self.spec.before_exec()
            path = self._write_script()
            digest = file_sha256(path)  # read back: what the interpreter is about to read
            outcome = self._execute(path, started)
            if self.pid is not None:
                outcome = dataclasses.replace(outcome, script_sha256=digest)
                if self.spec.output is not None:
                    self.spec.output.close()  # its output_end goes before the result
        except Exception as e:
            log.exception("run of task_id=%s failed inside the agent", self.spec.task_id)
            empty = Captured(b"", 0, False)
            outcome = Outcome(TargetState.FAILED, None, None, empty, empty, started, self._now(), self.pid, f"agent error: {e}")
        finally:
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            with self._lock:
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)
                self._wake_r = self._wake_w = -1
        try:
            self._on_done(outcome)
        except Exception:
            log.exception("on_done failed for task_id=%s", self.spec.task_id)
        finally:
            self.done.set()

    def _write_script(self) -> str:
        """The script in a new file (0700, O_EXCL) of the private run directory."""
        for _ in range(5):
            path = os.path.join(self._tmp_dir, f"mschedule-{self.spec.task_id[:40]}-{os.urandom(4).hex()}")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(self.spec.script)
            return path
        raise OSError(f"cannot create a script file in {self._tmp_dir}")

    def _execute(self, path: str, started: float) -> Outcome:
        spec = self.spec
        argv = interpreter(spec.script, path)
        env = {**script_environ(), **spec.env, "MSCHEDULE_TASK_ID": spec.task_id}
        out, err = HeadTail(spec.output_cap), HeadTail(spec.output_cap)
        with self._lock:
            if self._term_state is not None:  # killed before it started
                return self._never_ran(started, self._term_state, self._term_reason, out, err)
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=spec.cwd or "/",
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                return self._never_ran(started, TargetState.FAILED, f"cannot start {argv[0]}: {e}", out, err)
            self.pid = proc.pid
        try:
            self._on_started(proc.pid)
        except Exception:
            log.exception("on_started failed for task_id=%s", spec.task_id)
        self._pump(proc, out, err)
        return self._outcome(proc, out, err, started)

    def _never_ran(self, started: float, state: str, error: str, out: HeadTail, err: HeadTail) -> Outcome:
        return Outcome(state, None, None, out.result(), err.result(), started, self._now(), None, error)

    def _pump(self, proc: subprocess.Popen[bytes], out: HeadTail, err: HeadTail) -> None:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None  # both are pipes (_execute)
        sel = selectors.DefaultSelector()
        streams = {stdout.fileno(): out, stderr.fileno(): err}
        self._names = {stdout.fileno(): "stdout", stderr.fileno(): "stderr"}
        sink = self.spec.output
        for f in (stdout, stderr):
            os.set_blocking(f.fileno(), False)
            sel.register(f.fileno(), selectors.EVENT_READ, "out")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pidfd = _pidfd(proc.pid)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        deadline = time.monotonic() + self.spec.timeout if self.spec.timeout > 0 else None
        exited_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.kill(TargetState.TIMEOUT, f"timed out after {self.spec.timeout:g} s")
                    deadline = None
                self._escalate(proc, now)
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and self._finished(streams, exited_at, now):
                    return
                if sink is not None:
                    sink.poll(now)
                wait = self._wait_time(deadline, exited_at, now, pidfd)
                due = sink.due_in(now) if sink is not None else None
                for key, _ in sel.select(wait if due is None else min(wait, due + 0.001)):
                    if key.data == "out":
                        self._read(sel, key.fd, streams)
                    elif key.data == "wake":
                        _drain(self._wake_r)
                    elif key.data == "exit":
                        sel.unregister(key.fd)
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
            stdout.close()
            stderr.close()
            if proc.poll() is None:  # only reachable through an agent bug; never leave it behind
                _killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _read(self, sel: selectors.BaseSelector, fd: int, streams: dict[int, HeadTail]) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if chunk:
            streams[fd].feed(chunk)
            if self.spec.output is not None:
                self.spec.output.feed(self._names[fd], chunk)
        else:
            sel.unregister(fd)
            del streams[fd]

    def _escalate(self, proc: subprocess.Popen[bytes], now: float) -> None:
        """SIGTERM once a stop was requested; SIGKILL the group after the grace period."""
        with self._lock:
            wanted = self._term_state is not None
        if wanted and self._term_at is None:
            self._term_at = now
            _killpg(proc.pid, signal.SIGTERM)
        if self._term_at is not None and self._killed_at is None and now >= self._term_at + self.spec.kill_grace:
            self._killed_at = now
            _killpg(proc.pid, signal.SIGKILL)

    def _finished(self, streams: dict[int, HeadTail], exited_at: float, now: float) -> bool:
        if self._term_at is not None:
            # Stopping on purpose: wait until the whole group is gone (or SIGKILL gave up).
            if _group_alive(self.pid):
                return self._killed_at is not None and now >= self._killed_at + KILL_WAIT
            return not streams or now >= exited_at + DRAIN_AFTER_EXIT
        return not streams or now >= exited_at + DRAIN_AFTER_EXIT

    def _wait_time(self, deadline: float | None, exited_at: float | None, now: float, pidfd: int | None) -> float:
        waits = [1.0 if pidfd is not None else GROUP_POLL]
        if deadline is not None:
            waits.append(deadline - now)
        if self._term_at is not None:
            waits.append(GROUP_POLL)
        if exited_at is not None:
            waits.append(min(GROUP_POLL, exited_at + DRAIN_AFTER_EXIT - now))
        return max(0.0, min(waits))

    def _outcome(self, proc: subprocess.Popen[bytes], out: HeadTail, err: HeadTail, started: float) -> Outcome:
        rc = proc.returncode
        sig = -rc if rc < 0 else None
        code = 128 + sig if sig is not None else rc
        with self._lock:
            term_state, reason = self._term_state, self._term_reason
        if self._term_at is not None and term_state is not None:
            state, error = term_state, reason
        else:
            state, error = (TargetState.SUCCEED if code == 0 else TargetState.FAILED), ""
        return Outcome(state, code, sig, out.result(), err.result(), started, self._now(), proc.pid, error)


#: Environment variables of the agent a script never sees (they may hold the broker's password).
PRIVATE_ENV_PREFIX = "MSCHEDULE_AGENT_"


def script_environ() -> dict[str, str]:
    """The agent's environment minus its own settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV_PREFIX)}


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _stat(pid: int | str) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], pgrp [2], starttime [19])."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()


def process_identity(pid: int) -> str | None:
    """``"<boot id>:<start time>"`` of a live process: with its pid, it names that process
    across a crash of the agent without mistaking a later process that reused the pid."""
    fields = _stat(pid)
    return f"{_boot_id()}:{int(fields[19])}" if fields and len(fields) > 19 else None


def orphan_group(pgid: int, identity: str | None) -> list[int]:
    """Live members of the process group a run started as ``pgid``/``identity`` (found in
    the ledger after a crash); [] if that group is gone or the id now names another one."""
    if identity is None or ":" not in identity:
        return []
    boot, _, start = identity.rpartition(":")
    if boot != _boot_id():
        return []  # rebooted since: whatever has this pgid now is not ours
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(name)
            # The pgid cannot be reused while any member lives: same boot + started no
            # earlier than the leader means it is the run's own group.
            if fields and len(fields) > 19 and fields[0] != b"Z" and int(fields[2]) == pgid and int(fields[19]) >= int(start):
                members.append(int(name))
    return members


def kill_orphan_group(pgid: int, identity: str | None, grace: float) -> bool:
    """SIGTERM an orphaned run's group, SIGKILL it after ``grace`` seconds. True if one was found."""
    if not orphan_group(pgid, identity):
        return False
    _killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and orphan_group(pgid, identity):
        time.sleep(GROUP_POLL)  # not our children: nothing to wait on but /proc
    if orphan_group(pgid, identity):
        _killpg(pgid, signal.SIGKILL)
    return True


def _group_alive(pgid: int | None) -> bool:
    """True while a live (non-zombie) process is in group ``pgid``. Zombies do not count:
    orphans whose new parent reaps them late must not hold up the result."""
    if pgid is None:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


