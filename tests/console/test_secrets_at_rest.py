"""Secrets at rest (issue 18): host secrets and TOTP seeds encrypted in the database, key
rotation, session rows that are no cookie, and a private data directory, checked on the real
launcher when it starts and when it starts again."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.sessions.models import Session
from django.core.exceptions import FieldError
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django_otp.oath import TOTP

from console.access.login.models import AuthenticatorApp
from console.encryption import keys
from console.encryption.keys import EncryptionKeyError
from console.encryption.sessions import SessionStore
from console.private_dir import DataDirUnsafe, private_dir_ensure
from hosts.models import Host
from tests.e2e.conftest import ROOT, _free_port

SECRET = "host-secret-" + "s" * 32
SEED = "3132333435363738393031323334353637383930"  # RFC 6238's test seed, in hex


def raw(table: str, column: str) -> list[str]:
    """A column as someone who reads the database file sees it."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {connection.ops.quote_name(column)} FROM {connection.ops.quote_name(table)}")
        return [row[0] for row in cursor.fetchall()]


def new_key() -> str:
    return Fernet.generate_key().decode()


# -- encryption of host secrets and TOTP seeds -----------------------------------------------------
@pytest.mark.django_db
def test_a_host_secret_is_encrypted_in_the_database() -> None:
    host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret=SECRET)
    [stored] = raw("hosts_host", "secret")
    assert stored.startswith("fernet:") and SECRET not in stored
    assert Host.objects.get(pk=host.pk).secret == SECRET
    assert list(Host.objects.values_list("secret", flat=True)) == [SECRET]  # hostwatch reads it so
    # A rotated secret is written with update() (hosts.enrolment): encrypted too.
    Host.objects.filter(pk=host.pk).update(secret="rotated-" + SECRET)
    [stored] = raw("hosts_host", "secret")
    assert stored.startswith("fernet:") and "rotated-" not in stored
    assert Host.objects.get(pk=host.pk).secret == "rotated-" + SECRET
    # SQL cannot compare ciphertexts: a query on the plain text is refused, not silently empty.
    with pytest.raises(FieldError):
        Host.objects.filter(secret=SECRET).exists()


@pytest.mark.django_db
def test_a_totp_seed_is_encrypted_in_the_database_and_still_verifies(user: Any) -> None:
    device = AuthenticatorApp.objects.create(user=user, name="phone", key=SEED, confirmed=True)
    [stored] = raw("access_login_authenticatorapp", "key")
    assert stored.startswith("fernet:") and SEED not in stored and SEED.upper() not in stored
    device = AuthenticatorApp.objects.get(pk=device.pk)
    assert device.key == SEED
    assert "secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ" in device.config_url  # the seed, base32
    code = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).token()
    assert device.verify_token(f"{code:06d}")
    [stored_after] = raw("access_login_authenticatorapp", "key")  # verify_token saved the device
    assert stored_after.startswith("fernet:") and SEED not in stored_after


# -- rotation --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_rotation_encrypts_everything_with_the_new_key(user: Any, settings: Any) -> None:
    old, new = new_key(), new_key()
    settings.DOMUS_ENCRYPTION_KEYS = [old]
    Host.objects.create(name="h", url="http://127.0.0.1:1", secret=SECRET)
    AuthenticatorApp.objects.create(user=user, name="phone", key=SEED, confirmed=True)
    # A value written before encryption at rest: read as it is, encrypted by the rotation.
    Host.objects.create(name="legacy", url="http://127.0.0.1:2", secret="placeholder")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE hosts_host SET secret = %s WHERE name = 'legacy'", ["plain-" + SECRET])
    assert Host.objects.get(name="legacy").secret == "plain-" + SECRET

    settings.DOMUS_ENCRYPTION_KEYS = [new, old]  # step 1: the new key first, the old one kept
    assert Host.objects.get(name="h").secret == SECRET
    with pytest.raises(CommandError, match="3 value"):
        call_command("rotate_encryption_key", "--check")
    call_command("rotate_encryption_key")  # step 2
    call_command("rotate_encryption_key", "--check")
    stored = raw("hosts_host", "secret") + raw("access_login_authenticatorapp", "key")
    assert all(value.startswith("fernet:") for value in stored)
    assert not any(SECRET in value or SEED in value for value in stored)

    settings.DOMUS_ENCRYPTION_KEYS = [new]  # step 3: the old key dropped; nothing needs it
    assert Host.objects.get(name="h").secret == SECRET
    assert Host.objects.get(name="legacy").secret == "plain-" + SECRET
    assert AuthenticatorApp.objects.get(user=user).key == SEED
    settings.DOMUS_ENCRYPTION_KEYS = [old]  # and the old key alone opens nothing any more
    with pytest.raises(EncryptionKeyError, match=r"hosts_host\.secret"):
        Host.objects.get(name="h")


