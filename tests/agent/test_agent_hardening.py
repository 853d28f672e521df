"""The agent refuses what it must never trust (issue 10): a self-declared datacenter."""

from __future__ import annotations

import pytest

from bench.procstat import rss_bytes
from mschedule_agent import config
from mschedule_agent.daemon import main
from mschedule_agent.errors import ConfigError


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_a_dc_label_is_refused_at_start_up(tmp_path, how):
    argv, env = ["--state-dir", str(tmp_path)], {}
    if how == "flag":
        argv += ["--label", "dc=east"]
    elif how == "env":
        env["MSCHEDULE_AGENT_LABELS"] = "role=web,dc=east"
    else:
        (tmp_path / "a.toml").write_text('[labels]\ndc = "east"\n')
        argv += ["--config", str(tmp_path / "a.toml")]
    with pytest.raises(ConfigError) as e:
        config.load(argv, env=env)
    assert "datacenter" in str(e.value) and "dc" in str(e.value)


def test_the_agent_exits_2_with_a_clear_error_for_a_dc_label(tmp_path, capsys):
    assert main(["--state-dir", str(tmp_path), "--broker", "mqtt://127.0.0.1:9", "--label", "dc=east"]) == 2
    err = capsys.readouterr().err
    assert "dc" in err and "datacenter" in err and "Traceback" not in err


def _rss_mb(pid: int) -> float:
    rss = rss_bytes(pid)
    assert rss, "no VmRSS"
    return rss / 2**20



def test_an_agent_gives_back_the_memory_of_a_15_mb_message(broker, prefix, tmp_path):
    import base64
    import time

    import orjson

    from harness.agentproc import start_agent
    from harness.mqtt import Collector
    from mschedule_agent.protocol import Topics

    agent = start_agent(tmp_path / "a", broker.url, prefix)
    try:
        t = Topics(prefix)
        time.sleep(1)
        before = _rss_mb(agent.pid)
        big = orjson.dumps({"type": "task", "payload": {"id": "big1", "script": base64.b64encode(b"#" * 11_900_000).decode()}})
        with Collector(broker.url, [t.results(agent.agent_id)]) as c:
            c.publish(t.tasks(agent.agent_id), big, qos=1)
            (reject,) = c.wait_for(lambda m: b'"reject"' in m.payload, 30)
        assert b"too_large" in reject.payload
        time.sleep(1.5)  # a few ticks: the trim comes after the message is handled
        after = _rss_mb(agent.pid)
        assert after - before < 15, (before, after)  # was +64 MB (25 -> 89)
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "url, shown",
    [
        ("mqtt://me:pw@host:1883", "mqtt://me:***@host:1883"),
        ("mqtts://me:p@ss:w/rd@host", "mqtts://me:***@host"),
        ("mqtt://me@host:1883", "mqtt://me@host:1883"),
        ("host:1883", "host:1883"),
    ],
)
def test_a_broker_url_is_shown_without_its_password(url, shown):
    from mschedule_agent.transport import redact_url

    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["mqtt://me:s3cret@host:port", "mqtt://me:s3cret@:1883"])
def test_a_bad_broker_url_error_never_holds_its_password(url):
    from mschedule_agent.transport import BrokerURL

    with pytest.raises(ValueError) as e:
        BrokerURL.parse(url)
    assert "s3cret" not in str(e.value) and "me:***@" in str(e.value)
