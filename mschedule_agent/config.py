"""The agent's settings: named defaults, overridden by a TOML file, then the
environment (``MSCHEDULE_AGENT_*``), then command-line flags (the layering is
:mod:`.layers`, shared with the master)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__ as _version
from . import layers
from .brokerlist import BrokerList, join_addresses
from .errors import ConfigError
from .protocol import DEFAULT_PREFIX, MAX_OUTPUT_CAP, ProtocolError, Topics, check_level
from .transport import MQTT_VERSIONS, check_mqtt_version, portable_topic

ENV_PREFIX = "MSCHEDULE_AGENT_"

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_STATE_DIR = "/var/lib/mschedule-agent"
DEFAULT_HEARTBEAT = 5.0  #: seconds between retained heartbeats
DEFAULT_MAX_TASKS = 1  #: scripts run at once (the design document's "busy" flag)
DEFAULT_WILL_DELAY = 10  #: seconds the broker waits before publishing our last will
DEFAULT_OUTPUT_CAP = 1024 * 1024  #: bytes kept per stream when the task does not say
DEFAULT_RESEND = 5.0  #: seconds between re-sends of an unacknowledged result
DEFAULT_HOSTINFO_REFRESH = 300.0  #: seconds between re-reads of hostname and addresses
DEFAULT_SESSION_EXPIRY = 14 * 24 * 3600  #: seconds the broker keeps our session offline
DEFAULT_KEEP_IDS = 30 * 24 * 3600.0  #: seconds a finished task id is kept for dedup
DEFAULT_MQTT_VERSION = "5"  #: "3.1.1" for brokers without MQTT 5 (NATS, RabbitMQ): docs/protocol.md
DEFAULT_CLOCK_SKEW = 30.0  #: seconds of clock difference a signed message's window tolerates
SIGNING_MODES = ("off", "audit", "enforce")


@dataclass(frozen=True, slots=True)
class Settings:
    #: one broker URL, or several comma-separated (the nodes of one cluster: brokerlist.py)
    broker: str = DEFAULT_BROKER
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    id_file: Path | None = None  #: default: <state_dir>/agent-id
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat: float = DEFAULT_HEARTBEAT
    max_tasks: int = DEFAULT_MAX_TASKS
    topic_prefix: str = DEFAULT_PREFIX
    will_delay: int = DEFAULT_WILL_DELAY
    output_cap: int = DEFAULT_OUTPUT_CAP
    resend: float = DEFAULT_RESEND
    hostinfo_refresh: float = DEFAULT_HOSTINFO_REFRESH
    session_expiry: int = DEFAULT_SESSION_EXPIRY
    keep_ids: float = DEFAULT_KEEP_IDS
    ca_file: str | None = None  #: CA bundle for mqtts://
    log_level: str = "INFO"
    metrics: str | None = None  #: "HOST:PORT" to serve Prometheus metrics on; off by default
    mqtt_version: str = DEFAULT_MQTT_VERSION
    stream: bool = True  #: send scripts' output live while they run (docs/protocol.md ``output``)
    signing: str = "off"  #: "off", "audit" or "enforce" (docs/security.md)
    trust_file: Path | None = None  #: the trusted public keys (TOML, re-read when it changes)
    clock_skew: float = DEFAULT_CLOCK_SKEW  #: seconds tolerated at both ends of a signed window
    require_approval: bool = False  #: tasks also need an operator's offline approval of their job version

    def __post_init__(self) -> None:
        _require(self.heartbeat > 0, "heartbeat", "must be > 0")
        _require(self.max_tasks >= 1, "max_tasks", "must be >= 1")
        _require(self.will_delay >= 0, "will_delay", "must be >= 0")
        _require(0 <= self.output_cap <= MAX_OUTPUT_CAP, "output_cap", f"must be between 0 and {MAX_OUTPUT_CAP}")
        _require(self.resend > 0, "resend", "must be > 0")
        _require(self.hostinfo_refresh > 0, "hostinfo_refresh", "must be > 0")
        _require(
            "dc" not in self.labels, "label dc",
            "an agent's datacenter is the one its messages arrive from (the bridge of its edge broker), "
            "never a label it gives itself: remove the dc label",
        )  # fmt: skip
        _require(self.signing in SIGNING_MODES, "signing", f"must be one of {', '.join(SIGNING_MODES)}")
        _require(self.signing == "off" or self.trust_file is not None, "trust_file", f"signing {self.signing} needs one")
        _require(self.clock_skew >= 0, "clock_skew", "must be >= 0")
        _require(not self.require_approval or self.signing != "off", "require_approval", "needs signing audit or enforce")
        if self.metrics is not None:
            host, _, port = self.metrics.rpartition(":")
            _require(bool(host) and port.isdigit() and 0 < int(port) < 65536, "metrics", "must be HOST:PORT")
        try:
            check_mqtt_version(self.mqtt_version)
        except ValueError as e:
            raise ConfigError("mqtt_version", str(e)) from None
        _require(
            self.mqtt_version == "5" or portable_topic(self.topic_prefix), "topic_prefix",
            "must hold no '.' or ' ' with MQTT 3.1.1 (NATS refuses them in topic names)",
        )  # fmt: skip
        try:
            BrokerList.parse(self.broker)
        except ValueError as e:
            raise ConfigError("broker", str(e)) from None
        try:
            Topics(self.topic_prefix)
            for k in self.labels:
                check_level(k, "label")
        except (ValueError, ProtocolError) as e:
            raise ConfigError("settings", str(e)) from None

    @property
    def id_path(self) -> Path:
        return self.id_file or self.state_dir / "agent-id"

    @property
    def version(self) -> str:
        return _version


def _require(ok: bool, name: str, text: str) -> None:
    if not ok:
        raise ConfigError(name, text)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def parse_label(text: str, source: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(source, f"label {text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a file/env/flag value into the field's type."""
    f = _FIELDS.get(name)
    if f is None:
        raise ConfigError(source, f"unknown setting {name!r}")
    try:
        if name == "labels":
            if isinstance(value, Mapping):
                return {str(k): str(v) for k, v in value.items()}
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
            return dict(parse_label(str(v), source) for v in items)
        if name == "broker":  # a string (commas allowed), a TOML array, or a repeated flag
            if not isinstance(value, (str, list)):
                raise ValueError(value)
            return join_addresses(value)
        if name in ("stream", "require_approval"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return text in ("1", "true", "yes", "on")
        if name in ("state_dir", "id_file", "trust_file"):
            return Path(str(value))
        if name in ("max_tasks", "will_delay", "output_cap", "session_expiry"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if name in ("heartbeat", "resend", "hostinfo_refresh", "keep_ids", "clock_skew"):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(source, f"{name}: bad value {value!r}") from None


def from_file(path: Path) -> dict[str, Any]:
    try:
        doc = layers.read_toml(path)
    except layers.FileError as e:
        raise ConfigError(e.path, f"cannot read: {e.why}" if e.unreadable else f"not valid TOML: {e.why}") from None
    doc = doc.get("agent", doc)  # accept a bare file or an [agent] table
    return {k: _coerce(k, v, str(path)) for k, v in layers.names(doc).items()}


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name, key, value in layers.env_layer(env, ENV_PREFIX):
        if name == "label":
            name = "labels"
        out[name] = _coerce(name, value, f"environment {key}")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mschedule-agent",
        description="Run the scripts mschedule sends to this machine, and report back over MQTT.",
    )
    add = p.add_argument
    add("--broker", action="append", metavar="URL",
        help="mqtt://[user:pass@]host:port or mqtts://...; several (the nodes of one cluster): repeat the flag or "
             f"separate them with commas, tried in turn (default {DEFAULT_BROKER})")  # fmt: skip
    add("--state-dir", help=f"directory for the id, the ledger and temp scripts (default {DEFAULT_STATE_DIR})")
    add("--id-file", help="agent id file (default <state-dir>/agent-id)")
    add("--label", action="append", metavar="K=V", help="a label for target selection; repeatable")
    add("--heartbeat", type=float, metavar="S", help=f"seconds between heartbeats (default {DEFAULT_HEARTBEAT:g})")
    add("--max-tasks", type=int, metavar="N", help=f"scripts run at once (default {DEFAULT_MAX_TASKS})")
    add("--topic-prefix", metavar="P", help=f"MQTT topic prefix (default {DEFAULT_PREFIX})")
    add("--config", metavar="agent.toml", help="settings file (TOML); flags and environment override it")
    add("--will-delay", type=int, metavar="S", help=f"last-will delay in seconds (default {DEFAULT_WILL_DELAY})")
    add("--output-cap", type=int, metavar="BYTES", help=f"bytes kept per output stream (default {DEFAULT_OUTPUT_CAP})")
    add("--resend", type=float, metavar="S", help=f"seconds between result re-sends until acked (default {DEFAULT_RESEND:g})")
    add("--ca-file", help="CA bundle for mqtts://")
    add("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    add("--mqtt-version", choices=MQTT_VERSIONS,
        help=f"MQTT protocol: 5, or 3.1.1 for brokers without MQTT 5 (NATS): no will delay (default {DEFAULT_MQTT_VERSION})")
    add("--no-stream", dest="stream", action="store_false", default=None,
        help="do not send scripts' output live while they run (the result still carries it)")
    add("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    add("--signing", choices=SIGNING_MODES, help="check task signatures: off (default), audit or enforce")
    add("--trust-file", metavar="trust.toml", help="trusted public keys (re-read when it changes)")
    add("--require-approval", nargs="?", const="true", metavar="yes|no",
        help="with signing: run only job versions an operator's offline key approved")
    add("--clock-skew", type=float, metavar="S", help=f"seconds tolerated on signed windows (default {DEFAULT_CLOCK_SKEW:g})")
    return p


def from_flags(ns: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for name, value in layers.flag_layer(ns).items():
        if name == "label":
            out["labels"] = _coerce("labels", value, "--label")
        else:
            out[name] = _coerce(name, value, "--" + name.replace("_", "-"))
    return out


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings: defaults < file < environment < flags. Raises ConfigError."""
    env = os.environ if env is None else env
    ns = parser().parse_args(argv)
    config = layers.config_path(ns.config, env, ENV_PREFIX)
    file_values = from_file(Path(config)) if config else {}
    merged = layers.merge((file_values, from_env(env), from_flags(ns)), additive=["labels"])
    labels = merged.pop("labels", {})  # labels add up; a later layer wins per key
    return Settings(**merged, labels=labels)
