"""Turning a create request into a valid `DomainSpec` for one host, with errors that name fields.

The request is checked in layers: its shape (units, unknown fields), the `DomainSpec` model
(names, paths, URLs, MACs), then what this host can do and has room for (modes, CPUs, memory,
pools and their free space, networks, bridges). Defaults the user left out come from the OS
catalog (disk bus, NIC model, clock) so that the spec sent to the agent is explicit.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import secrets
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from agent.protocol import DomainSpec, HostFacts, HostResources, NetworkInstall
from console.errors import InvalidInput
from domains.oscatalog import OsVariant, os_variant
from hosts.models import Host

SPEC_FIELDS = {
    "name",
    "mode",
    "os",
    "vcpus",
    "memory_mib",
    "disks",
    "nics",
    "boot",
    "graphics",
    "serial",
    "clock",
    "autostart",
}
GIB = 1024**3
_UNITS_MIB = {
    "": 1,
    "m": 1,
    "mb": 1,
    "mib": 1,
    "g": 1024,
    "gb": 1024,
    "gib": 1024,
    "t": 1024**2,
    "tib": 1024**2,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
# Installer, image and boot paths the user names; checked here against the host's pools and
# again on the agent (which resolves symlinks).
_PATH_FIELDS = (("boot", "iso"), ("boot", "kernel"), ("boot", "initrd"))


class _Errors:
    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = defaultdict(list)

    def add(self, field: str, message: str) -> None:
        self.fields[field].append(message)

    def raise_if_any(self, detail: str) -> None:
        if self.fields:
            raise InvalidInput(detail, fields=dict(self.fields))


def parse_size_mib(value: Any, *, default_unit: str) -> Any:
    """A size as a number in `default_unit` ("mib" or "gib") or a string with a unit
    ("512 MiB", "20 GiB", "1.5G"); returns MiB, or the value unchanged when it is not a size
    (so the model's validation names the field)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value * _UNITS_MIB[default_unit]
    if isinstance(value, str) and (match := _SIZE_RE.match(value)):
        unit = match.group(2).lower() or default_unit
        if unit in _UNITS_MIB:
            return float(match.group(1)) * _UNITS_MIB[unit]
    return value


def _field_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) > 1 and loc[0] == "boot" and loc[1] in _BOOT_TAGS:
            del loc[1]  # the union's tag: boot.iso.iso is the field boot.iso
        message = err["msg"].removeprefix("Value error, ")
        field = ".".join(str(p) for p in (*prefix, *loc))
        if not field and (match := re.match(r"^([a-z_.0-9]+): (.*)$", message, re.S)):
            field, message = match.group(1), match.group(2)  # a model-level check naming its field
        errors.setdefault(field or "non_field_errors", []).append(message)
    return errors


_BOOT_TAGS = {"iso", "cdrom", "url", "pxe", "kernel", "disk", "bootloader"}


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    """Units to numbers: memory in MiB, disk sizes in GiB."""
    body = dict(data)
    if "memory_mib" in body:
        mib = parse_size_mib(body["memory_mib"], default_unit="mib")
        body["memory_mib"] = int(mib) if isinstance(mib, float) and mib.is_integer() else mib
    disks = body.get("disks")
    if isinstance(disks, list):
        body["disks"] = [
            {**d, "size_gib": _gib(d["size_gib"])} if isinstance(d, dict) and "size_gib" in d else d
            for d in disks
        ]
    return body


def _gib(value: Any) -> Any:
    mib = parse_size_mib(value, default_unit="gib")
    return mib / 1024 if isinstance(mib, int | float) and not isinstance(mib, bool) else mib


def host_facts(host: Host) -> HostFacts | None:
    try:
        return HostFacts.model_validate(host.facts) if host.facts else None
    except ValidationError:
        return None


def vcpu_limit(facts: HostFacts | None) -> int | None:
    """The most vCPUs one domain may have on this host: its CPUs, and libvirt's own maximum."""
    if facts is None:
        return None
    caps = facts.capabilities
    limits = [v for v in (facts.cpus, caps.max_vcpus if caps else None) if v]
    return min(limits) if limits else None


def host_resources(host: Host) -> HostResources | None:
    """The host's pools, networks and bridges as last reported (None before it reported any)."""
    try:
        return HostResources.model_validate(host.resources) if host.resources else None
    except ValidationError:
        return None


