"""cloud-init NoCloud seed ISOs: a validated spec in, the ISO's bytes out.

A cloud image boots with this ISO attached as a CD-ROM; cloud-init finds it by its volume label
`cidata` and reads `meta-data` (instance id, hostname) and `user-data` (the login user, its
password hash and SSH keys). Every user value is validated here and written with a JSON
emitter (JSON is YAML, which is what cloud-init parses), never formatted into text, so no value
can add a key, a line or a second document.

Passwords never reach the ISO in clear: `password` is turned into a SHA-512-crypt hash
(`$6$`, what useradd and cloud-init's `passwd` expect) as the spec is built, and only the hash is
kept. The `crypt` module is deprecated and gone in Python 3.13, so the hash is computed here
(Drepper's published SHA-crypt algorithm; tested against its reference vectors).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import secrets
import struct
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

VOLUME_LABEL = "cidata"
MAX_SSH_KEYS = 32
MAX_SSH_KEY_LENGTH = 8192  # a 16384-bit RSA key is ~2.8 kB of base64
MAX_PASSWORD_LENGTH = 1024
SHA512_CRYPT_ROUNDS = 100_000  # glibc's default is 5000; more makes an offline guess dearer

_HOSTNAME_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_HOSTNAME_LABEL}(?:\.{_HOSTNAME_LABEL})*")
# The portable user name that useradd accepts everywhere (Debian's NAME_REGEX, 32 chars).
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Accounts an image already has: cloud-init would modify them rather than create a login user.
_RESERVED_USERS = frozenset(
    {"root", "daemon", "bin", "sys", "sync", "adm", "nobody", "sshd", "halt", "shutdown", "operator"}
)
_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHA512_CRYPT_RE = re.compile(r"\$6\$(?:rounds=[1-9][0-9]{3,8}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}")
_SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
# type, one space, base64, optionally one space and a printable-ASCII comment. No options
# (command=..., from=...): the wizard adds plain keys, and options change what a key may do.
_SSH_KEY_RE = re.compile(r"(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})(?: (?P<comment>[ -~]*))?")


# --- SHA-512-crypt (https://www.akkadia.org/drepper/SHA-crypt.txt) -----------------------------

# The order in which the 64 digest bytes are packed, three at a time, into the output alphabet.
_SHA512_BYTE_ORDER = [
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
]  # fmt: skip


def _repeat_to(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _crypt_b64(b2: int, b1: int, b0: int, chars: int) -> str:
    word = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(chars):
        out.append(_CRYPT_ALPHABET[word & 0x3F])
        word >>= 6
    return "".join(out)


def sha512_crypt(password: str, *, salt: str | None = None, rounds: int = SHA512_CRYPT_ROUNDS) -> str:
    """The `$6$` crypt(3) hash of `password`, as glibc's crypt() computes it.

    `salt` defaults to 16 random characters; `rounds` is clamped to 1000..999999999 as glibc does.
    """
    if salt is None:
        salt = "".join(secrets.choice(_CRYPT_ALPHABET) for _ in range(16))
    salt = salt[:16]
    if any(ch not in _CRYPT_ALPHABET for ch in salt):
        raise ValueError("salt must use the characters ./0-9A-Za-z only")
    explicit_rounds = rounds != 5000
    rounds = min(max(rounds, 1000), 999_999_999)
    key, salt_bytes = password.encode(), salt.encode()

    alternate = hashlib.sha512(key + salt_bytes + key).digest()
    digest_a = hashlib.sha512(key + salt_bytes)
    digest_a.update(_repeat_to(alternate, len(key)))
    length = len(key)
    while length:
        digest_a.update(alternate if length & 1 else key)
        length >>= 1
    current = digest_a.digest()

    p_bytes = _repeat_to(hashlib.sha512(key * len(key)).digest(), len(key))
    s_bytes = _repeat_to(hashlib.sha512(salt_bytes * (16 + current[0])).digest(), len(salt_bytes))
    for i in range(rounds):
        step = hashlib.sha512(p_bytes if i % 2 else current)
        if i % 3:
            step.update(s_bytes)
        if i % 7:
            step.update(p_bytes)
        step.update(current if i % 2 else p_bytes)
        current = step.digest()

    encoded = "".join(_crypt_b64(current[a], current[b], current[c], 4) for a, b, c in _SHA512_BYTE_ORDER)
    encoded += _crypt_b64(0, 0, current[63], 2)
    prefix = f"$6$rounds={rounds}$" if explicit_rounds else "$6$"
    return f"{prefix}{salt}${encoded}"


# --- SSH public keys ----------------------------------------------------------------------------


def check_ssh_public_key(line: str) -> str:
    """`line` if it is one OpenSSH public key ("type base64 [comment]") whose blob really is a key
    of that type; ValueError otherwise."""
    if len(line) > MAX_SSH_KEY_LENGTH:
        raise ValueError(f"longer than {MAX_SSH_KEY_LENGTH} characters")
    match = _SSH_KEY_RE.fullmatch(line)
    if match is None:
        raise ValueError('not an OpenSSH public key line ("ssh-ed25519 AAAA... comment"), no options')
    key_type = match["type"]
    if key_type not in _SSH_KEY_TYPES:
        known = ", ".join(sorted(_SSH_KEY_TYPES))
        raise ValueError(f"unsupported key type {key_type!r} (use one of: {known})")
    try:
        blob = base64.b64decode(match["blob"], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the key is not valid base64 ({exc})") from None
    # The blob starts with its own type as an SSH string (uint32 length + bytes).
    if len(blob) < 4 + len(key_type) + 4:
        raise ValueError("the key data is too short")
    (name_length,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + name_length] != key_type.encode():
        raise ValueError(f"the key data is not a {key_type} key")
    return line


# --- the spec -----------------------------------------------------------------------------------


class CloudInitSpec(BaseModel):
    """What goes on a seed ISO. Built from a plain `password` or a ready `password_hash` (`$6$`);
    either way only the hash is kept (`password` is always None after validation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: str
    user: str = "domus"
    password: Annotated[SecretStr | str | None, Field(exclude=True)] = None
    password_hash: str | None = None
    ssh_authorized_keys: Annotated[list[str], Field(max_length=MAX_SSH_KEYS)] = []
    instance_id: str

    @model_validator(mode="before")
    @classmethod
    def _hash_password(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("password") is None:
            return data
        data = dict(data)
        secret = data.pop("password")
        plain = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not isinstance(plain, str):
            raise ValueError("password must be a string")
        if data.get("password_hash") is not None:
            raise ValueError("give either password or password_hash, not both")
        if not plain or len(plain) > MAX_PASSWORD_LENGTH or "\x00" in plain:
            raise ValueError(f"password must be 1-{MAX_PASSWORD_LENGTH} characters, without NUL")
        data["password_hash"] = sha512_crypt(plain)
        return data

    @field_validator("hostname")
    @classmethod
    def _hostname_is_rfc1123(cls, value: str) -> str:
        if len(value) > 253 or not _HOSTNAME_RE.fullmatch(value):
            raise ValueError(
                "must be an RFC 1123 host name: dot-separated labels of 1-63 letters, digits or '-' "
                "(not at either end of a label), 253 characters at most"
            )
        if value.rsplit(".", 1)[-1].isdigit():
            raise ValueError("must not end in an all-numeric label (it would read as an IP address)")
        return value

    @field_validator("user")
    @classmethod
    def _user_is_posix(cls, value: str) -> str:
        if not _USER_RE.fullmatch(value):
            raise ValueError(
                "must be a POSIX user name: 1-32 of a-z, 0-9, '_' or '-', starting with a letter or '_'"
            )
        if value in _RESERVED_USERS:
            raise ValueError(f"{value!r} is a system account; choose another login name")
        return value

    @field_validator("password_hash")
    @classmethod
    def _hash_is_sha512_crypt(cls, value: str | None) -> str | None:
        if value is not None and not _SHA512_CRYPT_RE.fullmatch(value):
            raise ValueError("must be a SHA-512-crypt hash ($6$[rounds=N$]salt$hash)")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys_are_openssh(cls, value: list[str]) -> list[str]:
        keys = []
        for index, line in enumerate(value):
            try:
                keys.append(check_ssh_public_key(line.strip()))  # a pasted key ends in a newline
            except ValueError as exc:
                raise ValueError(f"key {index + 1}: {exc}") from None
        return keys

    @field_validator("instance_id")
    @classmethod
    def _instance_id_is_plain(cls, value: str) -> str:
        if not _INSTANCE_ID_RE.fullmatch(value):
            raise ValueError(
                "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value


def render_meta_data(spec: CloudInitSpec) -> str:
    """The NoCloud `meta-data` document."""
    return json.dumps({"instance-id": spec.instance_id, "local-hostname": spec.hostname}, indent=2) + "\n"


def render_user_data(spec: CloudInitSpec) -> str:
    """The `#cloud-config` `user-data` document.

    `user:` (a mapping) replaces the image's default user (debian, ubuntu, cloud-user...) and
    keeps the distribution's settings for it (groups, shell, passwordless sudo). SSH password
    logins are switched on only when a password is the sole way in."""
    user: dict[str, Any] = {"name": spec.user, "lock_passwd": spec.password_hash is None}
    if spec.password_hash is not None:
        user["passwd"] = spec.password_hash
    if spec.ssh_authorized_keys:
        user["ssh_authorized_keys"] = list(spec.ssh_authorized_keys)
    config = {
        "user": user,
        "ssh_pwauth": spec.password_hash is not None and not spec.ssh_authorized_keys,
    }
    return "#cloud-config\n" + json.dumps(config, indent=2, ensure_ascii=True) + "\n"


def build_seed_iso(spec: CloudInitSpec) -> bytes:
    """The NoCloud seed ISO for `spec`: label `cidata`, files `user-data` and `meta-data`, with
    Joliet and Rock Ridge names so the lower-case, hyphenated names survive every reader."""
    import pycdlib  # lazily: the agent imports this module at start-up, and most runs never build one

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, text in (("user-data", render_user_data(spec)), ("meta-data", render_meta_data(spec))):
            data = text.encode()
            iso_name = name.replace("-", "").upper() + ".;1"  # USERDATA.;1: plain ISO 9660 d-characters
            iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()
