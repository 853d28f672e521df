"""The settings layering both daemons share (mschedule_agent/layers.py): pure, no I/O but a
scratch file."""

from __future__ import annotations

import argparse

import pytest

from mschedule_agent import layers


def test_the_config_flag_beats_the_config_variable():
    env = {"X_CONFIG": "env.toml"}
    assert layers.config_path("flag.toml", env, "X_") == "flag.toml"
    assert layers.config_path(None, env, "X_") == "env.toml"
    assert layers.config_path(None, {}, "X_") is None


def test_the_environment_layer_keeps_the_prefixed_variables_but_config():
    env = {"X_MAX_TASKS": "2", "X_CONFIG": "a.toml", "Y_MAX_TASKS": "3", "X_Label": "a=b"}
    assert layers.env_layer(env, "X_") == [("max_tasks", "X_MAX_TASKS", "2"), ("label", "X_Label", "a=b")]


def test_the_flag_layer_keeps_only_the_flags_given():
    ns = argparse.Namespace(config="a.toml", broker=None, heartbeat=3.0, label=["a=b"])
    assert layers.flag_layer(ns) == {"heartbeat": 3.0, "label": ["a=b"]}


def test_later_layers_win_and_additive_keys_add_up():
    file = {"broker": "f", "labels": {"role": "db", "zone": "bj"}, "heartbeat": 7.0}
    env = {"broker": "e", "labels": {"zone": "sh"}}
    flags = {"labels": {"rack": "3"}}
    merged = layers.merge((file, env, flags), additive=["labels"])
    assert merged == {"broker": "e", "labels": {"role": "db", "zone": "sh", "rack": "3"}, "heartbeat": 7.0}
    assert layers.merge((file, env, flags))["labels"] == {"rack": "3"}  # not additive: replaced


def test_a_file_spelled_with_dashes_reads_as_names(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('delivery-timeout = 4\nlost_grace = 5\n[groups]\nweb-tier = ["web-*"]\n')
    doc = layers.names(layers.read_toml(f))
    assert doc == {"delivery_timeout": 4, "lost_grace": 5, "groups": {"web-tier": ["web-*"]}}  # only top-level keys


@pytest.mark.parametrize("text, unreadable", [(None, True), ("x = = 1", False)])
def test_an_unreadable_or_invalid_file_is_a_file_error(tmp_path, text, unreadable):
    f = tmp_path / "s.toml"
    if text is not None:
        f.write_text(text)
    with pytest.raises(layers.FileError) as e:
        layers.read_toml(f)
    assert e.value.unreadable is unreadable and e.value.path == str(f) and str(f) in str(e.value)
