"""The OS catalog: the shipped data is valid and sensible, lookups fail helpfully, and a broken
catalog file is refused with a message that names the entry and field."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from agent.protocol import DomainSpec
from domains.oscatalog import (
    CATALOG_FILE,
    DEFAULT_OS_ID,
    OsCatalogError,
    load_catalog,
    os_families,
    os_variant,
    os_variants,
)
from tests.agent.conftest import REPO

RAW: dict[str, Any] = json.loads(resources.files("domains").joinpath(CATALOG_FILE).read_text())


def test_every_shipped_entry_is_valid_and_ids_are_unique() -> None:
    catalog = load_catalog()  # validates the packaged file (raises on any problem)
    assert list(catalog.variants) == os_variants()
    ids = [v.id for v in os_variants()]
    assert len(ids) == len(set(ids)) == len(RAW["variants"])
    os_pattern = DomainSpec.model_json_schema()["properties"]["os"]["pattern"]
    families = {family for family, _ in os_families()}
    assert families == {"linux", "windows", "bsd", "other"}
    for variant in os_variants():
        assert re.fullmatch(os_pattern, variant.id), variant.id  # fits DomainSpec.os
        assert variant.family in families
        assert variant.min_memory_mib <= variant.memory_mib
        assert variant.vcpus >= 1 and variant.disk_gib >= 1
        assert variant.label and variant.note, variant.id
    assert os_variant(DEFAULT_OS_ID).family == "other"


def test_every_family_has_versions() -> None:
    by_family = {family: [v.id for v in os_variants() if v.family == family] for family, _ in os_families()}
    assert {"debian12", "debian13", "ubuntu24.04", "rhel9", "almalinux9", "rocky9", "centos5"} <= set(
        by_family["linux"]
    )
    assert {"winxp", "win7", "win10", "win11", "win2k19", "win2k22", "win2k25"} <= set(by_family["windows"])
    assert {"freebsd13", "freebsd14", "openbsd7", "netbsd10.0"} <= set(by_family["bsd"])
    assert by_family["other"] == ["generic"]


def test_windows_defaults_avoid_virtio_and_keep_local_time() -> None:
    windows = [v for v in os_variants() if v.family == "windows"]
    assert windows
    for v in windows:
        assert v.disk_bus != "virtio" and v.nic_model != "virtio", v.id
        assert v.clock == "localtime", v.id
        assert v.virtio_needs_drivers and "virtio-win" in v.note, v.id
        assert not v.pv_capable, v.id
    for os_id in ("win10", "win11", "win2k22"):
        assert (os_variant(os_id).disk_bus, os_variant(os_id).nic_model) == ("sata", "e1000e")
    win11 = os_variant("win11")
    assert win11.firmware == "efi" and win11.tpm and "TPM" in win11.note
    assert (os_variant("winxp").disk_bus, os_variant("winxp").nic_model) == ("ide", "rtl8139")


def test_other_families_keep_utc_and_linux_can_be_paravirtualised() -> None:
    for v in os_variants():
        if v.family != "windows":
            assert v.clock == "utc", v.id
            assert not v.virtio_needs_drivers and not v.tpm and v.firmware == "bios", v.id
        if v.family == "linux":
            assert v.pv_capable, v.id
    assert os_variant("netbsd10.0").pv_capable and not os_variant("openbsd7").pv_capable
    centos5 = os_variant("centos5")
    assert (centos5.disk_bus, centos5.nic_model) == ("ide", "e1000")
    assert os_variant("debian12").disk_bus == "virtio" and os_variant("debian12").nic_model == "virtio"


def test_values_follow_osinfo_db() -> None:
    """Spot checks against osinfo-db's <resources> (recommended RAM and storage, minimum RAM)."""
    expected = {
        "debian12": (2048, 1024, 20),
        "ubuntu24.04": (4096, 3072, 25),
        "rhel9": (1536, 1536, 20),
        "fedora42": (4096, 2048, 20),
        "alpinelinux3.23": (768, 128, 4),
        "win2k22": (2048, 512, 40),
        "win2k25": (4096, 512, 40),
    }
    for os_id, (memory, minimum, disk) in expected.items():
        v = os_variant(os_id)
        assert (v.memory_mib, v.min_memory_mib, v.disk_gib) == (memory, minimum, disk), os_id
    assert os_variant("rhel9").osinfo_id == "rhel9-unknown"
    assert os_variant(DEFAULT_OS_ID).osinfo_id is None


