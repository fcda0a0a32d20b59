"""Domain XML: golden files, libvirt's own schema, and escaping of hostile values."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from lxml import etree

from agent.accel import MARKER, boot_sector
from agent.domxml import (
    ResolvedBoot,
    disk_target,
    parse_boot_files,
    parse_disks,
    render_domain_xml,
    render_probe_xml,
)
from agent.protocol import DiskSpec, DomainSpec, IsoBoot, KernelBoot

GOLDEN = Path(__file__).parent / "golden"
POOL = "/var/lib/libvirt/images"
UPDATE = os.environ.get("DOMUS_UPDATE_GOLDEN") == "1"

CASES: dict[str, tuple[DomainSpec, ResolvedBoot, list[str]]] = {
    "kernel_one_disk": (
        DomainSpec(
            uuid=uuid.UUID("0b7c6a1e-5d1f-4c39-9a51-2f0d8b7e4a11"),
            name="web-1",
            vcpus=2,
            memory_mib=512,
            disks=[DiskSpec(size_gib=4)],
            boot=KernelBoot(kernel="vmlinuz", initrd="initrd.img", cmdline="console=ttyS0 quiet"),
        ),
        ResolvedBoot(kernel=f"{POOL}/vmlinuz", initrd=f"{POOL}/initrd.img", cmdline="console=ttyS0 quiet"),
        [f"{POOL}/web-1-disk0.qcow2"],
    ),
    "iso_two_disks": (
        DomainSpec(
            uuid=uuid.UUID("5e2d7c0a-93b4-4f6e-8c1d-7a3b9e0f1c22"),
            name="db-1",
            vcpus=4,
            memory_mib=2048,
            disks=[DiskSpec(size_gib=20), DiskSpec(size_gib=0.5)],
            boot=IsoBoot(iso="debian-12.iso"),
        ),
        ResolvedBoot(iso=f"{POOL}/debian-12.iso"),
        [f"{POOL}/db-1-disk0.qcow2", f"{POOL}/db-1-disk1.qcow2"],
    ),
    "no_disk": (
        DomainSpec(
            uuid=uuid.UUID("c4a9e3f2-1b6d-4e8a-b7c5-0d2f4a6e8b33"),
            name="diskless",
            boot=KernelBoot(kernel="vmlinuz"),
        ),
        ResolvedBoot(kernel=f"{POOL}/vmlinuz"),
        [],
    ),
}


SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")


def _validate(path: Path) -> str | None:
    """None when `path` is a valid domain XML, else libvirt's `virt-xml-validate` complaint."""
    result = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    return None if result.returncode == 0 else result.stderr + result.stdout


# virt-xml-validate comes with libvirt-clients and runs xmllint (libxml2-utils); bootstrap.sh
# installs both.
needs_validator = pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None or not SCHEMA.exists(),
    reason="virt-xml-validate / xmllint / libvirt schemas are not installed (scripts/bootstrap.sh installs them)",
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str) -> None:
    spec, boot, paths = CASES[case]
    xml = render_domain_xml(spec, domain_type="qemu", boot=boot, disk_paths=paths)
    golden = GOLDEN / f"{case}.xml"
    if UPDATE:
        golden.write_text(xml)
    assert xml == golden.read_text(), f"re-run with DOMUS_UPDATE_GOLDEN=1 to accept: {case}"


@needs_validator
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_passes_libvirt_schema(case: str) -> None:
    assert _validate(GOLDEN / f"{case}.xml") is None


@needs_validator
def test_hostile_values_are_text_not_structure(tmp_path: Path) -> None:
    hostile = "console=ttyS0 </cmdline><devices><disk/></devices> & <!-- x --> ]]>"
    spec = DomainSpec(uuid=uuid.uuid4(), name="hostile", boot=KernelBoot(kernel="vmlinuz", cmdline=hostile))
    boot = ResolvedBoot(kernel=f"{POOL}/vm&linuz<'\">", cmdline=hostile)
    xml = render_domain_xml(spec, domain_type="kvm", boot=boot, disk_paths=[])
    assert "&amp;" in xml and "&lt;/cmdline&gt;" in xml
    root = etree.fromstring(xml.encode())
    assert root.findtext("os/cmdline") == hostile
    assert root.findtext("os/kernel") == f"{POOL}/vm&linuz<'\">"
    assert len(root.findall("devices")) == 1
    assert root.findall("devices/disk") == []
    path = tmp_path / "hostile.xml"
    path.write_text(xml)
    assert _validate(path) is None


def test_domain_shape() -> None:
    spec, boot, paths = CASES["iso_two_disks"]
    root = etree.fromstring(render_domain_xml(spec, domain_type="kvm", boot=boot, disk_paths=paths).encode())
    assert root.get("type") == "kvm"
    assert root.findtext("memory") == str(2048 * 1024) and root.find("memory").get("unit") == "KiB"
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["cdrom", "hd"]
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert root.findtext("on_poweroff") == "destroy" and root.findtext("on_reboot") == "restart"
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/console").get("type") == "pty"
    assert [t.get("bus") for t in root.iterfind("devices/disk/target")] == ["virtio", "virtio", "ide"]


def test_parse_disks_and_boot_files() -> None:
    spec, boot, paths = CASES["iso_two_disks"]
    xml = render_domain_xml(spec, domain_type="qemu", boot=boot, disk_paths=paths)
    disks = parse_disks(xml)
    assert [(d.target, d.device, d.path) for d in disks] == [
        ("vda", "disk", paths[0]),
        ("vdb", "disk", paths[1]),
        ("hdc", "cdrom", f"{POOL}/debian-12.iso"),
    ]
    spec, boot, paths = CASES["kernel_one_disk"]
    xml = render_domain_xml(spec, domain_type="qemu", boot=boot, disk_paths=paths)
    assert parse_boot_files(xml) == [f"{POOL}/vmlinuz", f"{POOL}/initrd.img"]


def test_disk_targets() -> None:
    assert [disk_target(i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]


@needs_validator
def test_validator_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_text("<domain type='qemu'><name>x</name><bogus/></domain>")
    assert _validate(path) is not None


def test_accel_probe_boot_sector() -> None:
    sector = boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa") and MARKER in sector
    xml = render_probe_xml(name="p", domain_type="kvm", boot_image="/x.img", serial_log="/x.log")
    root = etree.fromstring(xml.encode())
    assert root.get("type") == "kvm" and root.find("devices/serial").get("type") == "file"
