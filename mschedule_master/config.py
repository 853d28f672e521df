"""The master's settings: one dataclass with documented defaults, built from a TOML file,
then the environment (``MSCHEDULE_MASTER_<FIELD>``), then command-line flags, each
overriding the one before (the layering is :mod:`mschedule_agent.layers`, shared with the
agent).

A config file may also define targeting groups, like an Ansible inventory::

    broker = "mqtt://127.0.0.1:1883"
    db = "/var/lib/mschedule/master.db"

    [groups]
    web = ["web-*"]
    canary = ["web-01", "role=canary"]
    db = "role=db"          # a single string is a one-member group
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mschedule_agent import layers
from mschedule_agent.brokerlist import BrokerList, join_addresses
from mschedule_agent.protocol import DEFAULT_PREFIX
from mschedule_agent.transport import MQTT_VERSIONS, check_mqtt_version, portable_topic

from .errors import ConfigError

#: Environment variables: MSCHEDULE_MASTER_<FIELD> (and MSCHEDULE_MASTER_CONFIG for the file).
ENV_PREFIX = "MSCHEDULE_MASTER_"

#: Defaults, named so docs and tests can refer to them.
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_DB = "mschedule-master.db"
DEFAULT_HTTP = "127.0.0.1:9900"
DEFAULT_CLIENT_ID = "mschedule-master"
DEFAULT_DELIVERY_TIMEOUT = 60.0  #: seconds an agent has to accept a task
DEFAULT_REDELIVER_INTERVAL = 5.0  #: re-publish an unacknowledged task this often
DEFAULT_REDELIVER_MAX = 20.0  #: ... the gap doubling up to this (and a kill to an absent agent's)
DEFAULT_ACK_GRACE = 5.0  #: extra wait past a task's expiry before UNREACHABLE
DEFAULT_LOST_GRACE = 60.0  #: agent offline this long mid-run -> LOST
DEFAULT_LOST_MAX = 600.0  #: ... but while its datacenter's bridge is down, LOST only after this
DEFAULT_KILL_RESEND = 5.0  #: re-send kill this often until the target reports
DEFAULT_FLUSH_INTERVAL = 5.0  #: persist agents' last_seen this often
DEFAULT_RETENTION_DAYS = 30.0  #: finished tasks are deleted this long after they ended (0 = never)
DEFAULT_OUTPUT_RETENTION_DAYS = 0.0  #: their outputs sooner, when set (0 = with the task)
#: HA masters on PostgreSQL (leadership.py): a leader silent this long loses the lead; a
#: standby takes over within about this (plus its poll and the restore). docs/deploy.md.
DEFAULT_LEASE = 5.0
#: a task over this many targets needs a plan or an explicit parallel (0 = no limit)
DEFAULT_UNPLANNED_TARGET_LIMIT = 1000
#: task copies published and not yet acknowledged by the broker, at most (flow.py; docs/rollout.md)
DEFAULT_DISPATCH_WINDOW = 2000
DEFAULT_MQTT_VERSION = "5"  #: "3.1.1" for brokers without MQTT 5 (NATS, RabbitMQ): docs/protocol.md
LOG_FORMATS = ("text", "json")
#: paho has 65,535 packet ids for everything the master publishes at QoS 1: tasks leave room
MAX_DISPATCH_WINDOW = 30000


@dataclass(frozen=True, slots=True)
class Settings:
    #: one broker URL, or several comma-separated (the nodes of one cluster: brokerlist.py)
    broker: str = DEFAULT_BROKER
    db: str = DEFAULT_DB
    topic_prefix: str = DEFAULT_PREFIX
    http: str = DEFAULT_HTTP  #: "HOST:PORT" or "off"
    token: str | None = None
    client_id: str = DEFAULT_CLIENT_ID
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
    redeliver_interval: float = DEFAULT_REDELIVER_INTERVAL
    redeliver_max: float = DEFAULT_REDELIVER_MAX
    ack_grace: float = DEFAULT_ACK_GRACE
    lost_grace: float = DEFAULT_LOST_GRACE
    lost_max: float = DEFAULT_LOST_MAX
    kill_resend: float = DEFAULT_KILL_RESEND
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    log_level: str = "INFO"
    groups: dict[str, list[str]] = field(default_factory=dict)
    retention_days: float = DEFAULT_RETENTION_DAYS
    output_retention_days: float = DEFAULT_OUTPUT_RETENTION_DAYS
    log_format: str = "text"  #: "text" (key=value fields) or "json" (one object per line)
    mqtt_version: str = DEFAULT_MQTT_VERSION
    lease: float = DEFAULT_LEASE  #: --db postgresql://: seconds a silent leader keeps the lead
    #: the master's online private key (``mschedule keys gen``): each task and kill copy is
    #: signed for its agent (docs/security.md). None: published unsigned.
    signing_key: str | None = None
    #: API tokens with roles, by name (roles.py): {"alice": {"role": "operator", "sha256": "..."}}
    tokens: dict[str, Any] = field(default_factory=dict)
    unplanned_target_limit: int = DEFAULT_UNPLANNED_TARGET_LIMIT
    dispatch_window: int = DEFAULT_DISPATCH_WINDOW

    def __post_init__(self) -> None:
        for name in ("delivery_timeout", "redeliver_interval", "redeliver_max", "ack_grace", "lost_grace", "lost_max", "kill_resend", "flush_interval", "lease"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or (value == 0 and name != "ack_grace"):
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}", name)
        for name in ("retention_days", "output_retention_days"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number of days >= 0 (0 = keep), not {value!r}", name)
        limit = self.unplanned_target_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(
                f"unplanned_target_limit must be a whole number of targets >= 0 (0 = no limit), not {limit!r}",
                "unplanned_target_limit",
            )
        window = self.dispatch_window
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_DISPATCH_WINDOW:
            raise ConfigError(
                f"dispatch_window must be a whole number of task copies from 1 to {MAX_DISPATCH_WINDOW}, not {window!r}",
                "dispatch_window",
            )
        if self.log_format not in LOG_FORMATS:
            formats = ", ".join(LOG_FORMATS)
            raise ConfigError(f"log_format must be one of {formats}, not {self.log_format!r}", "log_format")
        if not isinstance(self.log_level, str) or self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, not {self.log_level!r}", "log_level")
        try:
            check_mqtt_version(self.mqtt_version)
        except ValueError as e:
            raise ConfigError(str(e), "mqtt_version") from None
        if self.mqtt_version != "5" and not portable_topic(self.topic_prefix):
            raise ConfigError("topic_prefix must hold no '.' or ' ' with MQTT 3.1.1 (NATS refuses them)", "topic_prefix")
        if self.http != "off":
            parse_hostport(self.http)
        try:
            BrokerList.parse(self.broker)  # its messages never hold a password
        except ValueError as e:
            raise ConfigError(str(e), "broker") from None
        if not isinstance(self.groups, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in self.groups.values()
        ):
            raise ConfigError("groups must map a name to a list of selector strings", "groups")
        from . import roles

        roles.parse(self.tokens, self.token)  # raises ConfigError

    @property
    def api_tokens(self) -> Any:
        """The tokens and their roles (roles.Tokens): ``[tokens]`` plus ``token`` as an admin."""
        from . import roles

        return roles.parse(self.tokens, self.token)

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self.http == "off" else parse_hostport(self.http)


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_FLOATS = {n for n, f in _FIELDS.items() if f.type == "float"}
_INTS = {n for n, f in _FIELDS.items() if f.type == "int"}


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT or 'off', not {text!r}", "http")
    return host.strip("[]"), int(port)


def from_toml(path: str | Path) -> dict[str, object]:
    try:
        doc = layers.names(layers.read_toml(path))  # delivery-timeout = delivery_timeout, as flags
    except layers.FileError as e:
        why = f"cannot read config file {path}: {e.why}" if e.unreadable else f"config file {path} is not valid TOML: {e.why}"
        raise ConfigError(why, "config") from None
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}", unknown[0])
    return doc


def from_env(env: dict[str, str]) -> dict[str, object]:
    given = {key: value for _, key, value in layers.env_layer(env, ENV_PREFIX)}  # unknown names: ignored
    wanted = [(name, ENV_PREFIX + name.upper()) for name in _FIELDS if name not in ("groups", "tokens")]
    out: dict[str, object] = {name: given[key] for name, key in wanted if key in given}
    if "token" not in out and env.get("MSCHEDULE_TOKEN"):
        out["token"] = env["MSCHEDULE_TOKEN"]
    return out


def build(file_values: Mapping[str, Any], env_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> Settings:
    merged = layers.merge((file_values, env_values, {k: v for k, v in flag_values.items() if v is not None}))
    broker = merged.get("broker")  # a string (commas allowed), a TOML array, or a repeated flag
    if isinstance(broker, str) or (isinstance(broker, list) and all(isinstance(b, str) for b in broker)):
        merged["broker"] = join_addresses(broker)
    elif broker is not None:
        raise ConfigError(f"broker must be a URL, a comma-separated list or an array of URLs, not {broker!r}", "broker")
    groups = merged.get("groups")
    if isinstance(groups, dict):  # web = "role=web" is a one-member group, as web = ["role=web"]
        merged["groups"] = {k: [v] if isinstance(v, str) else v for k, v in groups.items()}
    for name in _FLOATS & set(merged):
        try:
            merged[name] = float(merged[name])
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, not {merged[name]!r}", name) from None
    for name in _INTS & set(merged):
        value = merged[name]
        if isinstance(value, str) and value.strip().isdigit():
            merged[name] = int(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number, not {value!r}", name)
    for name in set(merged) - _FLOATS - _INTS - {"groups", "tokens"}:
        if merged[name] is not None and not isinstance(merged[name], str):
            raise ConfigError(f"{name} must be a string", name)
    return Settings(**merged)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mschedule-master", description="The mschedule master daemon.")
    p.add_argument("--config", help="TOML settings file (also defines [groups])")
    p.add_argument("--broker", action="append", metavar="URL",
                   help="MQTT broker URL; several (the nodes of one cluster): repeat the flag or separate them "
                        f"with commas, tried in turn (default {DEFAULT_BROKER})")  # fmt: skip
    p.add_argument("--db", help=f"SQLite database path, or a postgresql:// URL for HA masters (default {DEFAULT_DB})")
    p.add_argument("--lease", type=float,
                   help=f"PostgreSQL only: seconds a leader that stopped answering keeps the lead ({DEFAULT_LEASE:g})")
    p.add_argument("--topic-prefix", dest="topic_prefix", help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--http", help=f"HTTP API address HOST:PORT, or 'off' (default {DEFAULT_HTTP})")
    p.add_argument("--token", help="HTTP API bearer token (or env MSCHEDULE_TOKEN)")
    p.add_argument("--client-id", dest="client_id", help=f"MQTT client id (default {DEFAULT_CLIENT_ID})")
    p.add_argument("--delivery-timeout", dest="delivery_timeout", type=float, help="seconds an agent has to accept a task")
    p.add_argument("--redeliver-interval", dest="redeliver_interval", type=float, help="re-publish unacked tasks this often")
    p.add_argument("--redeliver-max", dest="redeliver_max", type=float,
                   help=f"longest gap between re-publications (default {DEFAULT_REDELIVER_MAX:g})")
    p.add_argument("--ack-grace", dest="ack_grace", type=float, help="grace past expiry before UNREACHABLE")
    p.add_argument("--lost-grace", dest="lost_grace", type=float, help="seconds an agent may be offline mid-run before LOST")
    p.add_argument("--lost-max", dest="lost_max", type=float,
                   help="seconds a datacenter's bridge may be down before its agents' running targets are LOST")  # fmt: skip
    p.add_argument("--kill-resend", dest="kill_resend", type=float, help="re-send kill this often")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ...")
    p.add_argument("--signing-key", dest="signing_key", help="private key file that signs tasks and kills (0600)")
    p.add_argument("--log-format", dest="log_format", choices=LOG_FORMATS, help="text (key=value, default) or json")
    p.add_argument("--mqtt-version", dest="mqtt_version", choices=MQTT_VERSIONS,
                   help=f"MQTT protocol: 5, or 3.1.1 for brokers without MQTT 5 such as NATS (default {DEFAULT_MQTT_VERSION})")
    p.add_argument("--retention-days", dest="retention_days", type=float,
                   help=f"delete finished tasks this many days after they end; 0 = never ({DEFAULT_RETENTION_DAYS:g})")
    p.add_argument("--output-retention-days", dest="output_retention_days", type=float,
                   help="drop targets' outputs sooner than their task (default: with the task)")
    p.add_argument("--unplanned-target-limit", dest="unplanned_target_limit", type=int,
                   help="refuse a task over this many targets with neither a plan nor a parallel; 0 = no limit "
                        f"({DEFAULT_UNPLANNED_TARGET_LIMIT})")  # fmt: skip
    p.add_argument("--dispatch-window", dest="dispatch_window", type=int,
                   help="task copies published and not yet acknowledged by the broker, at most; the rest wait "
                        f"in the master's queue ({DEFAULT_DISPATCH_WINDOW})")  # fmt: skip
    return p


def load(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Settings from ``--config`` file < environment < flags. Raises ConfigError."""
    ns = parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    config_path = layers.config_path(ns.config, env, ENV_PREFIX)
    file_values = from_toml(config_path) if config_path else {}
    return build(file_values, from_env(env), layers.flag_layer(ns))