def test_the_default_key_file_is_made_once_and_private(settings: Any, tmp_path: Path) -> None:
    settings.DOMUS_ENCRYPTION_KEYS = []
    settings.DOMUS_ENCRYPTION_KEY_FILE = ""
    settings.DATA_DIR = tmp_path
    first = keys.configured_keys()
    path = tmp_path / "encryption.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 1 and path.read_text().strip() == first[0]
    assert keys.configured_keys() == first
    # Another file is named: it must exist (each process making its own would lose secrets).
    settings.DOMUS_ENCRYPTION_KEY_FILE = str(tmp_path / "missing.key")
    with pytest.raises(EncryptionKeyError, match="does not exist"):
        keys.configured_keys()
    settings.DOMUS_ENCRYPTION_KEYS = [new_key(), "not-a-key"]
    with pytest.raises(EncryptionKeyError, match="key 2 of DOMUS_ENCRYPTION_KEYS"):
        keys.configured_keys()


# -- sessions --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_session_row_cannot_be_used_as_a_cookie(user: Any, client: Client) -> None:
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    [row] = Session.objects.all()
    assert row.session_key != cookie and cookie not in row.session_data
    assert client.get("/").status_code == 200  # the real cookie works

    thief = Client()
    thief.cookies["sessionid"] = row.session_key  # what reading the database gives
    response = thief.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")

    assert SessionStore(cookie).load()  # the configured engine finds it by the cookie's value
    client.post("/logout/")
    assert not Session.objects.exists()  # signing out deletes the row it is stored under


# -- the migrations, on data written before them ---------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_migrations_encrypt_what_was_stored_in_clear(django_user_model: Any) -> None:
    before = [("hosts", "0003_enrolment_maintenance_stats"), ("access_login", None), ("encryption", None)]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(
            [("hosts", "0003_enrolment_maintenance_stats"), ("otp_totp", "0003_add_timestamps")]
        ).apps
        user = django_user_model.objects.create_user("ana")
        old.get_model("hosts", "Host").objects.create(name="h", url="http://127.0.0.1:1", secret=SECRET)
        totp = old.get_model("otp_totp", "TOTPDevice")
        totp.objects.create(user_id=user.pk, name="phone", key=SEED, confirmed=True)
        session_key = "k" * 32
        data = SessionStore().encode(
            {
                "_auth_user_id": str(user.pk),
                "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
                "_auth_user_hash": user.get_session_auth_hash(),
            }
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO django_session (session_key, session_data, expire_date) VALUES (%s, %s, %s)",
                [session_key, data, "2999-01-01 00:00:00"],
            )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    [secret] = raw("hosts_host", "secret")
    [seed] = raw("access_login_authenticatorapp", "key")
    assert secret.startswith("fernet:") and seed.startswith("fernet:") and SEED not in seed
    assert raw("otp_totp_totpdevice", "key") == []  # nothing left in django-otp's table
    assert Host.objects.get(name="h").secret == SECRET
    assert AuthenticatorApp.objects.get(user=user).key == SEED
    assert raw("django_session", "session_key") != [session_key]
    signed_in = Client()
    signed_in.cookies["sessionid"] = session_key  # its user stays signed in (and, having a
    response = signed_in.get("/")  # second factor, is asked for the code: not for the password)
    assert response.status_code == 302 and response["Location"].startswith("/login/code/")


