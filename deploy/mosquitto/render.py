#!/usr/bin/env python3
"""Render mschedule's broker configs from the templates next to this file.

    render.py central --out DIR --dc bj --dc sh [--operator alice]... [--port 1883] [--bind ADDR]
                      [--master-port 1884] [--master-bind ADDR] [--data-dir DIR]
    render.py edge    --out DIR --dc bj --central HOST:PORT --credentials FILE [--port 1883] [--bind ADDR]

``central`` writes DIR/mosquitto.conf (from central.conf), DIR/conf.d/master.conf (the
master's own listener, from central-master.conf) and DIR/acl (agents, master,
operators, read-only monitors, each datacenter's two bridges). ``edge`` writes
DIR/mosquitto.conf (from edge.conf; it holds the bridges' passwords, so it is written
mode 0640) and DIR/acl (the agents' patterns, read-only monitors). The bridges'
passwords are read from the credentials file that mkpasswd.sh writes (``user:password``
lines).

The templates hold ``@NAME@`` placeholders; a placeholder left unfilled is an error, so
a rendered file is always complete. Standard library only: it runs wherever
mosquitto does. docs/deploy.md walks through it; harness/xdc.py runs these same steps.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

DEFAULT_PREFIX = "mschedule"
DEFAULT_CONF_DIR = "/etc/mschedule/mosquitto"
DEFAULT_DATA_DIR = "/var/lib/mschedule-broker"
MASTER_USER = "mschedule-master"
DEFAULT_MASTER_PORT = 1884
DEFAULT_PORT = 1883  #: the main listener's port (agents, bridges, operators)

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
_LEVEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_USER = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


class RenderError(ValueError):
    """A value cannot go into a config, or a template has an unknown placeholder."""


def bridge_user(dc: str) -> str:
    """The downlink bridge's client id and username at central: ``mschedule-bridge-<dc>``."""
    return f"mschedule-bridge-{dc}"


def uplink_user(dc: str) -> str:
    """The uplink bridge's client id and username at central: ``mschedule-uplink-<dc>``."""
    return f"mschedule-uplink-{dc}"


def fill(text: str, values: dict[str, str]) -> str:
    """Replace every ``@NAME@``; refuse a placeholder with no value."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise RenderError(f"no value for placeholder @{m.group(1)}@")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(sub, text)


def template(name: str) -> str:
    return (HERE / name).read_text()


def check(value: str, pattern: re.Pattern, what: str) -> str:
    if not pattern.match(value):
        raise RenderError(f"bad {what}: {value!r}")
    return value


def listener(port: int, bind: str | None, what: str) -> str:
    """A ``listener`` line's value: ``PORT`` (every interface) or ``PORT ADDRESS``."""
    if not 0 < port < 65536:
        raise RenderError(f"bad {what} port: {port}")
    if bind is not None and not re.match(r"^[A-Za-z0-9_.:-]+$", bind):
        raise RenderError(f"bad {what} bind address: {bind!r}")
    return f"{port} {bind}" if bind else str(port)


def central_files(*, prefix: str, dcs: list[str], operators: list[str], monitors: list[str], conf_dir: str,
                  data_dir: str, master_user: str = MASTER_USER, master_port: int = DEFAULT_MASTER_PORT,
                  master_bind: str | None = None, port: int = DEFAULT_PORT, bind: str | None = None) -> dict[str, str]:
    """The central broker's files, as {path relative to the config dir: text}."""
    check(prefix, _PREFIX, "topic prefix")
    main_listener = listener(port, bind, "listener")
    master_listener = listener(master_port, master_bind, "master")
    for dc in dcs:
        check(dc, _LEVEL, "datacenter name")
    users = [master_user, *operators, *monitors, *map(bridge_user, dcs), *map(uplink_user, dcs)]
    for user in users:
        check(user, _USER, "username")
    if len(set(users)) != len(users):
        raise RenderError(f"a user or datacenter is listed twice: {users}")
    base = {"PREFIX": prefix, "CONF_DIR": conf_dir, "DATA_DIR": data_dir, "LISTENER": main_listener}
    acl = [fill(template("acl-agents"), base), fill(template("acl-central"), {**base, "MASTER_USER": master_user})]
    acl += [fill(template("acl-operator"), {**base, "USER": u}) for u in operators]
    acl += [fill(template("acl-monitor"), {**base, "USER": u}) for u in monitors]
    acl += [fill(template("acl-bridge"), {**base, "DC": dc}) for dc in dcs]
    return {
        "mosquitto.conf": fill(template("central.conf"), base),
        "conf.d/master.conf": fill(template("central-master.conf"), {**base, "MASTER_LISTENER": master_listener}),
        "acl": "".join(acl),
    }


