"""Run mschedule daemons (or any command) as real child processes, and stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A child process with its output in a log file. Always call ``stop()`` (or use
    it as a context manager); ``kill9()`` simulates a crash."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd or ROOT
        self.proc: subprocess.Popen | None = None

    @classmethod
    def python(cls, module: str, *args: str, **kw) -> Proc:
        return cls([sys.executable, "-m", module, *args], **kw)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if not self.running():
                return text in self.log()
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group. Returns the exit code."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self._signal_group(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                rc = self.proc.wait(5)
        self._signal_group(signal.SIGKILL)  # leftovers in the group, if any
        self.proc = None
        return rc

    def kill9(self) -> None:
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def flag_argv(flags: dict[str, object]) -> list[str]:
    """``{"will_delay": 1, "x": None, "no_stream": True}`` -> ``["--will-delay", "1", "--no-stream"]``
    (None leaves a flag out; True is a flag without a value)."""
    argv: list[str] = []
    for name, value in flags.items():
        if value is True:
            argv.append(f"--{name.replace('_', '-')}")
        elif value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def wait_until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``pred`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def processes_mentioning(text: str) -> list[str]:
    """``"PID: command line"`` of live processes (not this one) whose command line mentions
    ``text`` (a test's workdir: what it started and must have stopped)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{proc.name}: {cmd}")
    return found


def end_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig`` to a still-running ``proc`` and wait ``timeout`` s for it, then SIGKILL it:
    how the harness stops a broker or NATS node it started."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_leftovers(workdir: Path) -> None:
    """A failed test must not leave what it started (under ``workdir``) running."""
    for entry in processes_mentioning(str(workdir)):
        try:
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def stopped(*pids: int) -> Iterator[None]:
    """SIGSTOP the processes for the block (SIGCONT after it, whatever happens): their
    connections stay open and what a broker sends them waits unread."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
