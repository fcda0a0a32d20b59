"""cloud-init NoCloud seed ISOs: the spec's validation, the documents, and the ISO read back."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import SecretStr, ValidationError

from agent.cloudinit import (
    MAX_SSH_KEYS,
    CloudInitSpec,
    build_seed_iso,
    render_meta_data,
    render_user_data,
    sha512_crypt,
)
from tests.agent.conftest import REPO


def openssh_key(kind: str = "ed25519", comment: str = "ana@laptop") -> str:
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{line.decode()} {comment}" if comment else line.decode()


def spec(**fields: object) -> CloudInitSpec:
    return CloudInitSpec.model_validate({"hostname": "web-1", "instance_id": "iid-1"} | fields)


def read_iso(data: bytes) -> tuple[str, dict[str, bytes]]:
    """(volume label, {name: content}) of an ISO, through Rock Ridge and Joliet both."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        assert iso.has_rock_ridge() and iso.has_joliet()
        label = iso.pvd.volume_identifier.decode().rstrip()
        files: dict[str, bytes] = {}
        for name in ("user-data", "meta-data"):
            via_rr, via_joliet = io.BytesIO(), io.BytesIO()
            iso.get_file_from_iso_fp(via_rr, rr_path=f"/{name}")
            iso.get_file_from_iso_fp(via_joliet, joliet_path=f"/{name}")
            assert via_rr.getvalue() == via_joliet.getvalue()
            files[name] = via_rr.getvalue()
        names = sorted(
            child.rock_ridge.name().decode()
            for child in iso.list_children(rr_path="/")
            if child.rock_ridge and not child.is_dot() and not child.is_dotdot()
        )
        assert names == ["meta-data", "user-data"], names
    finally:
        iso.close()
    return label, files


# --- SHA-512-crypt --------------------------------------------------------------------------------

