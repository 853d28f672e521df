"""deploy/mosquitto/render.py and mkpasswd.sh: fast checks of the rendered files and of
the conventions other parts of mschedule build on (no broker needed)."""

from __future__ import annotations

import importlib.util
import re
import stat
import subprocess
import sys

import pytest

from harness.broker import CONF_DIR

_spec = importlib.util.spec_from_file_location("mschedule_render", CONF_DIR / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

MKPASSWD = CONF_DIR / "mkpasswd.sh"


def directives(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word, rest.strip()))
    return out


def central(**kw) -> dict[str, str]:
    args = {"prefix": "mschedule", "dcs": ["bj", "sh"], "operators": ["alice"], "monitors": [],
            "conf_dir": "/etc/x", "data_dir": "/var/lib/x"}
    return render.central_files(**{**args, **kw})


def edge(**kw) -> dict[str, str]:
    args = {"prefix": "mschedule", "dc": "bj", "central": "central.example.com:1883", "bridge_password": "s3cret",
            "uplink_password": "upw", "monitors": [], "conf_dir": "/etc/x", "data_dir": "/var/lib/x"}
    return render.edge_files(**{**args, **kw})


def blocks(text: str) -> tuple[list, dict[str, list]]:
    """The broker-wide directives, and each bridge connection's, by connection name."""
    head, conns, current = [], {}, None
    for k, v in directives(text):
        if k == "connection":
            current = conns.setdefault(v, [])
        (head if current is None else current).append((k, v))
    return head, conns


def test_edge_bridges_follow_the_decided_conventions():
    head, conns = blocks(edge()["mosquitto.conf"])
    assert int(dict(head)["max_queued_messages"]) >= 100_000, "the default 1,000 drops a datacenter's backlog"
    assert list(conns) == ["mschedule-bridge-bj", "mschedule-uplink-bj"]
    down, up = (dict(conns[n]) for n in conns)
    for name, c in zip(conns, (down, up), strict=True):
        assert c["remote_clientid"] == c["remote_username"] == name
        assert (c["bridge_protocol_version"], c["cleansession"]) == ("mqttv311", "false")
        assert c["address"] == "central.example.com:1883"
    assert (down["remote_password"], up["remote_password"]) == ("s3cret", "upw")
    # Only the downlink notifies: $SYS/broker/connection/mschedule-bridge-bj/state at central.
    assert (down["notifications"], up["notifications"]) == ("true", "false")
    assert [v for k, v in conns["mschedule-bridge-bj"] if k == "topic"] == [
        "agents/+/tasks in 1 mschedule/ mschedule/dc/bj/",
        "agents/+/control in 1 mschedule/ mschedule/dc/bj/",
    ]
    assert [v for k, v in conns["mschedule-uplink-bj"] if k == "topic"] == [
        "agents/+/status out 1 mschedule/ mschedule/dc/bj/",
        "agents/+/heartbeat out 1 mschedule/ mschedule/dc/bj/",
        "results/+ out 1 mschedule/ mschedule/dc/bj/",
        "output/+/+ out 0 mschedule/ mschedule/dc/bj/",  # live output: never queued (docs/protocol.md)
    ]


@pytest.mark.parametrize("files", [central(), edge()], ids=["central", "edge"])
def test_every_broker_refuses_anonymous_and_ties_client_ids_to_usernames(files):
    conf = dict(directives(files["mosquitto.conf"]))
    assert conf["allow_anonymous"] == "false"
    assert conf["use_username_as_clientid"] == "true"
    assert conf["password_file"] == "/etc/x/passwd" and conf["acl_file"] == "/etc/x/acl"
    assert conf["persistence_location"] == "/var/lib/x/"
    assert conf["set_tcp_nodelay"] == "true"
    assert not any(re.search(r"@[A-Z_]+@", text) for text in files.values()), "a placeholder was left"


def test_central_gives_the_master_a_listener_of_its_own():
    files = central(master_port=1999, master_bind="10.1.2.3")
    main = dict(directives(files["mosquitto.conf"]))
    assert main["per_listener_settings"] == "true"
    assert main["include_dir"] == "/etc/x/conf.d"
    master = dict(directives(files["conf.d/master.conf"]))
    assert master["listener"] == "1999 10.1.2.3"
    assert master["password_file"] == "/etc/x/passwd-master" != main["password_file"]
    assert master["allow_anonymous"] == "false" and master["acl_file"] == "/etc/x/acl"
    assert "use_username_as_clientid" not in master, "the master's probe must not take over its session"
    with pytest.raises(render.RenderError, match="port"):
        central(master_port=0)


def test_central_acl_has_agents_master_operators_monitors_and_one_block_per_bridge():
    acl = directives(central(monitors=["grafana"])["acl"])
    users = [v for k, v in acl if k == "user"]
    assert users == ["mschedule-master", "alice", "grafana", "mschedule-bridge-bj", "mschedule-uplink-bj",
                     "mschedule-bridge-sh", "mschedule-uplink-sh"]
    assert ("pattern", "read mschedule/agents/%u/tasks") in acl
    assert ("pattern", "write mschedule/results/%u") in acl
    assert ("pattern", "write mschedule/output/%u/+") in acl
    i = acl.index(("user", "mschedule-bridge-sh"))
    assert acl[i + 1 :] == [
        ("topic", "read mschedule/dc/sh/agents/+/tasks"),
        ("topic", "read mschedule/dc/sh/agents/+/control"),
        ("topic", "write $SYS/broker/connection/mschedule-bridge-sh/state"),
        ("user", "mschedule-uplink-sh"),
        ("topic", "write mschedule/dc/sh/agents/+/status"),
        ("topic", "write mschedule/dc/sh/agents/+/heartbeat"),
        ("topic", "write mschedule/dc/sh/results/+"),
        ("topic", "write mschedule/dc/sh/output/+/+"),
    ]


