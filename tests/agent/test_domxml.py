"""Domain XML: golden files, libvirt's own schema, and escaping of hostile values."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from agent.accel import MARKER, boot_sector
from agent.domxml import (
    ResolvedBoot,
    ResolvedDisk,
    disk_target,
    install_pending,
    install_xml,
    installed_xml,
    parse_boot_files,
    parse_disks,
    render_domain_xml,
    render_probe_xml,
)
from agent.protocol import DomainSpec, KernelBoot

GOLDEN = Path(__file__).parent / "golden"
POOL = "/var/lib/libvirt/images"
UPDATE = os.environ.get("DOMUS_UPDATE_GOLDEN") == "1"

U = uuid.UUID


def _spec(**fields: Any) -> DomainSpec:
    return DomainSpec.model_validate(fields)


def _disks(*paths: str, block: bool = False, fmt: str = "qcow2") -> list[ResolvedDisk]:
    return [ResolvedDisk(path=p, format=fmt, block=block) for p in paths]


NIC = {"source": "network", "name": "default", "mac": "52:54:00:0a:0b:0c"}
BRIDGE = {"source": "bridge", "name": "br0", "mac": "00:16:3e:1a:2b:3c"}
KERNEL = ResolvedBoot(kernel=f"{POOL}/vmlinuz", initrd=f"{POOL}/initrd.img", cmdline="console=ttyS0 quiet")
NETINST = (f"{POOL}/.domus-install/k/vmlinuz", f"{POOL}/.domus-install/k/initrd.img")

# (spec, domain type, resolved boot, resolved disks): every mode on every hypervisor it runs on.
CASES: dict[str, tuple[DomainSpec, str, ResolvedBoot, list[ResolvedDisk]]] = {
    "qemu_hvm_kernel_one_disk": (
        _spec(
            uuid=U("0b7c6a1e-5d1f-4c39-9a51-2f0d8b7e4a11"),
            name="web-1",
            vcpus=2,
            memory_mib=512,
            disks=[{"size_gib": 4, "bus": "virtio"}],
            boot={
                "kind": "kernel",
                "kernel": "vmlinuz",
                "initrd": "initrd.img",
                "cmdline": "console=ttyS0 quiet",
            },
        ),
        "qemu",
        KERNEL,
        _disks(f"{POOL}/web-1-disk0.qcow2"),
    ),
    "kvm_hvm_iso_two_disks_vnc": (
        _spec(
            uuid=U("5e2d7c0a-93b4-4f6e-8c1d-7a3b9e0f1c22"),
            name="db-1",
            os="debian12",
            vcpus=4,
            memory_mib=2048,
            disks=[{"size_gib": 20, "bus": "virtio"}, {"size_gib": 0.5, "bus": "virtio", "format": "raw"}],
            nics=[{**NIC, "model": "virtio"}],
            boot={"kind": "iso", "iso": "debian-12.iso"},
            graphics=True,
        ),
        "kvm",
        ResolvedBoot(iso=f"{POOL}/debian-12.iso"),
        [ResolvedDisk(f"{POOL}/db-1-disk0.qcow2", "qcow2"), ResolvedDisk(f"{POOL}/db-1-disk1.img", "raw")],
    ),
    "qemu_hvm_no_disk": (
        _spec(uuid=U("c4a9e3f2-1b6d-4e8a-b7c5-0d2f4a6e8b33"), name="diskless", boot={"kernel": "vmlinuz"}),
        "qemu",
        ResolvedBoot(kernel=f"{POOL}/vmlinuz"),
        [],
    ),
    "kvm_hvm_windows_sata_localtime": (
        _spec(
            uuid=U("7d1e2f3a-4b5c-4d6e-8f70-81a2b3c4d5e6"),
            name="win11",
            os="win11",
            vcpus=2,
            memory_mib=4096,
            disks=[{"size_gib": 64, "bus": "sata", "allocation": "preallocated"}],
            nics=[{**NIC, "model": "e1000e"}],
            boot={"kind": "iso", "iso": "win11.iso"},
            graphics=True,
            serial=False,
            clock="localtime",
        ),
        "kvm",
        ResolvedBoot(iso=f"{POOL}/win11.iso"),
        _disks(f"{POOL}/win11-disk0.qcow2"),
    ),
    "kvm_hvm_pxe_bridge_lvm": (
        _spec(
            uuid=U("a1b2c3d4-e5f6-4789-8abc-def012345678"),
            name="pxe-node",
            disks=[{"size_gib": 8, "pool": "vg0", "format": "raw", "bus": "virtio"}],
            nics=[{**BRIDGE, "model": "virtio"}],
            boot={"kind": "pxe"},
        ),
        "kvm",
        ResolvedBoot(),
        _disks("/dev/vg0/pxe-node-a1b2c3d4-disk0", block=True, fmt="raw"),
    ),
    "kvm_hvm_cdrom_drive": (
        _spec(
            uuid=U("b2c3d4e5-f607-4819-9abc-0123456789ab"),
            name="from-dvd",
            disks=[{"size_gib": 10, "bus": "ide"}],
            nics=[{**NIC, "model": "rtl8139"}],
            boot={"kind": "cdrom", "device": "/dev/sr0"},
            os="centos5",
        ),
        "kvm",
        ResolvedBoot(cdrom_device="/dev/sr0"),
        _disks(f"{POOL}/from-dvd-disk0.qcow2"),
    ),
    "kvm_hvm_network_install": (
        _spec(
            uuid=U("c3d4e5f6-0718-4293-aabc-123456789abc"),
            name="alma9",
            os="almalinux9",
            disks=[{"size_gib": 20, "bus": "virtio"}],
            nics=[{**NIC, "model": "virtio"}],
            boot={
                "kind": "url",
                "url": "https://repo.almalinux.org/almalinux/9/BaseOS/x86_64/os/",
                "cmdline": "inst.repo=https://repo.almalinux.org/almalinux/9/BaseOS/x86_64/os/ console=ttyS0",
            },
        ),
        "kvm",
        ResolvedBoot(),
        _disks(f"{POOL}/alma9-disk0.qcow2"),
    ),
    "kvm_hvm_cloud_image": (
        _spec(
            uuid=U("d4e5f607-1829-4a3b-bcde-23456789abcd"),
            name="cloud-1",
            os="debian12",
            disks=[{"size_gib": 10, "bus": "virtio", "backing": "debian-12-generic-amd64.qcow2"}],
            nics=[{**NIC, "model": "virtio"}],
            boot={
                "kind": "disk",
                "cloud_init": {"hostname": "cloud-1", "user": "ana", "instance_id": "i-cloud-1"},
            },
        ),
        "kvm",
        ResolvedBoot(seed_iso=f"{POOL}/cloud-1-d4e5f607-cidata.iso"),
        _disks(f"{POOL}/cloud-1-disk0.qcow2"),
    ),
    "xen_hvm_iso": (
        _spec(
            uuid=U("e5f60718-293a-4b4c-8def-3456789abcde"),
            name="xen-hvm",
            disks=[{"size_gib": 10, "bus": "virtio"}],
            nics=[{**BRIDGE, "model": "e1000"}],
            boot={"kind": "iso", "iso": "install.iso"},
            graphics=True,
        ),
        "xen",
        ResolvedBoot(iso=f"{POOL}/install.iso"),
        _disks(f"{POOL}/xen-hvm-disk0.qcow2"),
    ),
    "xen_pv_kernel": (
        _spec(
            uuid=U("f6071829-3a4b-4c5d-9ef0-456789abcdef"),
            name="xen-pv",
            mode="pv",
            disks=[{"size_gib": 4}],
            nics=[BRIDGE],
            boot={
                "kind": "kernel",
                "kernel": "vmlinuz",
                "initrd": "initrd.img",
                "cmdline": "root=/dev/xvda ro",
            },
        ),
        "xen",
        ResolvedBoot(kernel=f"{POOL}/vmlinuz", initrd=f"{POOL}/initrd.img", cmdline="root=/dev/xvda ro"),
        _disks(f"{POOL}/xen-pv-disk0.qcow2"),
    ),
    "xen_pv_pygrub_vnc": (
        _spec(
            uuid=U("07182930-4b5c-4d6e-8f01-56789abcdef0"),
            name="centos5-pv",
            mode="pv",
            os="centos5",
            disks=[{"existing": f"{POOL}/centos5.img"}],
            nics=[BRIDGE],
            boot={"kind": "bootloader"},
            graphics=True,
        ),
        "xen",
        ResolvedBoot(),
        _disks(f"{POOL}/centos5.img", fmt="raw"),
    ),
    "xen_pvh_kernel": (
        _spec(
            uuid=U("18293a4b-5c6d-4e7f-9012-6789abcdef01"),
            name="xen-pvh",
            mode="pvh",
            disks=[{"size_gib": 4}],
            nics=[{**NIC, "mac": "00:16:3e:00:00:01"}],
            boot={"kind": "kernel", "kernel": "vmlinuz", "cmdline": "console=hvc0"},
        ),
        "xen",
        ResolvedBoot(kernel=f"{POOL}/vmlinuz", cmdline="console=hvc0"),
        _disks(f"{POOL}/xen-pvh-disk0.qcow2"),
    ),
    "xen_pv_network_install": (
        _spec(
            uuid=U("293a4b5c-6d7e-4f80-a123-789abcdef012"),
            name="debian-pv",
            mode="pv",
            os="debian12",
            disks=[{"size_gib": 8}],
            nics=[BRIDGE],
            boot={
                "kind": "url",
                "url": "http://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/",
                "kernel": "netboot/xen/vmlinuz",
                "initrd": "netboot/xen/initrd.gz",
            },
        ),
        "xen",
        ResolvedBoot(),
        _disks(f"{POOL}/debian-pv-disk0.qcow2"),
    ),
}

# The first boot of the installing cases (the installer, and a reboot that powers off).
INSTALLS: dict[str, ResolvedBoot] = {
    "kvm_hvm_iso_two_disks_vnc": ResolvedBoot(iso=f"{POOL}/debian-12.iso"),
    "kvm_hvm_pxe_bridge_lvm": ResolvedBoot(),
    "kvm_hvm_network_install": ResolvedBoot(
        kernel=NETINST[0],
        initrd=NETINST[1],
        cmdline="inst.repo=https://repo.almalinux.org/almalinux/9/BaseOS/x86_64/os/ console=ttyS0",
    ),
    "xen_pv_network_install": ResolvedBoot(kernel=NETINST[0], initrd=NETINST[1]),
}


def _render(case: str) -> str:
    spec, domain_type, boot, disks = CASES[case]
    return render_domain_xml(spec, domain_type=domain_type, boot=boot, disks=disks)


def _golden_files() -> list[str]:
    return sorted([*CASES, *(f"{case}.install" for case in INSTALLS)])


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
    xml = _render(case)
    golden = GOLDEN / f"{case}.xml"
    if UPDATE:
        golden.write_text(xml)
    assert xml == golden.read_text(), f"re-run with DOMUS_UPDATE_GOLDEN=1 to accept: {case}"


@pytest.mark.parametrize("case", sorted(INSTALLS))
def test_install_boot_matches_golden(case: str) -> None:
    spec = CASES[case][0]
    final = _render(case)
    assert install_pending(final)
    xml = install_xml(final, spec, INSTALLS[case])
    golden = GOLDEN / f"{case}.install.xml"
    if UPDATE:
        golden.write_text(xml)
    assert xml == golden.read_text(), f"re-run with DOMUS_UPDATE_GOLDEN=1 to accept: {case}.install"
    root = etree.fromstring(xml.encode())
    assert root.findtext("on_reboot") == "destroy"
    assert not install_pending(xml) and not install_pending(installed_xml(final))


def test_every_golden_file_has_a_case() -> None:
    on_disk = sorted(p.name.removesuffix(".xml") for p in GOLDEN.glob("*.xml"))
    assert on_disk == _golden_files()


@needs_validator
@pytest.mark.parametrize("name", _golden_files())
def test_golden_passes_libvirt_schema(name: str) -> None:
    assert _validate(GOLDEN / f"{name}.xml") is None


@needs_validator
def test_hostile_values_are_text_not_structure(tmp_path: Path) -> None:
    hostile = "console=ttyS0 </cmdline><devices><disk/></devices> & <!-- x --> ]]>"
    spec = DomainSpec(uuid=uuid.uuid4(), name="hostile", boot=KernelBoot(kernel="vmlinuz", cmdline=hostile))
    boot = ResolvedBoot(kernel=f"{POOL}/vm&linuz<'\">", cmdline=hostile)
    xml = render_domain_xml(spec, domain_type="kvm", boot=boot, disks=[])
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
    root = etree.fromstring(_render("kvm_hvm_iso_two_disks_vnc").encode())
    assert root.get("type") == "kvm"
    assert root.findtext("memory") == str(2048 * 1024) and root.find("memory").get("unit") == "KiB"
    # The installed system boots from its disk; the installer's media stays as a fallback.
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["hd", "cdrom"]
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert root.findtext("on_poweroff") == "destroy" and root.findtext("on_reboot") == "restart"
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/console").get("type") == "pty"
    assert [t.get("bus") for t in root.iterfind("devices/disk/target")] == ["virtio", "virtio", "ide"]
    assert [d.get("type") for d in root.iterfind("devices/disk/driver")] == ["qcow2", "raw", "raw"]
    graphics = root.find("devices/graphics")
    assert graphics.get("type") == "vnc" and graphics.get("listen") == "127.0.0.1"
    assert root.find("devices/interface/mac").get("address") == "52:54:00:0a:0b:0c"


def test_xen_modes() -> None:
    pv = etree.fromstring(_render("xen_pv_kernel").encode())
    assert pv.find("os/type").text == "xen" and pv.find("os/type").get("machine") == "xenpv"
    assert pv.find("features") is None and pv.find("devices/serial") is None
    assert pv.find("devices/console/target").get("type") == "xen"
    assert [t.get("dev") for t in pv.iterfind("devices/disk/target")] == ["xvda"]
    assert pv.find("devices/interface/model") is None  # netfront, the only PV card
    pygrub = etree.fromstring(_render("xen_pv_pygrub_vnc").encode())
    assert pygrub.findtext("bootloader") == "/usr/lib/xen/bin/pygrub" and pygrub.find("os/kernel") is None
    pvh = etree.fromstring(_render("xen_pvh_kernel").encode())
    assert pvh.find("os/type").text == "xenpvh"
    hvm = etree.fromstring(_render("xen_hvm_iso").encode())
    assert hvm.find("os/type").get("machine") == "xenfv" and hvm.find("features/pae") is not None
    # libxl has no virtio: a virtio disk becomes a Xen PV disk.
    assert [t.get("bus") for t in hvm.iterfind("devices/disk/target")] == ["xen", "ide"]


def test_windows_gets_sata_cdrom_and_local_clock() -> None:
    root = etree.fromstring(_render("kvm_hvm_windows_sata_localtime").encode())
    assert [t.get("dev") for t in root.iterfind("devices/disk/target")] == ["sda", "sdb"]
    assert root.find("clock").get("offset") == "localtime"
    assert root.find("devices/serial") is None


def test_parse_disks_and_boot_files() -> None:
    xml = _render("kvm_hvm_iso_two_disks_vnc")
    disks = parse_disks(xml)
    assert [(d.target, d.device, d.path) for d in disks] == [
        ("vda", "disk", f"{POOL}/db-1-disk0.qcow2"),
        ("vdb", "disk", f"{POOL}/db-1-disk1.img"),
        ("hda", "cdrom", f"{POOL}/debian-12.iso"),
    ]
    assert parse_boot_files(_render("qemu_hvm_kernel_one_disk")) == [f"{POOL}/vmlinuz", f"{POOL}/initrd.img"]
    lvm = parse_disks(_render("kvm_hvm_pxe_bridge_lvm"))
    assert [(d.target, d.path) for d in lvm] == [("vda", "/dev/vg0/pxe-node-a1b2c3d4-disk0")]


def test_disk_targets() -> None:
    assert [disk_target(i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]
    assert disk_target(2, "xvd") == "xvdc" and disk_target(0, "sd") == "sda"


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
