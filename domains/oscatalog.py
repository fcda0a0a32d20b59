"""The OS catalog: the wizard's operating system choices and the defaults each one implies.

The data is `domains/data/oscatalog.json`, shipped with the package. Its figures (memory, disk,
minimums) come from libosinfo's osinfo-db, the database virt-manager and virt-install use: the
`<resources>` of `data/os/<vendor>/<os>.xml.in` (recommended RAM and storage, minimum RAM), for
x86_64 or "all" arches. Each entry names the osinfo-db short-id it was taken from
(`osinfo_id`), and its note says where Domus chose a value osinfo-db does not give. The file is
validated as it is loaded: an unknown key, a bad value or an inconsistent entry is an
`OsCatalogError` naming the entry and the field.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CATALOG_FILE = "data/oscatalog.json"
DEFAULT_OS_ID = "generic"

Family = Literal["linux", "windows", "bsd", "other"]
DiskBus = Literal["virtio", "sata", "ide", "scsi"]
NicModel = Literal["virtio", "e1000", "e1000e", "rtl8139"]
Clock = Literal["utc", "localtime"]
Firmware = Literal["bios", "efi"]


class OsCatalogError(ValueError):
    """The catalog file is missing, not JSON, or not a valid catalog."""


@dataclass(frozen=True)
class OsVariant:
    """One operating system version and its sensible defaults for a new domain."""

    id: str
    osinfo_id: str | None  # the libosinfo short-id the figures come from, if any
    label: str
    family: Family
    disk_bus: DiskBus
    nic_model: NicModel
    memory_mib: int  # recommended
    min_memory_mib: int
    vcpus: int
    disk_gib: int
    clock: Clock
    firmware: Firmware
    tpm: bool  # the OS requires a TPM (Windows 11)
    pv_capable: bool  # a Xen PV or PVH guest of this OS is plausible
    virtio_needs_drivers: bool  # virtio devices need a driver disk (virtio-win) during install
    note: str


# --- the file's shape (strict: unknown keys and bad values are errors) ---------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Defaults(_Strict):
    disk_bus: DiskBus
    nic_model: NicModel
    memory_mib: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)]
    min_memory_mib: Annotated[int, Field(ge=16)]
    vcpus: Annotated[int, Field(ge=1, le=256)]
    disk_gib: Annotated[int, Field(ge=1, le=65536)]
    clock: Clock
    firmware: Firmware
    tpm: bool


class _Entry(_Strict):
    # The same pattern as DomainSpec.os in agent/protocol/: an entry's id goes into the spec.
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.+-]{0,63}$")]
    osinfo_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.+-]{0,63}$")] | None
    label: Annotated[str, Field(min_length=1, max_length=80)]
    family: Family
    defaults: _Defaults
    pv_capable: bool
    virtio_needs_drivers: bool
    note: Annotated[str, Field(max_length=1000)] = ""

    @model_validator(mode="after")
    def _consistent(self) -> _Entry:
        d = self.defaults
        if d.min_memory_mib > d.memory_mib:
            raise ValueError(f"min_memory_mib ({d.min_memory_mib}) is above memory_mib ({d.memory_mib})")
        if d.tpm and d.firmware != "efi":
            raise ValueError("an OS that needs a TPM needs efi firmware")
        if self.virtio_needs_drivers and "virtio" in (d.disk_bus, d.nic_model):
            raise ValueError(
                "virtio needs drivers on this OS: its default disk bus and NIC must not be virtio"
            )
        return self


class _FamilyEntry(_Strict):
    id: Family
    label: Annotated[str, Field(min_length=1, max_length=40)]


class _CatalogFile(_Strict):
    comment: list[str] = []
    families: Annotated[list[_FamilyEntry], Field(min_length=1)]
    variants: Annotated[list[_Entry], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> _CatalogFile:
        family_ids: list[str] = [f.id for f in self.families]
        ids = [v.id for v in self.variants]
        for seen in (family_ids, ids):
            duplicates = sorted({x for x in seen if seen.count(x) > 1})
            if duplicates:
                raise ValueError(f"duplicate ids: {', '.join(duplicates)}")
        for entry in self.variants:
            if entry.family not in family_ids:
                raise ValueError(f"{entry.id}: family {entry.family!r} is not listed in families")
        if DEFAULT_OS_ID not in ids:
            raise ValueError(f"the default entry {DEFAULT_OS_ID!r} is missing")
        return self


@dataclass(frozen=True)
class OsCatalog:
    families: tuple[tuple[str, str], ...]
    variants: tuple[OsVariant, ...]

    def get(self, os_id: str) -> OsVariant:
        for variant in self.variants:
            if variant.id == os_id:
                return variant
        ids = [v.id for v in self.variants]
        close = difflib.get_close_matches(os_id, ids, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(ids)}"
        raise KeyError(f"unknown operating system {os_id!r}; {hint}")


def _variant(entry: _Entry) -> OsVariant:
    d = entry.defaults
    return OsVariant(
        id=entry.id,
        osinfo_id=entry.osinfo_id,
        label=entry.label,
        family=entry.family,
        disk_bus=d.disk_bus,
        nic_model=d.nic_model,
        memory_mib=d.memory_mib,
        min_memory_mib=d.min_memory_mib,
        vcpus=d.vcpus,
        disk_gib=d.disk_gib,
        clock=d.clock,
        firmware=d.firmware,
        tpm=d.tpm,
        pv_capable=entry.pv_capable,
        virtio_needs_drivers=entry.virtio_needs_drivers,
        note=entry.note,
    )


def _where(loc: tuple[int | str, ...], raw: object) -> str:
    """'variants[3] (win10).defaults.disk_bus' for a pydantic error location."""
    parts: list[str] = []
    node = raw
    for key in loc:
        if isinstance(key, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{key}]"]
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                parts[-1] += f" ({node['id']})"
        else:
            parts.append(key)
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def load_catalog(path: Path | None = None) -> OsCatalog:
    """Read and validate a catalog file (the packaged one by default); OsCatalogError if bad."""
    source = resources.files("domains").joinpath(CATALOG_FILE) if path is None else path
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OsCatalogError(f"OS catalog {source}: cannot read it as JSON: {exc}") from exc
    try:
        parsed = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'], raw)}: {e['msg']}" for e in exc.errors())
        raise OsCatalogError(f"OS catalog {source} is invalid: {problems}") from exc
    return OsCatalog(
        families=tuple((f.id, f.label) for f in parsed.families),
        variants=tuple(_variant(entry) for entry in parsed.variants),
    )


@cache
def _catalog() -> OsCatalog:
    return load_catalog()


def os_variants() -> list[OsVariant]:
    """Every OS version in the catalog, in the file's order (grouped by family)."""
    return list(_catalog().variants)


def os_variant(os_id: str) -> OsVariant:
    """The catalog entry `os_id`; KeyError (its message names close ids) when there is none."""
    return _catalog().get(os_id)


def os_families() -> list[tuple[str, str]]:
    """(id, label) of each OS family, in display order."""
    return list(_catalog().families)
