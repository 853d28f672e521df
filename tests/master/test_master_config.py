"""Settings: TOML file < environment < flags, and clear errors."""

from __future__ import annotations

import pytest

from mschedule_master import config, daemon
from mschedule_master.errors import ConfigError


def test_flags_beat_environment_which_beats_the_file(tmp_path):
    f = tmp_path / "master.toml"
    f.write_text('broker = "mqtt://file:1"\ndb = "file.db"\nlost_grace = 7\n[groups]\nweb = ["web-*", "role=web"]\n')
    env = {"MSCHEDULE_MASTER_DB": "env.db", "MSCHEDULE_MASTER_LOST_GRACE": "8", "MSCHEDULE_TOKEN": "tok"}
    s = config.load(["--config", str(f), "--lost-grace", "9"], env)
    assert (s.broker, s.db, s.lost_grace, s.token) == ("mqtt://file:1", "env.db", 9.0, "tok")
    assert s.groups == {"web": ["web-*", "role=web"]}
    assert config.load([], {}).http_address == ("127.0.0.1", 9900)
    assert config.load(["--http", "off"], {}).http_address is None


@pytest.mark.parametrize(
    "argv, env, toml, field",
    [
        (["--http", "nowhere"], {}, None, "http"),
        (["--delivery-timeout", "0"], {}, None, "delivery_timeout"),
        (["--log-level", "chatty"], {}, None, "log_level"),
        ([], {"MSCHEDULE_MASTER_LOST_GRACE": "soon"}, None, "lost_grace"),
        ([], {}, "bogus = 1\n", "bogus"),
        ([], {}, "[groups]\nweb = 1\n", "groups"),
        ([], {}, "redeliver_max = 0\n", "redeliver_max"),
        ([], {}, "broker = [\n", "config"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(tmp_path, argv, env, toml, field):
    if toml is not None:
        (tmp_path / "m.toml").write_text(toml)
        argv = [*argv, "--config", str(tmp_path / "m.toml")]
    with pytest.raises(ConfigError) as e:
        config.load(argv, env)
    assert e.value.field == field


def test_a_toml_key_spelled_with_dashes_is_the_setting_its_flag_names(tmp_path):
    f = tmp_path / "master.toml"
    f.write_text('delivery-timeout = 42\nlost_grace = 7\n')
    s = config.load(["--config", str(f)], {})
    assert (s.delivery_timeout, s.lost_grace) == (42.0, 7.0)
    f.write_text('delivery-timeuot = 42\n')
    with pytest.raises(ConfigError) as e:
        config.load(["--config", str(f)], {})
    assert "delivery_timeuot" in str(e.value)


def test_a_group_given_as_one_string_is_a_one_member_group(tmp_path):
    """docs/rollout.md: 'a single string is read as a one-member group'."""
    f = tmp_path / "master.toml"
    f.write_text("[groups]\ndb = 'role=db'\nweb = ['web-*', 'role=web']\n")
    assert config.load(["--config", str(f)], {}).groups == {"db": ["role=db"], "web": ["web-*", "role=web"]}


def test_redeliver_max_is_a_setting_of_file_environment_and_flag(tmp_path):
    """docs/rollout.md's redeliver_max can be set, as its other timings."""
    f = tmp_path / "master.toml"
    f.write_text("redeliver-max = 30\n")
    assert config.load([], {}).redeliver_max == config.DEFAULT_REDELIVER_MAX
    assert config.load(["--config", str(f)], {}).redeliver_max == 30.0
    assert config.load(["--config", str(f)], {"MSCHEDULE_MASTER_REDELIVER_MAX": "40"}).redeliver_max == 40.0
    assert config.load(["--config", str(f), "--redeliver-max", "50"], {}).redeliver_max == 50.0
    assert daemon.rollout_timing(config.load(["--redeliver-max", "50"], {})).redeliver_max == 50.0


@pytest.mark.parametrize(
    "argv, env, toml",
    [
        (["--broker", "mqtt://a:1", "--broker", "mqtt://b:2"], {}, None),  # a repeated flag
        (["--broker", "mqtt://a:1,mqtt://b:2"], {}, None),
        ([], {"MSCHEDULE_MASTER_BROKER": "mqtt://a:1, mqtt://b:2"}, None),
        ([], {}, 'broker = ["mqtt://a:1", "mqtt://b:2"]\n'),
        ([], {}, 'broker = "mqtt://a:1,mqtt://b:2"\n'),
    ],
)
def test_several_brokers_come_from_a_repeated_flag_a_comma_list_or_a_toml_array(tmp_path, argv, env, toml):
    if toml is not None:
        (tmp_path / "m.toml").write_text(toml)
        argv = [*argv, "--config", str(tmp_path / "m.toml")]
    assert config.load(argv, env).broker == "mqtt://a:1,mqtt://b:2"


@pytest.mark.parametrize(
    "argv, toml, why",
    [
        (["--broker", "mqtt://a:1,mqtts://b:2"], None, "mix mqtt:// and mqtts://"),
        (["--broker", "mqtt://a:1", "--broker", "mqtt://a:1"], None, "given twice"),
        (["--broker", ","], None, "no broker address"),
        ([], "broker = [1, 2]\n", "a comma-separated list or an array"),
    ],
)
def test_a_bad_broker_list_is_refused_naming_the_broker_setting(tmp_path, argv, toml, why):
    if toml is not None:
        (tmp_path / "m.toml").write_text(toml)
        argv = [*argv, "--config", str(tmp_path / "m.toml")]
    with pytest.raises(ConfigError, match=why) as e:
        config.load(argv, {})
    assert e.value.field == "broker"