def _confined_path(value: str, pool_paths: list[str]) -> str | None:
    """The problem with a path the user gave, or None when it lies inside one of the host's
    pools (a relative path is taken in the default pool, as the agent does)."""
    if "\x00" in value or ".." in value.split("/"):
        return "must not contain '..'"
    if not value.startswith("/"):
        return None
    normal = posixpath.normpath(value)
    if not any(normal.startswith(p.rstrip("/") + "/") for p in pool_paths):
        return f"must lie inside one of the host's storage pools ({', '.join(pool_paths)})"
    return None


def _random_mac(xen: bool) -> str:
    # Xen's OUI on Xen hosts, QEMU's locally administered prefix elsewhere (as virt-manager does).
    prefix = "00:16:3e" if xen else "52:54:00"
    tail = secrets.token_bytes(3)
    return prefix + "".join(f":{b:02x}" for b in (tail[0] & 0x7F, tail[1], tail[2]))


def _apply_defaults(body: dict[str, Any], variant: OsVariant, xen: bool) -> dict[str, Any]:
    body.setdefault("memory_mib", variant.memory_mib)
    body.setdefault("vcpus", variant.vcpus)
    body.setdefault("clock", variant.clock)
    for disk in body.get("disks") or []:
        if isinstance(disk, dict):
            disk.setdefault("bus", variant.disk_bus)
    for nic in body.get("nics") or []:
        if isinstance(nic, dict):
            nic.setdefault("model", variant.nic_model)
            if not nic.get("mac"):
                nic["mac"] = _random_mac(xen)
    return body


def _check_host(spec: DomainSpec, host: Host, facts: HostFacts | None, variant: OsVariant) -> None:
    errors = _Errors()
    if spec.mode != "hvm" and not variant.pv_capable:
        errors.add("mode", f"{variant.label} cannot run paravirtualised: choose full virtualisation (HVM)")
    resources = host_resources(host)
    _check_paths(spec, host, resources, errors)
    if facts is None:
        errors.raise_if_any("The spec does not fit this host.")
        return  # a host that never reported: the agent checks the rest
    caps = facts.capabilities
    if caps is not None and caps.modes:
        mode = next((m for m in caps.modes if m.mode == spec.mode), None)
        if mode is None or not mode.available:
            why = mode.note if mode is not None and mode.note else "not offered by this hypervisor"
            errors.add("mode", f"{spec.mode.upper()} is not available on {host.name}: {why}")
    limit = vcpu_limit(facts)
    if limit is not None and spec.vcpus > limit:
        errors.add("vcpus", f"at most {limit}: {host.name} has {facts.cpus} CPUs")
    if facts.memory_mib and spec.memory_mib > facts.memory_mib:
        errors.add("memory_mib", f"at most {facts.memory_mib} MiB: the memory of {host.name}")
    if spec.graphics and caps is not None and caps.graphics and "vnc" not in caps.graphics:
        errors.add("graphics", f"{host.name} offers no VNC graphics")
    if resources is not None:
        _check_storage(spec, host, resources, errors)
        _check_network(spec, host, resources, errors)
    if spec.boot.kind == "url" and not spec.disks:
        errors.add("disks", "a network install needs a disk to install onto")
    if isinstance(spec.boot, NetworkInstall) and (problem := install_url_problem(spec.boot.url)):
        errors.add("boot.url", problem)
    errors.raise_if_any("The spec does not fit this host.")


