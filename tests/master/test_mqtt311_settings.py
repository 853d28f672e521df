"""``--mqtt-version 3.1.1``: how each daemon takes it (file, environment, flag) and what it
refuses (an unknown version; a prefix or request id NATS would refuse as a topic)."""

from __future__ import annotations

import logging

import pytest

from mschedule_agent import config as agent_config
from mschedule_agent.errors import ConfigError as AgentConfigError
from mschedule_master import config as master_config
from mschedule_master.errors import ConfigError as MasterConfigError


def test_the_agent_takes_the_version_from_file_environment_and_flag(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text('mqtt-version = "3.1.1"\n')
    assert agent_config.load(["--config", str(f)], env={}).mqtt_version == "3.1.1"
    assert agent_config.load([], env={"MSCHEDULE_AGENT_MQTT_VERSION": "3.1.1"}).mqtt_version == "3.1.1"
    assert agent_config.load(["--mqtt-version", "5"], env={"MSCHEDULE_AGENT_MQTT_VERSION": "3.1.1"}).mqtt_version == "5"
    assert agent_config.load([], env={}).mqtt_version == "5"


def test_the_agent_refuses_an_unknown_version_and_a_dotted_prefix_in_311():
    with pytest.raises(AgentConfigError, match="mqtt_version"):
        agent_config.load([], env={"MSCHEDULE_AGENT_MQTT_VERSION": "4"})
    with pytest.raises(AgentConfigError, match="topic_prefix"):
        agent_config.load(["--mqtt-version", "3.1.1", "--topic-prefix", "site.a/mschedule"], env={})
    assert agent_config.load(["--topic-prefix", "site.a/mschedule"], env={}).topic_prefix == "site.a/mschedule"


def test_the_master_takes_the_version_from_file_environment_and_flag(tmp_path):
    f = tmp_path / "master.toml"
    f.write_text('mqtt-version = "3.1.1"\n')
    assert master_config.load(["--config", str(f)], env={}).mqtt_version == "3.1.1"
    assert master_config.load([], env={"MSCHEDULE_MASTER_MQTT_VERSION": "3.1.1"}).mqtt_version == "3.1.1"
    assert master_config.load(["--mqtt-version", "3.1.1"], env={}).mqtt_version == "3.1.1"
    with pytest.raises(MasterConfigError, match="5, 3.1.1"):
        master_config.load([], env={"MSCHEDULE_MASTER_MQTT_VERSION": "3"})
    with pytest.raises(MasterConfigError, match="topic_prefix"):
        master_config.load(["--mqtt-version", "3.1.1", "--topic-prefix", "a b"], env={})


SUBMIT = b'{"type":"submit","payload":{"request_id":"%s","targets":["a1"],"script_text":"true"}}'


def test_in_311_a_request_id_with_a_dot_is_refused_unanswered_and_runs_nothing(rig, caplog):
    rig.service.submissions.portable_topics = True
    rig.register("a1")
    rig.sent()
    with caplog.at_level(logging.WARNING):
        rig.feed(rig.incoming("test/submit", SUBMIT % b"req.1"))
    assert rig.store.list_tasks() == [] and rig.sent() == []
    assert "may not hold '.'" in caplog.text
    rig.feed(rig.incoming("test/submit", SUBMIT % b"req-1"))
    ((topic, reply),) = rig.sent("submit_reply")
    assert topic == "test/submit/reply/req-1" and reply.ok


def test_in_v5_a_request_id_with_a_dot_is_still_answered(rig):
    rig.register("a1")
    rig.sent()
    rig.feed(rig.incoming("test/submit", SUBMIT % b"req.1"))
    ((topic, reply),) = rig.sent("submit_reply")
    assert topic == "test/submit/reply/req.1" and reply.ok
