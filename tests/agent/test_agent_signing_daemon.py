"""Issue 16 with real parts: a real mosquitto, real agent processes, and messages published
straight onto an agent's topic with a valid broker credential, as an attacker who has
one would. In ``enforce`` nothing runs without a good signature; ``audit`` runs and reports;
the trust file rotates without a restart; a master with a signing key drives an enforcing agent."""

from __future__ import annotations

import base64

import pytest

from harness.agentproc import start_agent
from harness.fleet import Fleet
from harness.mqtt import Collector
from harness.procs import wait_until
from mschedule_agent import keys
from mschedule_agent.protocol import Ack, DecodeError, Kill, Reject, Result, Signed, Started, Task, decode, encode
from mschedule_agent.signing import Signer, Window, sha256_hex


def msg_of(m):
    try:
        return decode(m.payload)
    except DecodeError:
        return None


def is_(cls, task_id=None, **fields):
    def pred(m):
        x = msg_of(m)
        return isinstance(x, cls) and (task_id is None or x.id == task_id) and all(getattr(x, k) == v for k, v in fields.items())

    return pred


def write_trust(path, *ks: keys.PrivateKey) -> None:
    path.write_text("".join(f'[[keys]]\npublic = "{base64.b64encode(k.public).decode()}"\n' for k in ks))


def body(task_id: str, script: bytes) -> bytes:
    return encode(Task(id=task_id, script=script, timeout=30))


def signed(key, task_id: str, script: bytes, aud: str, *, window=None, protocol=2, now: float) -> bytes:
    window = window or Window(now - 1, now + 60)
    return Signer(key, protocol=protocol).seal(
        body(task_id, script), type="task", id=task_id, aud=aud, window=window, script_sha256=sha256_hex(script)
    )


@pytest.fixture
def key():
    return keys.generate()


@pytest.fixture
def watch(broker, prefix):
    with Collector(broker.url, [f"{prefix}/#"]) as c:
        yield c


def test_enforce_refuses_every_unsigned_or_forged_task_and_runs_the_signed_one(tmp_path, broker, prefix, topics, key, watch):
    import time

    trust = tmp_path / "trust.toml"
    write_trust(trust, key)
    marker = tmp_path / "ran.txt"
    a = start_agent(tmp_path / "agent", broker.url, prefix, signing="enforce", trust_file=str(trust))
    try:
        aid = a.agent_id
        now = time.time()
        script = f"echo ran >> {marker}".encode()
        good = signed(key, "good", script, aid, now=now)
        forged = decode(good)
        evil = body("good", f"echo evil >> {marker}".encode()).decode()
        attempts = {
            "unsigned": (encode(Task(id="plain", script=script)), "unsigned"),
            "other-key": (signed(keys.generate(), "other-key", script, aid, now=now), "untrusted_key"),
            "good": (encode(Signed(kid=forged.kid, header=forged.header, sig=forged.sig, body=evil)), "bad_signature"),
            "expired": (signed(key, "expired", script, aid, window=Window(now - 600, now - 300), now=now), "expired"),
            "elsewhere": (signed(key, "elsewhere", script, "b" * 32, now=now), "wrong_audience"),
            "old": (signed(key, "old", script, aid, protocol=1, now=now), "downgrade"),
        }
        for task_id, (data, code) in attempts.items():
            watch.publish(topics.tasks(aid), data)
            (rej,) = watch.wait_for(is_(Reject, "plain" if code == "unsigned" else task_id), timeout=10)
            assert msg_of(rej).code == code and msg_of(rej).reason
        watch.publish(topics.tasks(aid), good)  # the genuine copy of the id the forgery used
        (res,) = watch.wait_for(is_(Result, "good"), timeout=15)
        assert msg_of(res).state == "SUCCEED"
        watch.publish(topics.tasks(aid), good)  # replayed: the ledger knows it; it never runs again
        watch.wait_for(is_(Ack, "good", duplicate=True), timeout=10)
        assert marker.read_text() == "ran\n"
    finally:
        a.stop()


def test_a_signed_kill_stops_a_task_and_an_unsigned_one_does_not(tmp_path, broker, prefix, topics, key, watch):
    import time

    trust = tmp_path / "trust.toml"
    write_trust(trust, key)
    a = start_agent(tmp_path / "agent", broker.url, prefix, signing="enforce", trust_file=str(trust))
    try:
        aid = a.agent_id
        now = time.time()
        watch.publish(topics.tasks(aid), signed(key, "long", b"sleep 60", aid, now=now))
        watch.wait_for(is_(Started, "long"), timeout=10)
        watch.publish(topics.control(aid), encode(Kill(id="long")))
        kill = Signer(key).seal(encode(Kill(id="long", reason="signed")), type="kill", id="long", aud=aid,
                                window=Window(now, now + 60))  # fmt: skip
        wait_until(lambda: "kill refused (task_id=long, code=unsigned)" in a.log(), what="the unsigned kill refused")
        assert not [m for m in watch.messages if is_(Result, "long")(m)]  # it runs on
        watch.publish(topics.control(aid), kill)
        (res,) = watch.wait_for(is_(Result, "long"), timeout=15)
        assert msg_of(res).state == "KILLED" and "signed" in msg_of(res).error
    finally:
        a.stop()


