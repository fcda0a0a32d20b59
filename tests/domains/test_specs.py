"""A create request against what a host can do: units, OS defaults, host limits, hostile input."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from agent.protocol import DomainSpec
from console.errors import InvalidInput
from domains.specs import build_spec, parse_size_mib
from domains.wizard import preview_xml
from hosts.models import Host

pytestmark = pytest.mark.django_db

POOL = "/var/lib/libvirt/images"
GIB = 1024**3


def _facts(hypervisor: str = "qemu", *, modes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "hostname": "kvm1",
        "uri": "qemu:///system",
        "hypervisor": hypervisor,
        "accel": "tcg" if hypervisor == "qemu" else hypervisor,
        "arch": "x86_64",
        "hvm_hardware_assisted": hypervisor != "qemu",
        "kvm_usable": False,
        "cpus": 4,
        "memory_mib": 8192,
        "free_memory_mib": 6000,
        "libvirt_version": "9.0.0",
        "agent_version": "1",
        "default_pool_path": POOL,
        "capabilities": {
            "hypervisor": hypervisor,
            "arch": "x86_64",
            "max_vcpus": 255,
            "graphics": ["vnc", "spice"],
            "modes": modes
            or [
                {"mode": "hvm", "available": True, "accel": "software", "note": "software emulation: slow"},
                {"mode": "pv", "available": False, "note": "paravirtualisation needs a Xen host"},
                {"mode": "pvh", "available": False, "note": "PVH needs a Xen host"},
            ],
        },
        "resources": {
            "pools": [
                {"name": "default", "type": "dir", "active": True, "path": POOL, "available_bytes": 50 * GIB},
                {
                    "name": "vg0",
                    "type": "logical",
                    "active": True,
                    "path": "/dev/vg0",
                    "available_bytes": 100 * GIB,
                },
                {"name": "old", "type": "dir", "active": False, "path": "/srv/old", "available_bytes": 0},
            ],
            "networks": [
                {"name": "default", "active": True, "forward": "nat", "bridge": "virbr0"},
                {"name": "down", "active": False, "forward": "isolated"},
            ],
            "bridges": ["br0"],
        },
    }


@pytest.fixture
def kvm(db: None) -> Host:
    return Host.objects.create(
        name="kvm1", url="http://127.0.0.1:1", secret="x" * 32, state=Host.State.ONLINE, facts=_facts()
    )


@pytest.fixture
def xen(db: None) -> Host:
    modes = [
        {"mode": "hvm", "available": True, "accel": "hardware"},
        {"mode": "pv", "available": True, "accel": "paravirt"},
        {"mode": "pvh", "available": True, "accel": "paravirt"},
    ]
    return Host.objects.create(
        name="xen1",
        url="http://127.0.0.1:2",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts=_facts("xen", modes=modes),
    )


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "web1",
        "os": "debian12",
        "disks": [{"size_gib": "10 GiB"}],
        "nics": [{"source": "network", "name": "default"}],
        "boot": {"kind": "iso", "iso": f"{POOL}/debian.iso"},
    }
    data.update(overrides)
    return data


def errors_of(data: dict[str, Any], host: Host) -> dict[str, list[str]]:
    with pytest.raises(InvalidInput) as caught:
        build_spec(data, host)
    return caught.value.fields


def test_units_are_accepted() -> None:
    assert parse_size_mib("512 MiB", default_unit="mib") == 512
    assert parse_size_mib("2 GiB", default_unit="mib") == 2048
    assert parse_size_mib("1.5G", default_unit="gib") == 1536
    assert parse_size_mib(20, default_unit="gib") == 20 * 1024
    assert parse_size_mib("lots", default_unit="mib") == "lots"  # left for the model to name


def test_os_defaults_fill_what_was_left_out(kvm: Host) -> None:
    spec = build_spec(base(memory_mib="2 GiB"), kvm)
    assert spec.memory_mib == 2048
    assert spec.disks[0].size_gib == 10 and spec.disks[0].bus == "virtio"
    assert spec.nics[0].model == "virtio" and spec.nics[0].mac.startswith("52:54:00:")
    windows = build_spec(base(name="win", os="win10", memory_mib="4 GiB"), kvm)
    assert windows.disks[0].bus != "virtio" and windows.nics[0].model != "virtio"
    assert windows.clock == "localtime"


def test_generated_macs_follow_the_hypervisor(xen: Host) -> None:
    spec = build_spec(base(nics=[{"source": "bridge", "name": "br0"}]), xen)
    assert spec.nics[0].mac.startswith("00:16:3e:")


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"mode": "pv", "boot": {"kind": "kernel", "kernel": f"{POOL}/vmlinuz"}}, "mode", "needs a Xen host"),
        ({"vcpus": 5}, "vcpus", "at most 4"),
        ({"memory_mib": "9 GiB"}, "memory_mib", "at most 8192"),
        ({"memory_mib": 8}, "memory_mib", "greater than or equal to 16"),
        ({"disks": [{"size_gib": 60}]}, "disks.0.size_gib", "50.0 GiB free"),
        ({"disks": [{"size_gib": 30}, {"size_gib": 30}]}, "disks.1.size_gib", "60 GiB asked"),
        ({"disks": [{"size_gib": 1, "pool": "nope"}]}, "disks.0.pool", "no storage pool 'nope'"),
        ({"disks": [{"size_gib": 1, "pool": "old"}]}, "disks.0.pool", "not active"),
        ({"disks": [{"size_gib": 1, "pool": "vg0"}]}, "disks.0.format", "LVM pool"),
        ({"nics": [{"name": "nope"}]}, "nics.0.name", "no virtual network 'nope'"),
        ({"nics": [{"name": "down"}]}, "nics.0.name", "not running on"),
        ({"nics": [{"source": "bridge", "name": "br9"}]}, "nics.0.name", "no bridge 'br9'"),
        ({"nics": [{"mac": "01:00:5e:00:00:01"}]}, "nics.0.mac", "unicast"),
        (
            {"nics": [{"mac": "52:54:00:00:00:01"}, {"mac": "52:54:00:00:00:01"}]},
            "nics.1.mac",
            "already used",
        ),
        (
            {"boot": {"kind": "url", "url": "https://mirror/os/"}, "disks": []},
            "disks",
            "network install needs a disk",
        ),
        ({"boot": {"kind": "pxe"}, "nics": []}, "boot", "needs a network card"),
        ({"boot": {"kind": "bootloader"}}, "boot", "cannot start a HVM guest"),
        ({"os": "amigaos"}, "os", "amigaos"),
        ({"unknown": 1}, "unknown", "unknown field"),
    ],
)
def test_what_the_host_cannot_do_is_refused_by_field(
    kvm: Host, overrides: dict[str, Any], field: str, words: str
) -> None:
    errors = errors_of(base(**overrides), kvm)
    assert field in errors, errors
    assert any(words in message for message in errors[field]), errors[field]


def test_xen_takes_pv_and_pvh_but_not_for_windows(xen: Host) -> None:
    pv = build_spec(base(mode="pv", boot={"kind": "kernel", "kernel": f"{POOL}/vmlinuz"}), xen)
    assert pv.mode == "pv"
    pvh = build_spec(base(name="h", mode="pvh", boot={"kind": "kernel", "kernel": f"{POOL}/vmlinuz"}), xen)
    assert pvh.mode == "pvh"
    errors = errors_of(base(os="win10", mode="pv", boot={"kind": "kernel", "kernel": f"{POOL}/k"}), xen)
    assert "cannot run paravirtualised" in errors["mode"][0]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"boot": {"kind": "iso", "iso": f"{POOL}/../../etc/shadow"}}, "boot.iso"),
        ({"boot": {"kind": "iso", "iso": "/etc/shadow"}}, "boot.iso"),
        ({"boot": {"kind": "iso", "iso": "x\x00.iso"}}, "boot.iso"),
        ({"boot": {"kind": "kernel", "kernel": "../vmlinuz"}}, "boot.kernel"),
        ({"boot": {"kind": "cdrom", "device": "/dev/sda"}}, "boot.device"),
        ({"boot": {"kind": "url", "url": "file:///etc/passwd"}}, "boot.url"),
        ({"boot": {"kind": "url", "url": "javascript:alert(1)"}}, "boot.url"),
        ({"boot": {"kind": "url", "url": "http://mirror/os/\nHost: evil"}}, "boot.url"),
        ({"boot": {"kind": "url", "url": "http://mirror/os/", "kernel": "../../etc/passwd"}}, "boot.kernel"),
        ({"boot": {"kind": "url", "url": "http://mirror/os/", "initrd": "/abs/initrd"}}, "boot.initrd"),
        ({"disks": [{"existing": "/etc/passwd"}]}, "disks.0.existing"),
        ({"disks": [{"size_gib": 1, "backing": f"{POOL}/../x.qcow2"}]}, "disks.0.backing"),
        ({"disks": [{"size_gib": 1, "backing": f"{POOL}/base.img", "format": "raw"}]}, "disks.0"),
        ({"disks": [{"size_gib": "1e30 GiB"}]}, "disks.0.size_gib"),
        ({"disks": [{"size_gib": -1}]}, "disks.0.size_gib"),
        ({"memory_mib": 10**15}, "memory_mib"),
        ({"vcpus": 10**9}, "vcpus"),
        ({"name": "wéb"}, "name"),
        ({"name": "a'b\"<c>"}, "name"),
        ({"name": "../etc"}, "name"),
        ({"nics": [{"name": "default'/><x"}]}, "nics.0.name"),
        ({"nics": [{"source": "bridge", "name": "br0 && reboot"}]}, "nics.0.name"),
        ({"os": "<script>"}, "os"),
        ({"disks": [{"size_gib": 1}] * 17}, "disks"),
    ],
)
def test_hostile_values_are_refused_with_the_field_named(
    kvm: Host, overrides: dict[str, Any], field: str
) -> None:
    errors = errors_of(base(**overrides), kvm)
    assert field in errors, errors


def test_hostile_text_that_is_allowed_stays_text_in_the_xml(kvm: Host) -> None:
    cmdline = "console=ttyS0 </cmdline><devices/> & ]]> ünïcødé"
    spec = build_spec(base(boot={"kind": "kernel", "kernel": "vmlinuz", "cmdline": cmdline}), kvm)
    root = etree.fromstring(preview_xml(spec, kvm).encode())
    assert root.findtext("os/cmdline") == cmdline
    assert root.findtext("os/kernel") == f"{POOL}/vmlinuz"
    assert len(root.findall("devices")) == 1


def test_preview_is_the_xml_the_agent_would_define(kvm: Host) -> None:
    spec = build_spec(base(disks=[{"size_gib": 10}, {"size_gib": 2, "pool": "vg0", "format": "raw"}]), kvm)
    root = etree.fromstring(preview_xml(spec, kvm).encode())
    assert root.get("type") == "qemu"
    sources = [(d.get("type"), d.find("source").attrib) for d in root.iterfind("devices/disk")]
    short = spec.uuid.hex[:8]
    assert sources[0] == ("file", {"file": f"{POOL}/web1-{short}-disk0.qcow2"})
    assert sources[1] == ("block", {"dev": f"/dev/vg0/web1-{short}-disk1"})
    assert sources[2] == ("file", {"file": f"{POOL}/debian.iso"})
    assert DomainSpec.model_validate_json(root.findtext("metadata/{*}domain/{*}spec") or "") == spec


def test_old_stored_specs_still_load() -> None:
    spec = DomainSpec.model_validate(
        {
            "uuid": "0b7c6a1e-5d1f-4c39-9a51-2f0d8b7e4a11",
            "name": "old",
            "vcpus": 1,
            "memory_mib": 256,
            "disks": [{"size_gib": 1.0, "format": "qcow2", "pool": "default"}],
            "boot": {"iso": "x.iso"},
        }
    )
    assert spec.boot.kind == "iso" and spec.nics == [] and spec.mode == "hvm"


def test_free_space_is_checked_against_the_latest_stats(kvm: Host) -> None:
    """The agent's periodic stats are fresher than the facts read when it connected."""
    resources = _facts()["resources"]
    resources["pools"][0]["available_bytes"] = 5 * GIB  # filled up since it connected
    kvm.stats = {"resources": resources}
    kvm.save()
    errors = errors_of(base(disks=[{"size_gib": 10}]), kvm)
    assert "5.0 GiB free" in errors["disks.0.size_gib"][0]
