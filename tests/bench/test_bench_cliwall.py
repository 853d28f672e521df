"""The user-visible rows (bench/cli_wall.py) work at tiny N, on real and on simulated agents,
and the Ansible peer (bench/peers.py) is built right and left out cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import cli_wall, peers


def test_inventory_lists_every_host_once_each_with_the_local_connection():
    lines = peers.inventory_text(3).splitlines()
    assert lines == ["[bench]", "h00000 ansible_connection=local", "h00001 ansible_connection=local",
                     "h00002 ansible_connection=local"]  # fmt: skip


def test_the_command_is_raw_true_on_all_hosts_with_the_forks():
    argv = peers.ansible_argv("/x/ansible", Path("/t/hosts.ini"), 7)
    assert argv == ["/x/ansible", "all", "-i", "/t/hosts.ini", "-m", "raw", "-a", "true", "-f", "7"]


@pytest.mark.parametrize("n, forks", [(1, 1), (10, 10), (50, 50), (100, 50), (1000, 50)])
def test_forks_are_one_per_host_up_to_the_cap(n, forks):
    assert peers.forks_for(n) == forks


def test_the_environment_isolates_ansible_from_the_machines_config(tmp_path):
    env = peers.ansible_env(tmp_path / "home", tmp_path / "ansible.cfg", {"PATH": "/bin", "ANSIBLE_CONFIG": "/etc/x.cfg"})
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg") and env["ANSIBLE_HOME"] == str(tmp_path / "home")
    assert env["PATH"] == "/bin"


def test_only_hosts_whose_raw_returned_zero_count():
    out = "h00000 | CHANGED | rc=0 >>\n\nh00001 | FAILED | rc=1 >>\nboom\nh00002 | UNREACHABLE! => {}\n"
    assert peers.hosts_ok(out) == {"h00000"}


def test_ansible_is_found_only_where_its_executable_is(tmp_path):
    assert peers.find_ansible([tmp_path]) is None
    exe = tmp_path / "ansible"
    exe.write_text("#!/bin/sh\n")
    assert peers.find_ansible([tmp_path]) is None  # not executable
    os.chmod(exe, 0o755)
    assert peers.find_ansible([tmp_path]) == str(exe)


def test_a_row_without_ansible_says_so():
    row = {"n": 1000, "simulated": True, "wall": 1.5, "master": 1.2, "gap": 0.01, "ansible": None, "load": 3.14}
    assert cli_wall.row_line(row) == "| 1,000 (simulated) | 1.500 s | 1.200 s | 10 ms | not installed | - | 3.1 |"
    row["ansible"] = {"wall": 30.0, "forks": 50, "ratio": 20.0}
    assert cli_wall.row_line(row).endswith("| 30.00 s (-f 50) | 20.0x | 3.1 |")


@pytest.mark.parametrize("n, real_max, simulated", [(1, 100, False), (3, 0, True)])
def test_a_row_times_the_cli_on_the_whole_fleet(n, real_max, simulated):
    (row,) = cli_wall.measure([n], runs=1, ansible=False, real_max=real_max)
    assert (row["n"], row["simulated"], row["ansible"]) == (n, simulated, None)
    assert row["load"] >= 0
    # The master's created -> finished lies inside the CLI's run, which ends after it.
    assert 0 < row["master"] < row["wall"] and row["gap"] > -0.01


@pytest.mark.skipif(peers.find_ansible() is None, reason="ansible-core is not installed (the optional peers extra)")
def test_ansible_runs_raw_on_every_local_host():
    got = peers.time_ansible(peers.find_ansible() or "", 2, 1)
    assert got["forks"] == 2 and got["wall"] > 0
