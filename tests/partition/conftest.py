"""Partition tests: central + master on one namespaced host, an edge + agents on another,
one veth between them that the tests blackhole (harness/netns.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from harness.agentproc import start_agent
from harness.fleet import Fleet, start_master
from harness.netns import ADDR_A, Link, why_unavailable
from harness.require import in_ci, require_tools
from harness.xdc import CENTRAL, MASTER_USER, OPERATOR_USER, Xdc

DC = "bj"
N_AGENTS = 4
#: Short on purpose: a cut longer than this is "longer than lost_grace".
LOST_GRACE = 15
MARK = 'echo run >> "$MARKERS/$MSCHEDULE_TASK_ID.$AGENT_NAME"'


class PartitionFleet(Fleet):
    """Fleet's helpers, with every network call made from the master's host."""

    link: Link
    xdc: Xdc
    markers: Path
    names: dict[str, str]  #: agent id -> its AGENT_NAME

    def http(self, method, path, body=None):
        return self.link.a.call(super().http, method, path, body)

    @property
    def client(self):
        if self._client is None:
            self.link.a.call(lambda: Fleet.client.fget(self))
        return self._client

    def _online_count(self) -> int:
        return self.link.a.call(super()._online_count)

    def runs(self, task_id: str) -> dict[str, int]:
        """How many times each agent ran the task (AGENT_NAME -> count), from marker files."""
        return {f.name.split(".", 1)[1]: len(f.read_text().splitlines())
                for f in self.markers.glob(f"{task_id}.*")}  # fmt: skip


@pytest.fixture(scope="module")
def pfleet(tmp_path_factory):
    require_tools("mosquitto")
    reason = why_unavailable()
    if reason:
        if in_ci():
            pytest.fail(f"partition tests cannot run: {reason}")
        pytest.skip(f"partition tests need network namespaces: {reason}")
    root = tmp_path_factory.mktemp("partition")
    prefix = f"t{uuid.uuid4().hex[:10]}/mschedule"
    markers = root / "markers"
    markers.mkdir()
    with Link() as link:
        xdc = Xdc(root / "xdc", prefix=prefix, dcs=(DC,), hosts={CENTRAL: link.a, DC: link.b}, central_host=ADDR_A)
        with xdc:
            fleet = PartitionFleet(root, xdc.url(CENTRAL, OPERATOR_USER), prefix)
            fleet.link, fleet.xdc, fleet.markers, fleet.names = link, xdc, markers, {}
            try:
                fleet.master = link.a.call(start_master, root / "master", xdc.url(CENTRAL, MASTER_USER), prefix,
                                           lost_grace=LOST_GRACE, delivery_timeout=60)  # fmt: skip
                for i in range(N_AGENTS):
                    state_dir = root / f"agent{i}"
                    agent_id = xdc.provision_agent(DC, state_dir)
                    xdc.wait_reloaded(DC, agent_id)
                    fleet.names[agent_id] = f"a{i}"
                    env = {"MARKERS": str(markers), "AGENT_NAME": f"a{i}"}
                    fleet.agents.append(link.b.call(start_agent, state_dir, xdc.url(DC, agent_id), prefix, wait=False,
                                                    env=env))  # fmt: skip
                for a in fleet.agents:
                    a.wait_online(30)
                fleet.wait_agents_known(N_AGENTS)
                yield fleet
            finally:
                if link.is_cut:
                    link.heal()
                fleet.stop()