# The reference vectors of the algorithm's specification (Drepper, "Unix crypt using SHA-256 and
# SHA-512"), with the input salt (truncated to 16 characters) and rounds.
SPEC_VECTORS = [
    (
        "Hello world!",
        "saltstring",
        5000,
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "Hello world!",
        "saltstringsaltstring",
        10000,
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "anotherlongsaltstring",
        1400,
        "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
    ),
    (
        "we have a short salt string but not a short password",
        "short",
        77777,
        "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0",
    ),
    (
        "a short string",
        "asaltof16chars..",
        123456,
        "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1",
    ),
    (
        "the minimum number is still observed",
        "roundstoolow",
        10,
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
]


@pytest.mark.parametrize(("password", "salt", "rounds", "expected"), SPEC_VECTORS)
def test_sha512_crypt_matches_the_reference_vectors(
    password: str, salt: str, rounds: int, expected: str
) -> None:
    assert sha512_crypt(password, salt=salt, rounds=rounds) == expected


def test_sha512_crypt_agrees_with_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary to compare with")
    for password in ("pässwörd ✓", "x", "a" * 200):
        reference = (
            subprocess.run(
                ["openssl", "passwd", "-6", "-salt", "Qx7.abc/DEF01234", "-stdin"],
                input=password.encode(),
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        assert sha512_crypt(password, salt="Qx7.abc/DEF01234", rounds=5000) == reference


def test_sha512_crypt_salts_randomly() -> None:
    first, second = sha512_crypt("same"), sha512_crypt("same")
    assert first != second and first.startswith("$6$rounds=100000$")
    salt = first.split("$")[3]
    assert sha512_crypt("same", salt=salt) == first


# --- the spec ---------------------------------------------------------------------------------


def test_a_plain_password_is_kept_only_as_its_hash() -> None:
    made = spec(password="correct horse", user="ana")
    assert made.password is None and made.password_hash is not None
    _, _, rounds, salt, _ = made.password_hash.split("$")
    assert (
        sha512_crypt("correct horse", salt=salt, rounds=int(rounds.removeprefix("rounds=")))
        == made.password_hash
    )
    for text in (repr(made), made.model_dump_json(), render_user_data(made)):
        assert "correct horse" not in text
    assert b"correct horse" not in build_seed_iso(made)
    # The wire form round-trips (the hash travels, the password never does).
    again = CloudInitSpec.model_validate_json(made.model_dump_json())
    assert again == made
    assert "password" not in json.loads(made.model_dump_json())
    assert spec(password=SecretStr("correct horse")).password_hash is not None


def test_password_or_hash_not_both_and_hash_must_be_sha512_crypt() -> None:
    good_hash = sha512_crypt("pw", rounds=5000)
    assert spec(password_hash=good_hash).password_hash == good_hash
    with pytest.raises(ValidationError, match="either password or password_hash"):
        spec(password="pw", password_hash=good_hash)
    for bad in ("$1$abc$def", "plain", good_hash + "\n", good_hash + "x", "$6$salt$" + "a" * 85):
        with pytest.raises(ValidationError, match="SHA-512-crypt"):
            spec(password_hash=bad)
    for bad_password in ("", "a\x00b", "x" * 1025):
        with pytest.raises(ValidationError, match="password must be"):
            spec(password=bad_password)


@pytest.mark.parametrize(
    "hostname",
    [
        "",
        "web-1\n#cloud-config",
        "web\nruncmd: [reboot]",
        "evil: true",
        "a b",
        "-web",
        "web-",
        "a..b",
        "web.",
        "x" * 64,
        ".".join(["a" * 63] * 3 + ["a" * 62]),  # 254 characters, every label fine
        "10.0.0.1",
        "{a: 1}",
        "*alias",
        "wëb",
        "web_1",
    ],
)
def test_hostile_hostnames_are_refused(hostname: str) -> None:
    with pytest.raises(ValidationError, match="hostname"):
        spec(hostname=hostname)


@pytest.mark.parametrize(
    "hostname",
    ["web-1", "WEB1", "a", "1st", "db-02.prod.example.org", "x" * 63, ".".join(["a" * 63] * 3 + ["a" * 61])],
)
def test_rfc1123_hostnames_pass(hostname: str) -> None:
    assert spec(hostname=hostname).hostname == hostname


@pytest.mark.parametrize(
    "user",
    [
        "",
        "root",
        "daemon",
        "Ana",
        "1ana",
        "a" * 33,
        "ana\n#cloud-config",
        "ana: x",
        "a b",
        "ana$",
        "-ana",
        "ä",
    ],
)
def test_hostile_or_system_user_names_are_refused(user: str) -> None:
    with pytest.raises(ValidationError, match="user"):
        spec(user=user)


@pytest.mark.parametrize("user", ["domus", "ana", "_svc", "web-admin", "a" * 32])
def test_posix_user_names_pass(user: str) -> None:
    assert spec(user=user).user == user


def test_ssh_keys_must_be_real_openssh_public_keys() -> None:
    keys = [openssh_key("ed25519"), openssh_key("rsa", comment=""), openssh_key("ecdsa")]
    assert spec(ssh_authorized_keys=[*keys[:2], keys[2] + "\n"]).ssh_authorized_keys == keys  # pasted newline
    key_type, blob, _ = keys[0].split(" ", 2)
    rsa_blob = keys[1].split(" ")[1]
    refused = {
        "two keys in one": f"{keys[0]}\n{keys[1]}",
        "a cloud-config line": f"{keys[0]}\n#cloud-config",
        "options": f'command="rm -rf /" {keys[0]}',
        "wrong type for the blob": f"ssh-rsa {blob} x",
        "type prefix only": "ssh-ed25519",
        "unknown type": f"ssh-foo {blob}",
        "dsa": f"ssh-dss {rsa_blob}",
        "bad base64": f"{key_type} AAAA!!!!",
        "truncated blob": f"{key_type} AAAAC3Nz",
        "control character in comment": f"{key_type} {blob} ana\x1b[2J",
        "non-ASCII comment": f"{key_type} {blob} anä",
        "huge": f"{key_type} {blob} {'x' * 9000}",
        "empty": "",
    }
    for why, line in refused.items():
        with pytest.raises(ValidationError, match="ssh_authorized_keys") as caught:
            spec(ssh_authorized_keys=[keys[0], line])
        assert "key 2" in str(caught.value), why


def test_huge_key_lists_are_refused() -> None:
    key = openssh_key()
    assert len(spec(ssh_authorized_keys=[key] * MAX_SSH_KEYS).ssh_authorized_keys) == MAX_SSH_KEYS
    with pytest.raises(ValidationError, match="ssh_authorized_keys"):
        spec(ssh_authorized_keys=[key] * (MAX_SSH_KEYS + 1))
    with pytest.raises(ValidationError, match="ssh_authorized_keys"):
        spec(ssh_authorized_keys=[key] * 100_000)


@pytest.mark.parametrize("instance_id", ["", "iid\nx", "a b", "-x", "x" * 129, "iid: 2"])
def test_hostile_instance_ids_are_refused(instance_id: str) -> None:
    with pytest.raises(ValidationError, match="instance_id"):
        spec(instance_id=instance_id)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="runcmd"):
        spec(runcmd=["reboot"])


# --- the documents --------------------------------------------------------------------------------


def test_yaml_metacharacters_in_a_key_comment_are_encoded_not_interpreted() -> None:
    """A key comment is free printable text: YAML syntax in it must stay text."""
    comment = "me@host: {evil: 1} # not a comment & *ref !!python/object:os.system \"q\" 's' |>"
    key = openssh_key(comment=comment)
    made = spec(ssh_authorized_keys=[key], password="pw")
    user_data = render_user_data(made)
    assert user_data.startswith("#cloud-config\n")
    assert user_data.count("#cloud-config") == 1
    parsed = yaml.safe_load(user_data)
    assert parsed == {
        "user": {
            "name": "domus",
            "lock_passwd": False,
            "passwd": made.password_hash,
            "ssh_authorized_keys": [key],
        },
        "ssh_pwauth": False,  # a key is given: no password logins over SSH
    }
    assert yaml.safe_load(render_meta_data(made)) == {"instance-id": "iid-1", "local-hostname": "web-1"}


def test_a_password_only_user_may_log_in_over_ssh_and_a_keyless_passwordless_one_is_locked() -> None:
    assert yaml.safe_load(render_user_data(spec(password="pw")))["ssh_pwauth"] is True
    locked = yaml.safe_load(render_user_data(spec()))
    assert locked == {"user": {"name": "domus", "lock_passwd": True}, "ssh_pwauth": False}


# --- the ISO ----------------------------------------------------------------------------------------


def test_seed_iso_reads_back_with_label_and_both_files() -> None:
    made = spec(hostname="db-02.example.org", user="ana", password="pw", ssh_authorized_keys=[openssh_key()])
    label, files = read_iso(build_seed_iso(made))
    assert label == "cidata"
    assert files["user-data"].decode() == render_user_data(made)
    assert files["meta-data"].decode() == render_meta_data(made)
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "iid-1",
        "local-hostname": "db-02.example.org",
    }
    assert yaml.safe_load(files["user-data"])["user"]["name"] == "ana"


def test_seed_iso_label_with_system_tools(tmp_path: Path) -> None:
    """The kernel-side view: blkid (util-linux) or isoinfo see the label, when installed."""
    path = tmp_path / "seed.iso"
    path.write_bytes(build_seed_iso(spec()))
    checked = False
    if shutil.which("blkid"):
        out = subprocess.run(
            ["blkid", "-o", "export", str(path)], capture_output=True, text=True, check=True
        ).stdout
        assert "LABEL=cidata" in out.splitlines() and "TYPE=iso9660" in out.splitlines(), out
        checked = True
    if shutil.which("isoinfo"):
        out = subprocess.run(
            ["isoinfo", "-d", "-i", str(path)], capture_output=True, text=True, check=True
        ).stdout
        assert "Volume id: cidata" in out, out
        assert "Rock Ridge signatures version 1 found" in out and "Joliet" in out, out
        checked = True
    if not checked:
        pytest.skip("neither blkid nor isoinfo is installed")


def test_pycdlib_is_imported_only_when_an_iso_is_built() -> None:
    """The agent imports this module at start-up; the ISO writer must not cost it memory."""
    code = (
        "import sys, agent.cloudinit as c; before = 'pycdlib' in sys.modules; "
        "c.build_seed_iso(c.CloudInitSpec(hostname='h', instance_id='i')); "
        "print(before, 'pycdlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "True"]
