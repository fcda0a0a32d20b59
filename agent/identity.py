"""The agent's identity and the consoles it trusts, kept in its state directory.

- `key.pem` / `cert.pem`: a self-signed certificate made once by `domus-agent init`. Consoles pin
  its SHA-256 fingerprint at enrolment, so no certificate authority is involved.
- `pairing.json`: the current one-time pairing code (hashed), its expiry and failed attempts.
- `consoles.json`: each paired console's secret, hashed (a leaked state directory gives no
  credential to call the agent with).

Every file is written atomically with mode 0600. The pairing file is re-read on each attempt, so
`domus-agent init` run next to a serving agent hands out a new code without a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import ssl
import stat
import tempfile
import time
import uuid as uuid_mod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentProblem, Conflict
from agent.protocol import normalise_pairing_code, pairing_proof

DEFAULT_STATE_DIR = "/var/lib/domus-agent"
PAIRING_TTL_SECONDS = 15 * 60
MAX_PAIRING_ATTEMPTS = 5
# Unambiguous when read aloud or copied by hand (no 0/O, 1/I/L): 12 characters, 60 bits.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 12
STATIC_CONSOLE_ID = "static"  # the secret given on the command line (loopback agents)


class PairingRefused(AgentProblem):
    """Why a pairing attempt failed; `code` tells the console which message to show."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


def _hash(secret: str) -> str:
    # The secrets are 256-bit random strings: a plain digest is enough, no key stretching needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Certificate:
    cert_path: Path
    key_path: Path
    fingerprint: str  # sha256 of the DER certificate, lowercase hex
    created: bool


