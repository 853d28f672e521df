"""The agent refuses what it must never trust (issue 10): a self-declared datacenter."""

from __future__ import annotations

import pytest

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
