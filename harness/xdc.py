"""A central broker and one edge broker per datacenter, from the shipped configs.

The setup runs the steps of docs/deploy.md: ``deploy/mosquitto/mkpasswd.sh`` makes the
password and credentials files, ``deploy/mosquitto/render.py`` renders central.conf,
edge.conf and the ACLs; the brokers then start from those rendered files, with only
their listener (a free loopback port), persistence directory and log rewritten by
:class:`harness.broker.Mosquitto`.

    with Xdc(tmp_path, prefix=prefix, dcs=("bj", "sh")) as xdc:
        xdc.add_agent("bj", agent_id)            # a user on the bj edge, its broker reloaded
        url = xdc.url("bj", agent_id)            # mqtt://<id>:<password>@127.0.0.1:<port>
        xdc.wait_bridge("bj", up=True)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from harness.broker import CONF_DIR, BrokerError, Mosquitto, free_port
from harness.mqtt import Collector

CENTRAL = "central"
MASTER_USER = "mschedule-master"
OPERATOR_USER = "operator"
#: Read-only user present on every broker, for a test's observers.
MONITOR_USER = "monitor"
#: Read-only user at central for the harness's own bridge-state watcher. Brokers run
#: with use_username_as_clientid, so two connections of one user kick each other out.
WATCH_USER = "xdc-watch"

T = TypeVar("T")

RENDER = CONF_DIR / "render.py"
MKPASSWD = CONF_DIR / "mkpasswd.sh"


def bridge_user(dc: str) -> str:
    """The downlink bridge (central -> edge: tasks, kills) and its state notifications."""
    return f"mschedule-bridge-{dc}"


def uplink_user(dc: str) -> str:
    """The uplink bridge (edge -> central: statuses, heartbeats, results)."""
    return f"mschedule-uplink-{dc}"


def bridge_state_topic(dc: str) -> str:
    return f"$SYS/broker/connection/{bridge_user(dc)}/state"


def run(argv: list[str]) -> str:
    """Run one deployment step; fail loudly with its output."""
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}: {p.stdout}{p.stderr}")
    return p.stdout


class Site:
    """One broker (central or a datacenter's edge): its rendered files and process.
    Central has a second listener, ``master_port``, for the master's user only."""

    def __init__(self, root: Path, name: str, *, tls: bool = False) -> None:
        self.name = name
        self.tls = tls
        self.dir = root / name
        self.etc = self.dir / "etc"
        self.etc.mkdir(parents=True, exist_ok=True)
        self.passwd = self.etc / "passwd"
        self.credentials = self.etc / "credentials"
        self.broker = Mosquitto(self.dir, conf=self.etc / "mosquitto.conf", name=name)
        self.master_port = free_port() if name == CENTRAL else None

    @property
    def port(self) -> int:
        return self.broker.port

    def port_for(self, user: str | None) -> int:
        """The master logs in on its own listener; everyone else on the shared one."""
        return self.master_port if user == MASTER_USER and self.master_port else self.port

    def add_users(self, *users: str, passwd: Path | None = None) -> None:
        run(["sh", MKPASSWD, passwd or self.passwd, self.credentials, *users])

    def password(self, user: str) -> str:
        for line in self.credentials.read_text().splitlines():
            name, _, password = line.partition(":")
            if name == user:
                return password
        raise KeyError(f"no user {user} on {self.name}")

    def url(self, user: str | None, password: str | None = None) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        if user is None:
            return f"{scheme}://127.0.0.1:{self.port}"
        password = password if password is not None else self.password(user)
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port_for(user)}"

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password and ACL files."""
        if self.broker.proc is not None:
            self.broker.proc.send_signal(signal.SIGHUP)


class Xdc:
    """Central + edges. ``start()`` renders, starts every broker and waits for the bridges."""

    def __init__(self, workdir: Path, *, prefix: str, dcs: tuple[str, ...] = ("bj", "sh"),
                 tls_dir: Path | None = None, hosts: dict[str, Any] | None = None,
                 central_host: str = "127.0.0.1") -> None:
        """``tls_dir``: holds ca.crt, server.crt and server.key (for 127.0.0.1); every
        listener and bridge then uses TLS as docs/deploy.md's "TLS" section says, and the
        URLs are mqtts://. Clients find the CA through $SSL_CERT_FILE.

        ``hosts``: site name -> a :class:`harness.netns.Host` to run that site's broker on
        (partition tests); central then listens on every interface of its host and the
        edges reach it at ``central_host``."""
        self.workdir = Path(workdir)
        self.prefix = prefix
        self.dcs = tuple(dcs)
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        tls = self.tls_dir is not None
        self.hosts = dict(hosts or {})
        self.central_host = central_host
        self.central = Site(self.workdir, CENTRAL, tls=tls)
        if CENTRAL in self.hosts:
            self.central.broker.bind = "0.0.0.0"
        self.edges = {dc: Site(self.workdir, dc, tls=tls) for dc in self.dcs}
        self._watch: Collector | None = None

    def site(self, name: str) -> Site:
        return self.central if name == CENTRAL else self.edges[name]

    def url(self, site: str, user: str | None) -> str:
        return self.site(site).url(user)

    # ------------------------------------------------------------------ the documented steps
    def render(self) -> None:
        c = self.central
        c.add_users(OPERATOR_USER, MONITOR_USER, WATCH_USER, *map(bridge_user, self.dcs), *map(uplink_user, self.dcs))
        c.add_users(MASTER_USER, passwd=c.etc / "passwd-master")
        dc_args = [a for dc in self.dcs for a in ("--dc", dc)]
        run([sys.executable, RENDER, "central", "--out", c.etc, "--prefix", self.prefix, *dc_args,
             "--operator", OPERATOR_USER, "--monitor", MONITOR_USER, "--monitor", WATCH_USER,
             "--master-port", c.master_port, "--master-bind", "127.0.0.1", "--data-dir", c.dir / "central-data"])
        for dc, e in self.edges.items():
            e.add_users(MONITOR_USER)
            # The bridges' credentials, carried from central to the edge (docs/deploy.md, step 3).
            bridge_cred = e.etc / "bridge-credentials"
            bridge_cred.write_text("".join(f"{u}:{c.password(u)}\n" for u in (bridge_user(dc), uplink_user(dc))))
            bridge_cred.chmod(0o600)
            run([sys.executable, RENDER, "edge", "--out", e.etc, "--prefix", self.prefix, "--dc", dc,
                 "--central", f"{self.central_host}:{c.port}", "--credentials", bridge_cred, "--monitor", MONITOR_USER,
                 "--data-dir", e.dir / f"{dc}-data"])
        if self.tls_dir is not None:
            self._apply_tls()

    def _apply_tls(self) -> None:
        """docs/deploy.md, "TLS": the templates' commented certificate lines, uncommented
        and pointed at ``tls_dir``; both bridges of each edge verify central with the CA."""
        conf_files = [self.central.etc / "mosquitto.conf", self.central.etc / "conf.d" / "master.conf"]
        conf_files += [e.etc / "mosquitto.conf" for e in self.edges.values()]
        for path in conf_files:
            out = []
            for line in path.read_text().splitlines():
                if line.split(" ", 1)[0] in ("#certfile", "#keyfile", "#cafile", "#tls_version"):
                    line = line[1:].replace("/etc/mschedule/mosquitto/tls", str(self.tls_dir))
                out.append(line)
                if line.startswith("remote_password "):
                    out += [f"bridge_cafile {self.tls_dir / 'ca.crt'}", "bridge_tls_version tlsv1.2"]
            path.write_text("\n".join(out) + "\n")

    def add_agent(self, site: str, agent_id: str | None = None) -> str:
        """Create an agent user (its id; a new uuid4 hex when None) on ``site``; reload it."""
        return self.add_agents(site, [agent_id or uuid.uuid4().hex])[0]

    def add_agents(self, site: str, agent_ids: list[str]) -> list[str]:
        """Create several agent users on ``site`` with one password-file update and reload."""
        s = self.site(site)
        s.add_users(*agent_ids)
        s.reload()
        return agent_ids

    def provision_agent(self, site: str, state_dir: Path) -> str:
        """docs/deploy.md's agent step: a new id, its user on the edge, its id file."""
        agent_id = self.add_agent(site)
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "agent-id").write_text(agent_id + "\n")
        return agent_id

    def wait_reloaded(self, site: str, user: str, timeout: float = 10.0) -> None:
        """Wait until ``site`` accepts ``user`` (after add_agent's SIGHUP)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.can_connect(site, user):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{site} does not accept {user} after {timeout}s")
            time.sleep(0.05)

    def can_connect(self, site: str, user: str | None, password: str | None = None, *, port: int | None = None,
                    tls: bool | None = None) -> bool:
        """One MQTT v5 connect attempt (on ``port``, default: the user's listener; with TLS
        when the cluster uses it, unless ``tls`` says); True when the broker accepts it."""
        return self.on(site, lambda: self._can_connect(site, user, password, port=port, tls=tls))

    def _can_connect(self, site: str, user: str | None, password: str | None, *, port: int | None,
                     tls: bool | None) -> bool:
        import paho.mqtt.client as paho

        result: list[bool] = []
        done = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                        protocol=paho.MQTTv5)
        if user is not None:
            c.username_pw_set(user, password if password is not None else self.site(site).password(user))
        if self.tls_dir is not None and tls is not False:
            c.tls_set(ca_certs=str(self.tls_dir / "ca.crt"))

        def on_connect(_c, _u, _f, rc, _p):
            result.append(not rc.is_failure)
            done.set()

        c.on_connect = on_connect
        c.on_disconnect = lambda *a: done.set()
        try:
            c.connect("127.0.0.1", port or self.site(site).port_for(user), keepalive=10)
            c.loop_start()
            done.wait(5)
        except OSError:
            return False
        finally:
            c.disconnect()
            c.loop_stop()
        return bool(result and result[0])

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0, attempts: int = 3) -> Xdc:
        """Render, start every broker, wait for the bridges. A free port can be taken by
        another process before mosquitto binds it: then retry on fresh ports."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except (BrokerError, TimeoutError):
                self.stop()
                if attempt == attempts - 1:
                    raise
                for s in (self.central, *self.edges.values()):
                    s.broker.port = free_port()
                self.central.master_port = free_port()
        raise AssertionError("unreachable")

    def on(self, site: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` where ``site``'s broker lives (its namespace, when it has one)."""
        host = self.hosts.get(site)
        return fn() if host is None else host.call(fn)

    def _start_once(self, timeout: float) -> Xdc:
        self.render()
        self.on(CENTRAL, lambda: self._start_site(self.central))
        self._watch = Collector(self.central.url(WATCH_USER), ["$SYS/broker/connection/+/state"])
        self.on(CENTRAL, self._watch.__enter__)
        for e in self.edges.values():
            self.on(e.name, lambda e=e: self._start_site(e))
        for dc in self.dcs:
            self.wait_bridge(dc, up=True, timeout=timeout)
        return self

    def _start_site(self, site: Site) -> None:
        site.broker.start()
        # Something listening is not proof it is this broker: log in with its own user.
        user = WATCH_USER if site is self.central else MONITOR_USER
        if not (site.broker.running() and self.can_connect(site.name, user)):
            raise BrokerError(f"{site.name}: port {site.port} is not this broker's{site.broker.log_tail(5)}")

    def stop(self) -> None:
        if self._watch is not None:
            try:
                self._watch.__exit__(None, None, None)
            except Exception:
                pass
            self._watch = None
        for e in self.edges.values():
            e.broker.stop()
        self.central.broker.stop()  # signals and waits: works from any namespace

    def __enter__(self) -> Xdc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ bridge states at central
    def bridge_states(self, dc: str) -> list[bytes]:
        """Every state notification central delivered for ``dc``'s bridge, in order."""
        assert self._watch is not None, "start() first"
        topic = bridge_state_topic(dc)
        with self._watch._cond:
            return [m.payload for m in self._watch.messages if m.topic == topic]

    def wait_bridge(self, dc: str, *, up: bool, timeout: float = 20.0, after: int = 0) -> None:
        """Wait until the latest state of ``dc``'s bridge at central (among notifications
        number ``after`` onwards) is "1" (up) or "0" (down)."""
        want = b"1" if up else b"0"
        deadline = time.monotonic() + timeout
        while True:
            states = self.bridge_states(dc)[after:]
            if states and states[-1] == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"bridge {dc} not {'up' if up else 'down'} after {timeout}s: {states}")
            time.sleep(0.05)
