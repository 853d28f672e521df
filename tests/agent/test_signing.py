"""Keys, the signed envelope and the agent's gate (mschedule_agent/keys.py, signing.py,
trust.py, gate.py): pure tests, a fake clock, real Ed25519 (PyNaCl)."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from mschedule_agent import keys
from mschedule_agent.errors import ConfigError
from mschedule_agent.gate import Gate, Refused
from mschedule_agent.protocol import Kill, ResultAck, Signed, Task, decode, encode
from mschedule_agent.signing import Signer, Window, sha256_hex
from mschedule_agent.trust import TrustStore

NOW = 1_000_000.0
AGENT = "agent-1"


def trust_toml(*pairs: tuple[keys.PrivateKey, str]) -> str:
    """[[keys]] entries for (key, extra TOML lines)."""
    out = []
    for key, extra in pairs:
        out.append(f'[[keys]]\npublic = "{base64.b64encode(key.public).decode()}"\nrole = "master"\n{extra}\n')
    return "\n".join(out)


@pytest.fixture
def key() -> keys.PrivateKey:
    return keys.generate()


@pytest.fixture
def clock():
    class Clock:
        t = NOW

        def __call__(self) -> float:
            return self.t

    return Clock()


def make_gate(tmp_path, clock, mode: str, *trusted: keys.PrivateKey) -> Gate:
    path = tmp_path / "trust.toml"
    path.write_text(trust_toml(*((k, "") for k in trusted)))
    return Gate(agent_id=AGENT, mode=mode, trust=TrustStore(path), skew=5.0, now=clock)


def task_body(task_id: str = "t1", script: bytes = b"echo hi") -> bytes:
    return encode(Task(id=task_id, script=script, expires_at=NOW + 60))


GOOD = Window(NOW - 1, NOW + 60)


def sealed(key, body=None, *, aud=AGENT, window=GOOD, script=b"echo hi", protocol=2, **kw):
    body = body if body is not None else task_body(script=script)
    return Signer(key, protocol=protocol).seal(
        body, type="task", id="t1", aud=aud, window=window, script_sha256=kw.get("script_sha256", sha256_hex(script))
    )


# ---------------------------------------------------------------- keys


def test_key_pair_files_private_is_0600_and_round_trips(tmp_path, key):
    priv, pub = keys.write_pair(key, tmp_path / "master")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert keys.load_private(priv) == key
    assert keys.load_public(pub) == (key.kid, key.public)
    assert key.kid.startswith("ed25519-") and len(key.kid) == len("ed25519-") + 16
    assert base64.b64encode(key.seed).decode() not in repr(key)


def test_key_files_are_never_overwritten(tmp_path, key):
    keys.write_pair(key, tmp_path / "k")
    with pytest.raises(keys.KeyFileError, match="exists"):
        keys.write_pair(keys.generate(), tmp_path / "k")


def test_a_private_key_readable_by_others_is_refused_without_printing_it(tmp_path, key):
    priv, _ = keys.write_pair(key, tmp_path / "k")
    os.chmod(priv, 0o644)
    with pytest.raises(keys.KeyFileError, match="readable by others") as e:
        keys.load_private(priv)
    assert base64.b64encode(key.seed).decode() not in str(e.value)


def test_a_private_key_whose_id_does_not_match_is_refused(tmp_path, key):
    priv, _ = keys.write_pair(key, tmp_path / "k")
    priv.write_text(priv.read_text().replace(key.kid, keys.generate().kid))
    with pytest.raises(keys.KeyFileError, match="does not match"):
        keys.load_private(priv)


# ---------------------------------------------------------------- the envelope


def test_a_sealed_task_carries_the_exact_body_and_a_header_naming_audience_window_and_hashes(key):
    body = task_body()
    msg = decode(sealed(key, body))
    assert isinstance(msg, Signed) and msg.kid == key.kid
    assert msg.body.encode() == body  # the inner bytes travel unchanged


@pytest.mark.parametrize("mode", ["enforce", "audit", "off"])
def test_a_good_signature_opens_in_every_mode(tmp_path, clock, key, mode):
    gate = make_gate(tmp_path, clock, mode, key)
    opened = gate.open(sealed(key), Task)
    assert isinstance(opened.message, Task) and opened.message.id == "t1" and opened.audit == ""
    assert opened.raw == task_body()  # what the ledger keeps: the inner task, decodable alone


def tamper_body(data: bytes) -> bytes:
    msg = decode(data)
    evil = encode(Task(id="t1", script=b"rm -rf /", expires_at=NOW + 60)).decode()
    return encode(Signed(kid=msg.kid, header=msg.header, sig=msg.sig, body=evil))


def tamper_header(data: bytes) -> bytes:
    msg = decode(data)
    return encode(Signed(kid=msg.kid, header=msg.header.replace(AGENT, "agent-2"), sig=msg.sig, body=msg.body))


CASES = {
    "unsigned": (lambda k: task_body(), "unsigned"),
    "other key": (lambda k: sealed(keys.generate()), "untrusted_key"),
    "edited body": (lambda k: tamper_body(sealed(k)), "bad_signature"),
    "edited header": (lambda k: tamper_header(sealed(k)), "bad_signature"),
    "wrong audience": (lambda k: sealed(k, aud="agent-2"), "wrong_audience"),
    "expired": (lambda k: sealed(k, window=Window(NOW - 120, NOW - 10)), "expired"),
    "not yet valid": (lambda k: sealed(k, window=Window(NOW + 60, NOW + 120)), "not_yet_valid"),
    "older protocol": (lambda k: sealed(k, protocol=1), "downgrade"),
    "wrong script hash": (lambda k: sealed(k, script_sha256="0" * 64), "bad_signature"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_enforce_refuses_and_says_why(tmp_path, clock, key, case):
    make, code = CASES[case]
    gate = make_gate(tmp_path, clock, "enforce", key)
    with pytest.raises(Refused) as e:
        gate.open(make(key), Task)
    assert e.value.code == code and e.value.reason
    assert e.value.msg_id == "t1"  # so the reject reaches the right target


@pytest.mark.parametrize("case", sorted(CASES))
def test_audit_lets_it_through_with_the_reason_enforce_would_give(tmp_path, clock, key, case):
    make, code = CASES[case]
    gate = make_gate(tmp_path, clock, "audit", key)
    opened = gate.open(make(key), Task)
    assert isinstance(opened.message, Task) and opened.audit.startswith(code + ":")


def test_skew_tolerates_a_slightly_late_clock(tmp_path, clock, key):
    gate = make_gate(tmp_path, clock, "enforce", key)
    data = sealed(key, window=Window(NOW + 3, NOW + 60))  # 3 s in the future, skew 5 s
    assert gate.open(data, Task).message.id == "t1"


def test_result_ack_is_taken_unsigned_but_a_kill_is_not(tmp_path, clock, key):
    gate = make_gate(tmp_path, clock, "enforce", key)
    ack = encode(ResultAck(id="t1", agent_id=AGENT))
    assert isinstance(gate.open(ack, Kill, unsigned_ok=(ResultAck,)).message, ResultAck)
    with pytest.raises(Refused, match="unsigned"):
        gate.open(encode(Kill(id="t1")), Kill, unsigned_ok=(ResultAck,))
    kill = Signer(key).seal(encode(Kill(id="t1")), type="kill", id="t1", aud=AGENT, window=Window(NOW, NOW + 30))
    assert isinstance(gate.open(kill, Kill, unsigned_ok=(ResultAck,)).message, Kill)


def test_a_signed_task_cannot_pass_as_a_kill(tmp_path, clock, key):
    gate = make_gate(tmp_path, clock, "enforce", key)
    with pytest.raises(Exception, match="unexpected message type|does not describe"):
        gate.open(sealed(key), Kill)


# ---------------------------------------------------------------- trust and rotation


def test_rotation_and_revocation_apply_from_the_next_message_without_a_restart(tmp_path, clock):
    old, new = keys.generate(), keys.generate()
    gate = make_gate(tmp_path, clock, "enforce", old)
    path = tmp_path / "trust.toml"
    assert gate.open(sealed(old), Task)
    with pytest.raises(Refused, match="not trusted"):
        gate.open(sealed(new), Task)
    path.write_text(trust_toml((old, ""), (new, "")))  # overlap: both
    assert gate.open(sealed(old), Task) and gate.open(sealed(new), Task)
    path.write_text(trust_toml((new, "")))  # the old one retired
    with pytest.raises(Refused, match="not trusted"):
        gate.open(sealed(old), Task)
    assert gate.open(sealed(new), Task)


def test_validity_windows_bound_a_key(tmp_path, clock, key):
    path = tmp_path / "trust.toml"
    path.write_text(trust_toml((key, f"not_before = {NOW - 10}\nnot_after = 1970-01-12T13:46:50Z")))
    gate = Gate(agent_id=AGENT, mode="enforce", trust=TrustStore(path), now=clock)
    assert gate.open(sealed(key), Task)  # NOW = 1970-01-12T13:46:40Z
    clock.t = NOW + 11
    with pytest.raises(Refused, match="validity window"):
        gate.open(sealed(key, window=Window(NOW, NOW + 60)), Task)


def test_a_broken_trust_file_trusts_nothing_until_fixed(tmp_path, clock, key):
    gate = make_gate(tmp_path, clock, "enforce", key)
    path = tmp_path / "trust.toml"
    good = path.read_text()
    path.write_text(good + "\n[[keys]]\npublic = 'not base64!'\n")
    with pytest.raises(Refused, match="not valid base64"):
        gate.open(sealed(key), Task)
    path.write_text(good + "\n")
    assert gate.open(sealed(key), Task)


def test_a_trust_file_with_a_wrong_kid_is_a_config_error_at_start(tmp_path, key):
    path = tmp_path / "trust.toml"
    path.write_text(trust_toml((key, 'kid = "ed25519-0000000000000000"')))
    with pytest.raises(ConfigError, match="does not match"):
        TrustStore(path)


def test_the_signed_example_in_the_protocol_doc_verifies_with_the_key_it_names(tmp_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    (block,) = [b for b in re.findall(r"```json\n(.*?)```", text, flags=re.S) if '"type": "signed"' in b]
    public = re.search(r"public half is\n`([A-Za-z0-9+/=]+)`", text).group(1)
    path = tmp_path / "trust.toml"
    path.write_text(f'[[keys]]\npublic = "{public}"\n')
    gate = Gate(agent_id="7f3c9a1e2b4d4e0f8a6b5c4d3e2f1a0b", mode="enforce", trust=TrustStore(path), now=lambda: 1764255630.0)
    kill = gate.open(block.encode(), Kill).message
    assert kill == Kill(id="0b9d2c1f6a0e4f5d9c8b7a6f5e4d3c2b", reason="killed by user")


# ---------------------------------------------------------------- two keys: operator approvals


def approval_gate(tmp_path, clock, master, operator) -> Gate:
    path = tmp_path / "trust.toml"
    path.write_text(trust_toml((master, "")) + trust_toml((operator, "")).replace('role = "master"', 'role = "operator"'))
    return Gate(agent_id=AGENT, mode="enforce", trust=TrustStore(path), now=clock, require_approval=True)


def approved(master, operator, *, script=b"echo hi", approved_script=b"echo hi", env=None) -> bytes:
    from mschedule_agent.signing import sign_approval

    approval = sign_approval(operator, job="deploy", version=3, script_sha256=sha256_hex(approved_script))
    body = encode(Task(id="t1", script=script, expires_at=NOW + 60, env=env or {}))
    return Signer(master).seal(body, type="task", id="t1", aud=AGENT, window=GOOD,
                               script_sha256=sha256_hex(script), approval=approval)  # fmt: skip


def test_require_approval_runs_a_script_an_operator_approved(tmp_path, clock):
    master, operator = keys.generate(), keys.generate()
    gate = approval_gate(tmp_path, clock, master, operator)
    assert gate.open(approved(master, operator), Task).message.id == "t1"


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda m, o: sealed(m), "only job versions an operator approved"),
        (lambda m, o: approved(m, keys.generate()), "not a trusted operator key"),
        (lambda m, o: approved(m, m), "not a trusted operator key"),  # the online key cannot approve
        (lambda m, o: approved(m, o, script=b"rm -rf /", approved_script=b"echo hi"), "another script"),
        (lambda m, o: approved(m, o, env={"BASH_FUNC_echo%%": "() { rm -rf /; }"}), "another env"),
    ],
    ids=["no approval", "unknown operator", "master key as operator", "another script", "another env"],
)
def test_require_approval_refuses_what_no_operator_approved(tmp_path, clock, make, why):
    master, operator = keys.generate(), keys.generate()
    gate = approval_gate(tmp_path, clock, master, operator)
    with pytest.raises(Refused, match=why) as e:
        gate.open(make(master, operator), Task)
    assert e.value.code in ("unapproved", "bad_signature")


def test_an_operator_key_cannot_sign_a_dispatch(tmp_path, clock):
    """A stolen offline key alone runs nothing: dispatches need the master's role."""
    master, operator = keys.generate(), keys.generate()
    gate = approval_gate(tmp_path, clock, master, operator)
    with pytest.raises(Refused, match="operator key") as e:
        gate.open(approved(operator, operator), Task)
    assert e.value.code == "untrusted_key"


@pytest.mark.parametrize("script", [b"echo hi", b'echo "quotes" \\ and \n newlines \x01', "unicode: é ☃".encode()])
def test_the_fan_out_encoder_writes_exactly_what_encode_writes(key, script):
    from mschedule_agent.protocol import encode_signed, json_string

    body = encode(Task(id="t1", script=script, env={"A": 'x"y\\z\n'}))
    sig = bytes(range(64))
    header = '{"protocol":2,"note":"\\u00e9 \\" \\\\"}'
    assert encode_signed(key.kid, header, sig, json_string(body.decode())) == encode(
        Signed(kid=key.kid, header=header, sig=sig, body=body.decode())
    )