# -- the data directory ----------------------------------------------------------------------------
def test_a_data_directory_left_readable_is_fixed_and_said(tmp_path: Path) -> None:
    data = tmp_path / "var"
    (data / "agent").mkdir(parents=True)
    (data / "domus.sqlite3").write_text("x")
    for path, mode in ((data, 0o755), (data / "agent", 0o755), (data / "domus.sqlite3", 0o644)):
        path.chmod(mode)
    said: list[str] = []
    fixed = private_dir_ensure(data, log=said.append)
    assert set(fixed) == {data, data / "agent", data / "domus.sqlite3"}
    assert f"{data / 'domus.sqlite3'} was readable by others (mode 0644); it is now 0600" in said
    assert stat.S_IMODE((data / "agent").stat().st_mode) == 0o700
    assert private_dir_ensure(data, log=said.append) == []  # once fixed, nothing more to say


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "var"
    data.mkdir(mode=0o700)
    (data / "domus.sqlite3").write_text("x")
    os.chown(data / "domus.sqlite3", 65534, 65534)
    with pytest.raises(DataDirUnsafe, match="belongs to uid 65534"):
        private_dir_ensure(data, log=lambda line: None)


class Launcher:
    """`make run`'s launcher (console.launcher) on a data directory of its own, with the libvirt
    test driver (no daemon, no guest)."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "var"
        self.log = tmp_path / "launcher.log"  # outside the data directory
        self.env = {
            **os.environ,
            "DOMUS_DATA_DIR": str(self.data_dir),
            "PORT": str(_free_port()),
            "DOMUS_AGENT_PORT": str(_free_port()),
            "DOMUS_LIBVIRT_URI": "test:///default",
            "DOMUS_ACCEL": "tcg",
            "DOMUS_ADMIN_PASSWORD": "admin-pass-123",
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("REDIS_URL", "DATABASE_URL", "DOMUS_ENCRYPTION_KEYS", "DOMUS_ENCRYPTION_KEY_FILE"):
            self.env.pop(name, None)  # the embedded default: everything in the data directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> str:
        """Start it; what it said until the console was ready."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "console.launcher"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while b"console ready" not in (said := self.log.read_bytes()[offset:]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the launcher did not start:\n{said.decode(errors='replace')[-4000:]}")
            time.sleep(0.2)
        return said.decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    running = Launcher(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def modes_under(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `root` (itself included): relative path -> (kind, permission bits)."""
    found = {}
    for path in [root, *root.rglob("*")]:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # gone meanwhile (the supervisor's state file is replaced atomically)
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "socket" if stat.S_ISSOCK(info.st_mode) else "file"
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode))
    return found


def assert_private(root: Path) -> dict[str, tuple[str, int]]:
    found = modes_under(root)
    wrong = {
        name: f"{kind} {mode:04o}"
        for name, (kind, mode) in found.items()
        if mode != {"dir": 0o700, "socket": 0o600, "file": 0o600}[kind]
    }
    assert not wrong, f"not private: {wrong}"
    return found


def test_make_run_keeps_its_data_directory_private_across_a_restart(launcher: Launcher) -> None:
    # What an older version left: a 0755 data directory with a 0644 secret in it.
    launcher.data_dir.mkdir(mode=0o755)
    launcher.data_dir.chmod(0o755)
    (launcher.data_dir / "agent.secret").write_text("an-agent-secret-from-before-" + "x" * 16)
    (launcher.data_dir / "agent.secret").chmod(0o644)

    said = launcher.start()
    assert f"{launcher.data_dir} was readable by others (mode 0755); it is now 0700" in said
    assert f"{launcher.data_dir / 'agent.secret'} was readable by others (mode 0644); it is now 0600" in said
    found = assert_private(launcher.data_dir)
    for name in ("domus.sqlite3", "domus.sqlite3-wal", "secret_key", "encryption.key", "redis.sock"):
        assert name in found, f"{name} missing: {sorted(found)}"
    assert found["redis.sock"][0] == "socket"
    launcher.stop()
    assert_private(launcher.data_dir)

    # The database as an older version left it; the restart fixes it, and its WAL follows.
    (launcher.data_dir / "domus.sqlite3").chmod(0o644)
    said = launcher.start()
    assert f"{launcher.data_dir / 'domus.sqlite3'} was readable by others (mode 0644); it is now 0600" in said
    assert said.count("was readable by others") == 1
    found = assert_private(launcher.data_dir)
    assert "domus.sqlite3-wal" in found and "redis.sock" in found
