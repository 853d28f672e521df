"""The peer on the same N: Ansible's ``ansible all -m raw -a true`` over N inventory hosts.

Optional: ``pip install -e '.[peers]'`` brings ``ansible-core``; without it
:func:`find_ansible` returns None and the bench leaves the Ansible column empty.

There is no ssh to N machines here, so every host is ``ansible_connection=local``: Ansible
forks its worker, which runs ``true`` through a local shell, without ssh's connection set-up,
authentication or a remote interpreter. That is Ansible's cheapest path, so the ratio
flatters Ansible; over ssh to real machines it pays more per host.

The inventory, the command line and the output check are pure functions (tested without
Ansible); :func:`time_ansible` runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

#: Ansible's forks: as many as the hosts, at most this many (its default is 5; a fleet tool's
#: user raises it; past ~50 forks on this 2-core machine only add contention).
MAX_FORKS = 50

_HOST_OK = re.compile(r"^(\S+) \| CHANGED \| rc=0 >>$", re.MULTILINE)


def forks_for(n: int) -> int:
    """``-f``: one fork per host, capped at :data:`MAX_FORKS`."""
    return max(1, min(n, MAX_FORKS))


def host_names(n: int) -> list[str]:
    return [f"h{i:05d}" for i in range(n)]


def inventory_text(n: int) -> str:
    """An INI inventory of ``n`` hosts in group ``bench``, each with the local connection."""
    return "[bench]\n" + "".join(f"{h} ansible_connection=local\n" for h in host_names(n))


def ansible_argv(exe: str, inventory: Path, forks: int) -> list[str]:
    """``ansible all -i INVENTORY -m raw -a true -f FORKS``."""
    return [exe, "all", "-i", str(inventory), "-m", "raw", "-a", "true", "-f", str(forks)]


def ansible_env(home: Path, config: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a run: its own (empty) config and home, so a machine's
    ansible.cfg or ~/.ansible do not change what is measured; no colours, no cows."""
    env = dict(os.environ if base is None else base)
    env.update({
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_NOCOWS": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
    })  # fmt: skip
    return env


def hosts_ok(output: str) -> set[str]:
    """The hosts whose ``raw`` ran and returned 0, from ``ansible``'s standard output."""
    return set(_HOST_OK.findall(output))


def find_ansible(search: Iterable[Path] | None = None) -> str | None:
    """The ``ansible`` executable: next to this interpreter (the venv's ``[peers]`` extra),
    else on PATH; ``search`` replaces both with these directories. None when absent."""
    dirs = list(search) if search is not None else [Path(sys.executable).parent]
    for d in dirs:
        exe = Path(d) / "ansible"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return shutil.which("ansible") if search is None else None


def time_ansible(
    exe: str, n: int, runs: int, *, forks: int | None = None, timeout: float = 900.0
) -> dict[str, float | int]:
    """Median wall time of ``runs`` runs (after one warm-up) on ``n`` local hosts; raises
    when a run fails or a host is missing from its output."""
    forks = forks or forks_for(n)
    with tempfile.TemporaryDirectory(prefix="mschedule-peers-") as tmp:
        root = Path(tmp)
        inventory, config = root / "hosts.ini", root / "ansible.cfg"
        inventory.write_text(inventory_text(n))
        config.write_text("")
        (root / "home" / "tmp").mkdir(parents=True)
        env = ansible_env(root / "home", config)
        argv = ansible_argv(exe, inventory, forks)
        walls = []
        for i in range(runs + 1):  # the first is a warm-up (imports, caches), as for mschedule
            began = time.perf_counter()
            p = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, cwd=root, stdin=subprocess.DEVNULL)
            wall = time.perf_counter() - began
            ok = hosts_ok(p.stdout.decode(errors="replace"))
            if p.returncode != 0 or len(ok) != n:
                err = (p.stderr or p.stdout).decode(errors="replace")[-500:]
                raise RuntimeError(f"ansible on {n} hosts: exit {p.returncode}, {len(ok)} hosts ok: {err}")
            if i:
                walls.append(wall)
    return {"wall": statistics.median(walls), "forks": forks}
