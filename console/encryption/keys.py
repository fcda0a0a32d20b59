"""The keys that encrypt secrets at rest, and encryption itself.

Keys are Fernet keys (AES-128-CBC with HMAC-SHA256, from the `cryptography` package), taken from
DOMUS_ENCRYPTION_KEYS (comma-separated) or else from a key file, one key a line:
DOMUS_ENCRYPTION_KEY_FILE, or by default `encryption.key` in the data directory, which is made
(0600) on first use, as `make run` needs. The first key encrypts; every key decrypts. To rotate,
put a new key first and keep the old ones, restart the console's processes, run
`manage.py rotate_encryption_key` (everything stored is encrypted again with the first key),
then drop the old keys (README: "Rotating the encryption key").

A stored value is `fernet:` followed by the token; anything else is plain text written before
encryption at rest existed, which is read as it is and encrypted by the migrations and by the
rotation.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from console.private_dir import private_file_create

PREFIX = "fernet:"
DEFAULT_KEY_FILE = "encryption.key"
KEY_HOWTO = (
    'make one with `python3 -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`'
)


class EncryptionKeyError(ImproperlyConfigured):
    """No usable key, or a stored value that none of the keys decrypts."""


def _parse(keys: list[str], source: str) -> tuple[str, ...]:
    if not keys:
        raise EncryptionKeyError(f"{source} holds no key; {KEY_HOWTO}")
    for number, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError:
            raise EncryptionKeyError(
                f"key {number} of {source} is not a Fernet key "
                f"(32 url-safe base64-encoded bytes); {KEY_HOWTO}"
            ) from None
    return tuple(keys)


@functools.cache
def _file_keys(path: Path, create: bool) -> tuple[str, ...]:
    if create and not path.exists():
        private_file_create(path, Fernet.generate_key().decode() + "\n")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EncryptionKeyError(f"DOMUS_ENCRYPTION_KEY_FILE names {path}, which does not exist") from None
    lines = [line.strip() for line in text.splitlines()]
    return _parse([line for line in lines if line and not line.startswith("#")], str(path))


def configured_keys() -> tuple[str, ...]:
    """The keys in force, the encrypting one first."""
    if settings.DOMUS_ENCRYPTION_KEYS:
        return _parse(list(settings.DOMUS_ENCRYPTION_KEYS), "DOMUS_ENCRYPTION_KEYS")
    if settings.DOMUS_ENCRYPTION_KEY_FILE:
        return _file_keys(Path(settings.DOMUS_ENCRYPTION_KEY_FILE), False)
    return _file_keys(Path(settings.DATA_DIR) / DEFAULT_KEY_FILE, True)


@functools.lru_cache(maxsize=8)
def _keyring(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def keyring() -> MultiFernet:
    return _keyring(configured_keys())


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def encrypt(plain: str) -> str:
    return PREFIX + keyring().encrypt(plain.encode()).decode("ascii")


def decrypt(stored: str, *, where: str = "a stored value") -> str:
    """The plain text of `stored` (returned as it is when it was never encrypted)."""
    if not is_encrypted(stored):
        return stored
    try:
        return keyring().decrypt(stored.removeprefix(PREFIX).encode("ascii")).decode()
    except InvalidToken:
        raise EncryptionKeyError(
            f"{where} was encrypted with a key that is not among the configured ones "
            "(DOMUS_ENCRYPTION_KEYS or the key file): restore the key that was in use"
        ) from None


def encrypted_with_first_key(stored: str) -> bool:
    """Whether `stored` is encrypted, and with the key that encrypts now (rotation is done)."""
    if not is_encrypted(stored):
        return False
    try:
        Fernet(configured_keys()[0]).decrypt(stored.removeprefix(PREFIX).encode("ascii"))
    except InvalidToken:
        return False
    return True


def _settings_changed(setting: str, **kwargs: Any) -> None:
    if setting in ("DOMUS_ENCRYPTION_KEYS", "DOMUS_ENCRYPTION_KEY_FILE", "DATA_DIR"):
        _file_keys.cache_clear()


def connect() -> None:
    setting_changed.connect(_settings_changed, dispatch_uid="encryption-keys-settings")