def install_url_problem(url: str) -> str | None:
    """Why the host's agent would refuse to fetch a network install from `url`, when that shows
    in the URL itself: a scheme it does not fetch, or an address that is the host itself or
    link-local. Only a cheap early answer: the agent checks every address a name resolves to,
    and its own addresses and refused ranges, which the console cannot know."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL: the agent fetches installer trees over HTTP only"
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return "must not name localhost: the host would fetch from itself, which the agent refuses"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: the agent resolves and checks it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, test in (
        ("a loopback", address.is_loopback),
        ("an unspecified", address.is_unspecified or address in ipaddress.ip_network("0.0.0.0/8")),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a reserved", address.is_reserved),
    ):
        if test:
            return f"{address} is {kind} address: the agent refuses to fetch from it"
    return None


def _check_storage(spec: DomainSpec, host: Host, resources: HostResources, errors: _Errors) -> None:
    pools = {p.name: p for p in resources.pools}
    wanted: dict[str, float] = defaultdict(float)
    for index, disk in enumerate(spec.disks):
        field = f"disks.{index}"
        if disk.existing is not None:
            continue
        pool = pools.get(disk.pool)
        if pool is None:
            known = ", ".join(sorted(pools)) or "none"
            errors.add(f"{field}.pool", f"{host.name} has no storage pool {disk.pool!r} (pools: {known})")
            continue
        if not pool.active:
            errors.add(f"{field}.pool", f"storage pool {disk.pool!r} is not active on {host.name}")
        if pool.type == "logical" and disk.format != "raw":
            errors.add(f"{field}.format", f"{disk.pool!r} is an LVM pool: its volumes are raw")
        wanted[disk.pool] += disk.size_gib or 0
    for name, gib in wanted.items():
        free = pools[name].available_bytes / GIB
        if gib > free:
            indexes = [i for i, d in enumerate(spec.disks) if d.pool == name and d.existing is None]
            errors.add(
                f"disks.{indexes[-1]}.size_gib",
                f"{gib:g} GiB asked in pool {name!r}, which has {free:.1f} GiB free",
            )


def _check_paths(spec: DomainSpec, host: Host, resources: HostResources | None, errors: _Errors) -> None:
    """Every path the user names must lie in one of the host's pools."""
    pools = resources.pools if resources is not None else []
    pool_paths = [p.path for p in pools if p.path] or [host.default_pool_path]
    for index, disk in enumerate(spec.disks):
        for key in ("existing", "backing"):
            value = getattr(disk, key)
            if value and (problem := _confined_path(value, pool_paths)):
                errors.add(f"disks.{index}.{key}", problem)
    if spec.boot.kind in ("iso", "kernel"):  # a network install's paths are inside its tree
        for section, key in _PATH_FIELDS:
            value = getattr(spec.boot, key, None)
            if value and (problem := _confined_path(value, pool_paths)):
                errors.add(f"{section}.{key}", problem)


def _check_network(spec: DomainSpec, host: Host, resources: HostResources, errors: _Errors) -> None:
    networks = {n.name: n for n in resources.networks}
    bridges = set(resources.bridges) | {n.bridge for n in resources.networks if n.bridge}
    macs: set[str] = set()
    for index, nic in enumerate(spec.nics):
        field = f"nics.{index}"
        if nic.source == "network":
            network = networks.get(nic.name)
            if network is None:
                known = ", ".join(sorted(networks)) or "none"
                errors.add(
                    f"{field}.name", f"{host.name} has no virtual network {nic.name!r} (networks: {known})"
                )
            elif not network.active:
                errors.add(
                    f"{field}.name",
                    f"virtual network {nic.name!r} is not running on {host.name}: start it (the wizard's "
                    "Start it, or the host page) or choose another",
                )
        elif nic.name not in bridges:
            known = ", ".join(sorted(bridges)) or "none"
            errors.add(f"{field}.name", f"{host.name} has no bridge {nic.name!r} (bridges: {known})")
        if nic.mac in macs:
            errors.add(f"{field}.mac", f"{nic.mac} is already used by another card of this domain")
        if nic.mac:
            macs.add(nic.mac)


def build_spec(data: dict[str, Any], host: Host, *, domain_uuid: uuid.UUID | None = None) -> DomainSpec:
    """A valid, explicit spec for `host` from a create request, or InvalidInput naming fields."""
    if not isinstance(data, dict):
        raise InvalidInput("The spec must be an object.")
    unknown = set(data) - SPEC_FIELDS
    if unknown:
        raise InvalidInput("Unknown fields.", fields={name: ["unknown field"] for name in sorted(unknown)})
    if "boot" not in data:
        raise InvalidInput(
            "Missing boot.",
            fields={
                "boot": ["required: how the domain boots or installs, e.g. {'kind': 'iso', 'iso': path}"]
            },
        )
    os_id = data.get("os", "generic")
    try:
        variant = os_variant(os_id if isinstance(os_id, str) else "")
    except KeyError as exc:
        raise InvalidInput("Unknown operating system.", fields={"os": [str(exc.args[0])]}) from exc
    facts = host_facts(host)
    xen = bool(facts and facts.hypervisor == "xen")
    body = _apply_defaults(_normalise(data), variant, xen)
    body["uuid"] = domain_uuid or uuid.uuid4()
    body["os"] = variant.id
    boot = body.get("boot")
    if isinstance(boot, dict) and isinstance(boot.get("cloud_init"), dict):
        seed = dict(boot["cloud_init"])
        seed.setdefault("instance_id", str(body["uuid"]))
        if not seed.get("hostname") and isinstance(body.get("name"), str):
            seed["hostname"] = re.sub(r"[^a-z0-9-]", "-", body["name"].lower()).strip("-")[:63] or "domus"
        body["boot"] = {**boot, "cloud_init": seed}
    try:
        spec = DomainSpec.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput("Invalid domain spec.", fields=_field_errors(exc)) from exc
    _check_host(spec, host, facts, variant)
    return spec