def test_edge_acl_holds_only_the_agent_patterns_and_monitors():
    acl = directives(edge(monitors=["mon"])["acl"])
    assert [k for k, _ in acl].count("pattern") == 6
    assert [v for k, v in acl if k == "user"] == ["mon"]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"dcs": ["bj", "bj"]}, "twice"),
        ({"dcs": ["b/j"]}, "datacenter"),
        ({"dcs": ["+"]}, "datacenter"),
        ({"prefix": "a/#"}, "prefix"),
        ({"operators": ["al ice"]}, "username"),
        ({"operators": ["mschedule-bridge-bj"]}, "twice"),
    ],
)
def test_central_refuses_bad_values(kw, message):
    with pytest.raises(render.RenderError, match=message):
        central(**kw)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"central": "central.example.com"}, "HOST:PORT"),
        ({"bridge_password": "has space"}, "white space"),
        ({"bridge_password": ""}, "empty"),
        ({"uplink_password": "a b"}, "mschedule-uplink-bj"),
        ({"dc": "b j"}, "datacenter"),
    ],
)
def test_edge_refuses_bad_values(kw, message):
    with pytest.raises(render.RenderError, match=message):
        edge(**kw)


@pytest.mark.parametrize("role", ["central", "edge"])
def test_the_main_listener_takes_a_port_and_a_bind_address(role):
    make = central if role == "central" else edge
    assert dict(directives(make()["mosquitto.conf"]))["listener"] == "1883"  # every interface, by default
    assert dict(directives(make(port=18831, bind="10.0.0.5")["mosquitto.conf"]))["listener"] == "18831 10.0.0.5"
    assert dict(directives(make(data_dir="/srv/b")["mosquitto.conf"]))["persistence_location"] == "/srv/b/"
    with pytest.raises(render.RenderError, match="listener port"):
        make(port=70000)
    with pytest.raises(render.RenderError, match="bind address"):
        make(bind="a b")


def test_an_unknown_placeholder_is_an_error_not_left_in_the_file():
    with pytest.raises(render.RenderError, match="@NOPE@"):
        render.fill("listener @NOPE@", {})


def test_cli_writes_the_edge_config_private_and_names_a_missing_bridge_password(tmp_path):
    creds = tmp_path / "creds"
    creds.write_text("mschedule-bridge-bj:pw1\nmschedule-uplink-bj:pw2\nmschedule-uplink-sh:pw3\n")
    out = tmp_path / "etc"
    cmd = [sys.executable, str(CONF_DIR / "render.py"), "edge", "--out", str(out), "--central", "10.0.0.1:1883",
           "--credentials", str(creds)]
    ok = subprocess.run([*cmd, "--dc", "bj"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert stat.S_IMODE((out / "mosquitto.conf").stat().st_mode) == 0o640
    assert "remote_password pw1" in (out / "mosquitto.conf").read_text()
    assert "remote_password pw2" in (out / "mosquitto.conf").read_text()
    bad = subprocess.run([*cmd, "--dc", "sh"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no password for mschedule-bridge-sh" in bad.stderr


def mkpasswd(tmp_path, *users: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(MKPASSWD), str(tmp_path / "passwd"), str(tmp_path / "creds"), *users],
                          capture_output=True, text=True)


def creds(tmp_path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in (tmp_path / "creds").read_text().splitlines())


def test_mkpasswd_is_idempotent_keeps_other_users_and_never_stores_plain_passwords(tmp_path):
    assert mkpasswd(tmp_path, "alice", "bob:given").returncode == 0
    first = creds(tmp_path)
    assert first["bob"] == "given" and len(first["alice"]) == 32
    assert mkpasswd(tmp_path, "alice", "carol").returncode == 0
    second = creds(tmp_path)
    assert second["alice"] == first["alice"] and second["bob"] == "given" and set(second) == {"alice", "bob", "carol"}
    hashed = dict(line.split(":", 1) for line in (tmp_path / "passwd").read_text().splitlines())
    assert set(hashed) == {"alice", "bob", "carol"}
    assert all(h.startswith("$7$") for h in hashed.values()), "mosquitto_passwd hashes"
    assert "given" not in (tmp_path / "passwd").read_text()
    assert stat.S_IMODE((tmp_path / "creds").stat().st_mode) == 0o600


@pytest.mark.parametrize("user", ["bad user", "a/b", ""])
def test_mkpasswd_refuses_bad_usernames_and_changes_nothing(tmp_path, user):
    assert mkpasswd(tmp_path, "alice").returncode == 0
    before = (tmp_path / "passwd").read_text()
    r = mkpasswd(tmp_path, "bob", user)
    assert r.returncode == 2 and "bad username" in r.stderr
    assert (tmp_path / "passwd").read_text() == before