def edge_files(*, prefix: str, dc: str, central: str, bridge_password: str, uplink_password: str,
               monitors: list[str], conf_dir: str, data_dir: str, port: int = DEFAULT_PORT,
               bind: str | None = None) -> dict[str, str]:
    """One datacenter's edge mosquitto.conf (with its bridge) and acl."""
    check(prefix, _PREFIX, "topic prefix")
    main_listener = listener(port, bind, "listener")
    check(dc, _LEVEL, "datacenter name")
    for user in monitors:
        check(user, _USER, "username")
    if not re.match(r"^[A-Za-z0-9_.:\[\]-]+:\d{1,5}$", central):
        raise RenderError(f"central address must be HOST:PORT, not {central!r}")
    for user, password in ((bridge_user(dc), bridge_password), (uplink_user(dc), uplink_password)):
        if not password or any(c.isspace() for c in password):
            raise RenderError(f"bad password for {user}: empty or holds white space")
    base = {"PREFIX": prefix, "CONF_DIR": conf_dir, "DATA_DIR": data_dir, "DC": dc, "LISTENER": main_listener}
    conf = fill(template("edge.conf"), {**base, "CENTRAL_ADDRESS": central, "BRIDGE_PASSWORD": bridge_password,
                                        "UPLINK_PASSWORD": uplink_password})
    acl = [fill(template("acl-agents"), base)]
    acl += [fill(template("acl-monitor"), {**base, "USER": u}) for u in monitors]
    return {"mosquitto.conf": conf, "acl": "".join(acl)}


def read_password(credentials: Path, user: str) -> str:
    for line in credentials.read_text().splitlines():
        name, sep, password = line.partition(":")
        if sep and name == user:
            return password
    raise RenderError(f"{credentials} has no password for {user} (run mkpasswd.sh with {user})")


def write(out: Path, files: dict[str, str], *, secret: set[str] = frozenset()) -> None:
    """Write each file atomically; ``secret`` ones readable by owner and group only."""
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)  # a leftover keeps its own mode through O_CREAT: never reuse it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640 if name in secret else 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    for role in ("central", "edge"):
        p = sub.add_parser(role)
        p.add_argument("--out", required=True, type=Path, help="directory to write mosquitto.conf and acl into")
        p.add_argument("--prefix", default=DEFAULT_PREFIX, help="mschedule topic prefix (default %(default)s)")
        p.add_argument("--conf-dir", help="where the files will live (default: --out)")
        p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="persistence directory (default %(default)s)")
        p.add_argument("--monitor", action="append", default=[], help="a read-only username (repeat)")
        p.add_argument("--port", type=int, default=DEFAULT_PORT, help="the main listener's port (default %(default)s)")
        p.add_argument("--bind", help="the main listener's address (default: every interface)")
    c = sub.choices["central"]
    c.add_argument("--dc", action="append", default=[], help="a bridged datacenter (repeat)")
    c.add_argument("--operator", action="append", default=[], help="an operator username (repeat)")
    c.add_argument("--master-user", default=MASTER_USER)
    c.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT,
                   help="the master's own listener (default %(default)s)")
    c.add_argument("--master-bind", help="address of the master's listener (default: every interface; give "
                   "127.0.0.1 when the master runs on this host)")
    e = sub.choices["edge"]
    e.add_argument("--dc", required=True, help="this edge's datacenter name")
    e.add_argument("--central", required=True, help="central broker HOST:PORT")
    e.add_argument("--credentials", required=True, type=Path,
                   help="user:password lines (from mkpasswd.sh) with both bridge users of --dc")
    args = ap.parse_args(argv)
    conf_dir = str(Path(args.conf_dir or args.out).absolute())
    try:
        if args.role == "central":
            files = central_files(prefix=args.prefix, dcs=args.dc, operators=args.operator, monitors=args.monitor,
                                  conf_dir=conf_dir, data_dir=args.data_dir, master_user=args.master_user,
                                  master_port=args.master_port, master_bind=args.master_bind, port=args.port,
                                  bind=args.bind)
            write(args.out, files)
        else:
            files = edge_files(prefix=args.prefix, dc=args.dc, central=args.central,
                               bridge_password=read_password(args.credentials, bridge_user(args.dc)),
                               uplink_password=read_password(args.credentials, uplink_user(args.dc)),
                               monitors=args.monitor, conf_dir=conf_dir, data_dir=args.data_dir, port=args.port,
                               bind=args.bind)
            write(args.out, files, secret={"mosquitto.conf"})
    except (RenderError, OSError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(args.out / n) for n in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
