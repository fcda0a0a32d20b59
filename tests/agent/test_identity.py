"""The agent's certificate, pairing codes and paired consoles (agent/identity.py)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from agent.errors import Conflict
from agent.identity import MAX_PAIRING_ATTEMPTS, STATIC_CONSOLE_ID, AgentIdentity, ConsoleKeys, PairingRefused
from agent.protocol import PAIRING_CODE_RE, normalise_pairing_code, pairing_proof

SECRET = "a-console-secret-of-enough-length-0123456789"


@pytest.fixture
def identity(tmp_path: Path) -> AgentIdentity:
    ident = AgentIdentity(tmp_path / "state")
    ident.ensure_certificate(names=["127.0.0.1", "kvm1.example.org"])
    return ident


def _proof(identity: AgentIdentity, code: str) -> str:
    return pairing_proof(code, identity.fingerprint())


def test_certificate_is_made_once_and_private(identity: AgentIdentity) -> None:
    first = identity.fingerprint()
    again = identity.ensure_certificate()
    assert not again.created and again.fingerprint == first and len(first) == 64
    for path in (identity.key_path, identity.cert_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_codes_are_readable_and_normalised(identity: AgentIdentity) -> None:
    code, expires = identity.new_pairing_code()
    assert len(code) == 14 and code.count("-") == 2
    assert PAIRING_CODE_RE.match(normalise_pairing_code(code.lower()))
    assert expires - time.time() == pytest.approx(15 * 60, abs=5)


def test_pairing_stores_only_a_hash_and_the_code_is_single_use(identity: AgentIdentity) -> None:
    code, _ = identity.new_pairing_code()
    console_id = identity.pair(
        proof=_proof(identity, code.lower().replace("-", "")), secret=SECRET, label="c"
    )
    assert SECRET not in identity.consoles_path.read_text()
    assert ConsoleKeys(identity, None).authenticate(SECRET) == console_id
    assert ConsoleKeys(identity, None).authenticate(SECRET + "x") is None
    with pytest.raises(PairingRefused) as used:
        identity.pair(proof=_proof(identity, code), secret=SECRET, label="again")
    assert used.value.code == "pairing_code_used" and used.value.status == 410


def test_a_proof_for_another_certificate_is_refused(identity: AgentIdentity) -> None:
    """What a relay in the middle would send: the right code, bound to its own certificate."""
    code, _ = identity.new_pairing_code()
    with pytest.raises(PairingRefused) as refused:
        identity.pair(proof=pairing_proof(code, "ab" * 32), secret=SECRET, label="mitm")
    assert refused.value.code == "pairing_code_mismatch"
    assert identity.consoles() == {}


def test_wrong_codes_use_up_the_attempts(identity: AgentIdentity) -> None:
    code, _ = identity.new_pairing_code()
    for attempt in range(MAX_PAIRING_ATTEMPTS):
        with pytest.raises(PairingRefused) as wrong:
            identity.pair(proof=_proof(identity, "2222-2222-2222"), secret=SECRET, label="guess")
        assert f"{MAX_PAIRING_ATTEMPTS - attempt - 1} attempt(s) left" in wrong.value.detail
    with pytest.raises(PairingRefused) as locked:  # even the right code is withdrawn now
        identity.pair(proof=_proof(identity, code), secret=SECRET, label="late")
    assert locked.value.code == "pairing_code_locked"


def test_an_expired_code_is_refused(identity: AgentIdentity) -> None:
    code, expires = identity.new_pairing_code()
    with pytest.raises(PairingRefused) as expired:
        identity.pair(proof=_proof(identity, code), secret=SECRET, label="late", now=expires + 1)
    assert expired.value.code == "pairing_code_expired"
    # A new `init` issues a new code that works.
    code, _ = identity.new_pairing_code()
    assert identity.pair(proof=_proof(identity, code), secret=SECRET, label="ok")


def test_no_code_issued(identity: AgentIdentity) -> None:
    with pytest.raises(PairingRefused) as none:
        identity.pair(proof=_proof(identity, "2222-2222-2222"), secret=SECRET, label="x")
    assert none.value.code == "pairing_code_used" and "domus-agent init" in none.value.detail


def test_rotation_keeps_the_old_secret_until_the_new_one_is_used(identity: AgentIdentity) -> None:
    code, _ = identity.new_pairing_code()
    console_id = identity.pair(proof=_proof(identity, code), secret=SECRET, label="c")
    keys = ConsoleKeys(identity, None)
    new = "the-new-console-secret-0123456789abcdefgh"
    identity.rotate(console_id, new)
    assert keys.authenticate(SECRET) == console_id  # a console that lost the new one still gets in
    assert keys.authenticate(new) == console_id  # first use of the new one...
    assert keys.authenticate(SECRET) is None  # ...retires the old
    identity.forget(console_id)
    assert keys.authenticate(new) is None


def test_the_static_secret_cannot_be_forgotten_remotely(identity: AgentIdentity) -> None:
    keys = ConsoleKeys(identity, "fixed-secret-from-the-command-line")
    assert keys.authenticate("fixed-secret-from-the-command-line") == STATIC_CONSOLE_ID
    with pytest.raises(Conflict):
        identity.forget(STATIC_CONSOLE_ID)


def test_forget_all(identity: AgentIdentity) -> None:
    for _ in range(2):
        code, _ = identity.new_pairing_code()
        identity.pair(proof=_proof(identity, code), secret=SECRET + code, label="c")
    assert identity.forget_all() == 2
    assert json.loads(identity.consoles_path.read_text()) == {}


def test_a_state_directory_left_readable_is_made_private_again(identity: AgentIdentity) -> None:
    identity.state_dir.chmod(0o755)
    identity.key_path.chmod(0o644)  # restored from a backup with other modes, say
    fixed = identity.private_check()
    assert fixed == [
        f"{identity.state_dir} was readable by others (mode 0755); it is now 0700",
        f"{identity.key_path} was readable by others (mode 0644); it is now 0600",
    ]
    assert stat.S_IMODE(identity.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert identity.private_check() == []