def test_audit_mode_runs_an_unsigned_task_and_reports_what_enforce_would_refuse(tmp_path, broker, prefix, topics, key, watch):
    trust = tmp_path / "trust.toml"
    write_trust(trust, key)
    a = start_agent(tmp_path / "agent", broker.url, prefix, signing="audit", trust_file=str(trust))
    try:
        aid = a.agent_id
        watch.publish(topics.tasks(aid), encode(Task(id="audited", script=b"echo hi")))
        (ack,) = watch.wait_for(is_(Ack, "audited"), timeout=10)
        assert msg_of(ack).audit.startswith("unsigned:")
        (res,) = watch.wait_for(is_(Result, "audited"), timeout=15)
        assert msg_of(res).output == b"hi\n"
    finally:
        a.stop()


def test_rotation_needs_no_restart_and_revocation_applies_to_the_next_message(tmp_path, broker, prefix, topics, watch):
    import time

    old, new = keys.generate(), keys.generate()
    trust = tmp_path / "trust.toml"
    write_trust(trust, old)
    a = start_agent(tmp_path / "agent", broker.url, prefix, signing="enforce", trust_file=str(trust))
    try:
        aid, pid = a.agent_id, a.pid
        watch.publish(topics.tasks(aid), signed(new, "new-1", b"true", aid, now=time.time()))
        assert msg_of(watch.wait_for(is_(Reject, "new-1"), timeout=10)[0]).code == "untrusted_key"
        write_trust(trust, old, new)  # overlap
        for k, task_id in ((old, "old-2"), (new, "new-2")):
            watch.publish(topics.tasks(aid), signed(k, task_id, b"true", aid, now=time.time()))
            assert msg_of(watch.wait_for(is_(Result, task_id), timeout=15)[0]).state == "SUCCEED"
        write_trust(trust, new)  # the old key retired
        watch.publish(topics.tasks(aid), signed(old, "old-3", b"true", aid, now=time.time()))
        assert msg_of(watch.wait_for(is_(Reject, "old-3"), timeout=10)[0]).code == "untrusted_key"
        assert a.pid == pid and a.running()
    finally:
        a.stop()


def test_a_master_with_a_signing_key_runs_tasks_on_enforcing_agents(tmp_path, broker, prefix):
    key = keys.generate()
    priv, _ = keys.write_pair(key, tmp_path / "master")
    trust = tmp_path / "trust.toml"
    write_trust(trust, key)
    agent_flags = {"signing": "enforce", "trust_file": str(trust)}
    with Fleet(tmp_path, broker.url, prefix, agents=1, agent_flags=agent_flags, master_flags={"signing_key": str(priv)}) as f:
        task_id = f.submit(f.agent_ids, "echo signed")
        doc = f.wait_task(task_id)
        assert doc["state"] == "SUCCEED", doc
        assert f"signing tasks and kills with key {key.kid}" in f.master.log()


def test_agents_requiring_approval_run_only_job_versions_an_operator_signed(tmp_path, broker, prefix):
    import json
    import os
    import subprocess
    import sys

    master_key, operator_key = keys.generate(), keys.generate()
    priv, _ = keys.write_pair(master_key, tmp_path / "master")
    op_priv, _ = keys.write_pair(operator_key, tmp_path / "operator")
    trust = tmp_path / "trust.toml"
    trust.write_text(f'[[keys]]\npublic = "{base64.b64encode(master_key.public).decode()}"\nrole = "master"\n'
                     f'[[keys]]\npublic = "{base64.b64encode(operator_key.public).decode()}"\nrole = "operator"\n')  # fmt: skip
    agent_flags = {"signing": "enforce", "trust_file": str(trust), "require_approval": True}
    with Fleet(tmp_path, broker.url, prefix, agents=1, agent_flags=agent_flags, master_flags={"signing_key": str(priv)}) as f:
        f.http("POST", "/api/v1/jobs/hello/versions", {"script_text": "echo $GREETING", "defaults": {"env": {"GREETING": "approved"}}})
        f.http("POST", "/api/v1/jobs/other/versions", {"script_text": "echo never approved"})
        cli = [sys.executable, "-m", "mschedule_master.cli", "--master", f.master.http_url]
        p = subprocess.run([*cli, "keys", "approve", "hello", "1", "--key", str(op_priv)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "MSCHEDULE_TOKEN": ""})  # fmt: skip
        assert p.returncode == 0 and f"hello@1 approved by {operator_key.kid}" in p.stdout, p.stderr
        assert base64.b64encode(operator_key.seed).decode() not in p.stdout + p.stderr
        ok = f.http("POST", "/api/v1/jobs/hello/run", {"targets": f.agent_ids})
        assert f.wait_task(ok["id"])["state"] == "SUCCEED"
        (target,) = f.task(ok["id"])["targets"].values()
        assert target["output"] == "approved\n"
        for unapproved in (f.http("POST", "/api/v1/jobs/other/run", {"targets": f.agent_ids})["id"],
                           f.http("POST", "/api/v1/jobs/hello/run", {"targets": f.agent_ids, "env": {"GREETING": "x"}})["id"],
                           f.submit(f.agent_ids, "echo ad hoc")):  # fmt: skip
            f.wait_task(unapproved)
            (target,) = f.task(unapproved)["targets"].values()
            assert target["state"] == "REJECTED" and "unapproved" in target["reason"], target
        records = f.http("GET", "/api/v1/audit?action=approval")["records"]
        assert [(r["detail"]["job"], r["detail"]["kid"]) for r in records] == [("hello", operator_key.kid)]
        assert json.dumps(records)  # plain JSON