class AgentIdentity:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.key_path = self.state_dir / "key.pem"
        self.cert_path = self.state_dir / "cert.pem"
        self.pairing_path = self.state_dir / "pairing.json"
        self.consoles_path = self.state_dir / "consoles.json"

    def private_check(self) -> list[str]:
        """Make the state directory (0700) and its files (0600) private again where they are not
        (copied or restored with other modes, say); returns what was changed, to be said."""
        if not self.state_dir.is_dir():
            return []
        fixed = []
        for path in [self.state_dir, *sorted(self.state_dir.iterdir())]:
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode) or not mode & 0o077:
                continue
            wanted = 0o700 if stat.S_ISDIR(info.st_mode) else mode & 0o700
            os.chmod(path, wanted)
            fixed.append(f"{path} was readable by others (mode {mode:04o}); it is now {wanted:04o}")
        return fixed

    # -- certificate ---------------------------------------------------------------------------
    def has_certificate(self) -> bool:
        return self.cert_path.exists() and self.key_path.exists()

    def ensure_certificate(self, *, names: list[str] | None = None) -> Certificate:
        """Create the key and self-signed certificate unless they exist (they never change on
        their own: a new certificate means every console must re-enrol the host)."""
        created = False
        if not self.has_certificate():
            # Imported here: only `init` makes certificates, and the serving agent stays ~10 MB
            # smaller without the cryptography package loaded.
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID

            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            hostname = socket.gethostname()
            alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
            for name in names or []:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            now = dt.datetime.now(dt.UTC)
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"domus-agent {hostname}")])
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .sign(key, hashes.SHA256())
            )
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(self.key_path, key_pem)
            _write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))
            created = True
        return Certificate(self.cert_path, self.key_path, self.fingerprint(), created)

    def fingerprint(self) -> str:
        return fingerprint_of(ssl.PEM_cert_to_DER_cert(self.cert_path.read_text()))

    # -- pairing codes -------------------------------------------------------------------------
    def new_pairing_code(self, *, ttl_s: float = PAIRING_TTL_SECONDS) -> tuple[str, float]:
        """Issue a fresh one-time code (replacing any earlier one); returns it and its expiry."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        code = "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))
        expires = time.time() + ttl_s
        # The code itself is needed to check an HMAC proof, so it is stored; it lives 15 minutes
        # and is erased on first use or after too many wrong attempts.
        state = {"code": normalise_pairing_code(code), "expires_at": expires, "attempts": 0}
        _write_private(self.pairing_path, json.dumps(state).encode())
        return code, expires

    def _pairing_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.pairing_path.read_text()))
        except FileNotFoundError:
            return None

    def pair(self, *, proof: str, secret: str, label: str, now: float | None = None) -> str:
        """Check a console's proof of the pairing code and remember its secret; returns its id.

        The console proves it knows the code with HMAC(code, fingerprint it saw), never the code
        itself: a man in the middle shows a different certificate, so its relayed proof fails."""
        now = time.time() if now is None else now
        state = self._pairing_state()
        if state is None or state.get("used"):
            raise PairingRefused(
                410,
                "pairing_code_used",
                "no pairing code is open on this agent: it was used "
                "already, or none was issued. Run `domus-agent init` on the host for a new one.",
            )
        if state["attempts"] >= MAX_PAIRING_ATTEMPTS:
            raise PairingRefused(
                410,
                "pairing_code_locked",
                f"the pairing code was withdrawn after "
                f"{MAX_PAIRING_ATTEMPTS} wrong attempts. Run `domus-agent init` for a new one.",
            )
        if now > float(state["expires_at"]):
            raise PairingRefused(
                410,
                "pairing_code_expired",
                "the pairing code has expired (codes last "
                f"{PAIRING_TTL_SECONDS // 60} minutes). Run `domus-agent init` for a new one.",
            )
        expected = pairing_proof(str(state["code"]), self.fingerprint())
        if not hmac.compare_digest(expected.encode(), proof.encode()):
            state["attempts"] += 1
            _write_private(self.pairing_path, json.dumps(state).encode())
            left = MAX_PAIRING_ATTEMPTS - state["attempts"]
            raise PairingRefused(
                403,
                "pairing_code_mismatch",
                "the pairing code does not match (or the "
                f"connection to the agent is being intercepted); {left} attempt(s) left.",
            )
        consoles = self.consoles()
        console_id = uuid_mod.uuid4().hex
        consoles[console_id] = {
            "hash": _hash(secret),
            "previous": None,
            "label": label[:200],
            "paired_at": now,
        }
        self._save_consoles(consoles)
        _write_private(self.pairing_path, json.dumps({"used": True}).encode())
        return console_id

    # -- paired consoles -----------------------------------------------------------------------
    def consoles(self) -> dict[str, dict[str, Any]]:
        try:
            return dict(json.loads(self.consoles_path.read_text()))
        except FileNotFoundError:
            return {}

    def _save_consoles(self, consoles: dict[str, dict[str, Any]]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.consoles_path, json.dumps(consoles, indent=1).encode())

    def forget(self, console_id: str) -> None:
        if console_id == STATIC_CONSOLE_ID:
            raise Conflict("this console's secret comes from the agent's command line; remove it there")
        consoles = self.consoles()
        consoles.pop(console_id, None)
        self._save_consoles(consoles)

    def forget_all(self) -> int:
        count = len(self.consoles())
        self._save_consoles({})
        return count

    def rotate(self, console_id: str, new_secret: str) -> None:
        """Replace a console's secret. The old one keeps working until the new one is first
        used, so a console that fails to save the new secret is not locked out."""
        if console_id == STATIC_CONSOLE_ID:
            raise Conflict("this console's secret comes from the agent's command line; change it there")
        consoles = self.consoles()
        entry = consoles[console_id]
        entry["previous"] = entry["hash"]
        entry["hash"] = _hash(new_secret)
        self._save_consoles(consoles)


class ConsoleKeys:
    """The secrets the agent accepts, in memory; written through to `consoles.json`."""

    def __init__(self, identity: AgentIdentity | None, static_secret: str | None) -> None:
        self.identity = identity
        self.static_hash = _hash(static_secret) if static_secret else None

    def authenticate(self, secret: str) -> str | None:
        """The id of the console this secret belongs to, or None."""
        digest = _hash(secret)
        if self.static_hash is not None and hmac.compare_digest(digest, self.static_hash):
            return STATIC_CONSOLE_ID
        if self.identity is None:
            return None
        consoles = self.identity.consoles()  # small file, page-cached; re-read so forget() bites at once
        for console_id, entry in consoles.items():
            if hmac.compare_digest(digest, entry["hash"]):
                if entry.get("previous"):
                    entry["previous"] = None  # the new secret is in use: retire the old one
                    self.identity._save_consoles(consoles)
                return console_id
            previous = entry.get("previous")
            if previous and hmac.compare_digest(digest, previous):
                return console_id
        return None