def test_unknown_id_fails_with_close_ids() -> None:
    with pytest.raises(KeyError) as caught:
        os_variant("debain12")
    message = caught.value.args[0]
    assert "unknown operating system 'debain12'" in message and "debian12" in message
    with pytest.raises(KeyError) as caught:
        os_variant("haiku")
    assert "known: debian13, debian12" in caught.value.args[0] and "generic" in caught.value.args[0]


def test_lookups_return_copies() -> None:
    listed = os_variants()
    listed.clear()
    assert os_variants()
    families = os_families()
    families.append(("plan9", "Plan 9"))
    assert ("plan9", "Plan 9") not in os_families()


def test_the_catalog_ships_as_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["domains"]
    assert any(Path(CATALOG_FILE).match(pattern) for pattern in patterns), patterns
    assert (REPO / "domains" / CATALOG_FILE).is_file()


# --- broken copies ------------------------------------------------------------------------------


def _entry(raw: dict[str, Any], os_id: str) -> dict[str, Any]:
    return next(v for v in raw["variants"] if v["id"] == os_id)


def _set(os_id: str, key: str, value: Any, *, in_defaults: bool = True) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        entry = _entry(raw, os_id)
        (entry["defaults"] if in_defaults else entry)[key] = value

    return mutate


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "unknown key": (
        _set("debian12", "colour", "red", in_defaults=False),
        ["variants[1] (debian12).colour", "Extra inputs are not permitted"],
    ),
    "unknown defaults key": (_set("win10", "sound", "ac97"), ["(win10).defaults.sound"]),
    "bad disk bus": (_set("win10", "disk_bus", "floppy"), ["(win10).defaults.disk_bus", "'sata'"]),
    "bad nic model": (_set("debian12", "nic_model", "ne2k"), ["defaults.nic_model"]),
    "bad clock": (_set("win11", "clock", "tai"), ["defaults.clock"]),
    "memory as text": (_set("debian12", "memory_mib", "2048"), ["defaults.memory_mib", "integer"]),
    "zero vcpus": (_set("debian12", "vcpus", 0), ["defaults.vcpus", "greater than or equal to 1"]),
    "missing field": (
        lambda raw: _entry(raw, "debian12")["defaults"].pop("disk_gib"),
        ["defaults.disk_gib", "Field required"],
    ),
    "minimum above recommended": (_set("debian12", "min_memory_mib", 4096), ["(debian12)", "min_memory_mib"]),
    "tpm without efi": (_set("win11", "firmware", "bios"), ["(win11)", "TPM", "efi"]),
    "windows defaulting to virtio": (_set("win10", "disk_bus", "virtio"), ["(win10)", "must not be virtio"]),
    "duplicate id": (
        lambda raw: raw["variants"].append(copy.deepcopy(_entry(raw, "debian12"))),
        ["duplicate ids: debian12"],
    ),
    "unlisted family": (
        lambda raw: raw.__setitem__("families", [f for f in raw["families"] if f["id"] != "bsd"]),
        ["freebsd14: family 'bsd' is not listed"],
    ),
    "no default entry": (
        lambda raw: raw.__setitem__("variants", [v for v in raw["variants"] if v["id"] != "generic"]),
        ["'generic' is missing"],
    ),
    "id unfit for a spec": (_set("debian12", "id", "Debian 12", in_defaults=False), ["(Debian 12).id"]),
    "unknown top-level key": (lambda raw: raw.__setitem__("version", 2), ["version", "Extra inputs"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_catalog_is_refused_clearly(case: str, tmp_path: Path) -> None:
    mutate, expected = BROKEN[case]
    raw = copy.deepcopy(RAW)
    mutate(raw)
    path = tmp_path / "oscatalog.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(OsCatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert message.startswith(f"OS catalog {path} is invalid: "), message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_an_intact_copy_loads(tmp_path: Path) -> None:
    path = tmp_path / "oscatalog.json"
    path.write_text(json.dumps(RAW))
    assert load_catalog(path) == load_catalog()


def test_unreadable_catalogs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "oscatalog.json"
    path.write_text('{"families": [')
    with pytest.raises(OsCatalogError, match="cannot read it as JSON"):
        load_catalog(path)
    with pytest.raises(OsCatalogError, match="cannot read it as JSON"):
        load_catalog(tmp_path / "missing.json")
