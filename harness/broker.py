"""Start a real mosquitto from one of the project's configs on a free loopback port."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .procs import end_process

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "deploy" / "mosquitto"


class BrokerError(RuntimeError):
    pass


#: Where free_port() looks first: below the kernel's ephemeral range (see there).
_LOW_PORTS = 10000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now. Picked at random below the kernel's ephemeral range
    when there is room: the kernel hands ephemeral ports to every outgoing connection (each
    MQTT client's, each HTTP call's), so one picked there may be taken by a connection before
    the daemon binds it (seen with tests running side by side), while a port below it can only
    be taken by another listener that picked the same one."""
    ceiling = _ephemeral_low()
    for _ in range(20 if ceiling - _LOW_PORTS >= 1000 else 0):
        port = random.randrange(_LOW_PORTS, ceiling)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def listening_pid_owns(pid: int, port: int) -> bool:
    """True when process ``pid`` holds the socket listening on TCP ``port``.

    A bare connect() is not proof: between free_port() and mosquitto's bind another
    process (or another broker) may have taken the port, and the connect would succeed
    against it. So match the listening socket's inode against the process's fds.
    """
    inodes = set()
    # /proc/PID/net is the process's own network namespace (partition tests run brokers
    # in namespaces of their own; /proc/net would be the test process's).
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


def render_config(text: str, overrides: dict[str, str | list[str] | None]) -> str:
    """Replace directives in a mosquitto config.

    Each key is a directive name; its value replaces the first line holding that
    directive (a list gives several lines, None deletes it); later lines with the same
    directive are dropped. Directives absent from the text are appended.
    """
    out: list[str] = []
    done: set[str] = set()
    for line in text.splitlines():
        word = line.split(maxsplit=1)[0] if line.strip() and not line.lstrip().startswith("#") else None
        if word in overrides:
            if word not in done:
                done.add(word)
                out.extend(_lines(word, overrides[word]))
            continue
        out.append(line)
    for word, value in overrides.items():
        if word not in done:
            out.extend(_lines(word, value))
    return "\n".join(out) + "\n"


def _lines(word: str, value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [f"{word} {v}" for v in values]


class Mosquitto:
    """One mosquitto process. ``start()``/``stop()``/``kill()``/``restart()``; the port,
    persistence directory and log survive restarts."""

    def __init__(
        self,
        workdir: Path,
        *,
        conf: Path | str = "dev.conf",
        port: int | None = None,
        overrides: dict[str, str | list[str] | None] | None = None,
        name: str = "broker",
        bind: str = "127.0.0.1",
    ) -> None:
        self.conf = Path(conf) if Path(conf).is_absolute() else CONF_DIR / conf
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self._may_move = port is None  # a port we picked may move until the first start
        self.name = name
        self.bind = bind  #: the main listener's address ("0.0.0.0" for a namespaced host's every interface)
        self.overrides = dict(overrides or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{name}.log"
        self.conf_path = self.workdir / f"{name}.conf"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def render(self) -> str:
        data = self.workdir / f"{self.name}-data"
        data.mkdir(parents=True, exist_ok=True)
        base = {
            "listener": f"{self.port} {self.bind}",
            "persistence_location": f"{data}/",
            "log_dest": f"file {self.log_path}",
            "pid_file": None,
        }
        if os.geteuid() == 0:
            base["user"] = "root"  # keep root so the test's temp dirs stay writable
        base.update(self.overrides)
        return render_config(self.conf.read_text(), base)

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start and wait until this very process listens on the port. A port picked by
        free_port() that someone else took meanwhile is replaced (first start only)."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                self._may_move = False
                return self
            except BrokerError as e:
                if not (self._may_move and "Address already in use" in str(e)) or attempt == 2:
                    raise
                self.port = free_port()
        return self

    def _start_once(self, timeout: float) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                code = self.proc.returncode
                self._signal(signal.SIGKILL, 1.0)  # closes the stderr pipe and forgets the process
                raise BrokerError(f"mosquitto exited with {code}: {err}{self.log_tail()}")
            if listening_pid_owns(self.proc.pid, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout}s{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence snapshot and exits."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: everything since the last snapshot is lost."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        end_process(self.proc, sig, timeout)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
