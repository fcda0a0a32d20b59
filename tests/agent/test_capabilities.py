"""Host capabilities and resources: parsing real libvirt documents, and reading live drivers.

The Xen documents come from libvirt's own test data (or follow its libxl driver, see
fixtures/capabilities/README.md); the QEMU and test-driver ones were captured on a real host.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from agent.capabilities import (
    NOTE_NO_HVM_GUEST,
    NOTE_PV_NEEDS_XEN,
    NOTE_PVH_NEEDS_XEN,
    NOTE_TCG,
    NOTE_XEN_NO_HVM,
    NOTE_XEN_NO_PV,
    NOTE_XEN_NO_PVH,
    NOTE_XEN_NO_PVH_NO_HVM,
    bridge_addresses,
    parse_bridge_addresses,
    parse_host_capabilities,
    read_host_capabilities,
    read_host_resources,
    sysfs_bridges,
)
from agent.protocol import POOL_TYPES, GuestArch, ModeSupport, NetworkInfo, PoolInfo

FIXTURES = Path(__file__).parent / "fixtures" / "capabilities"
XEN_CAPS = (FIXTURES / "xen-libxl-host-capabilities.xml").read_text()
XEN_DOMCAPS_HVM = (FIXTURES / "xen-libxl-domain-capabilities-xenfv.xml").read_text()
XEN_DOMCAPS_PV = (FIXTURES / "xen-libxl-domain-capabilities-xenpv.xml").read_text()
QEMU_CAPS = (FIXTURES / "qemu-tcg-host-capabilities.xml").read_text()
QEMU_DOMCAPS = (FIXTURES / "qemu-tcg-domain-capabilities.xml").read_text()
TEST_CAPS = (FIXTURES / "test-host-capabilities.xml").read_text()

SYSTEM_URI = "qemu:///system"


def _without_guests(caps_xml: str, *os_types: str) -> str:
    """A copy of a capabilities document without the <guest> entries of these OS types."""
    root = etree.fromstring(caps_xml.encode())
    for guest in root.findall("guest"):
        if guest.findtext("os_type") in os_types:
            root.remove(guest)
    return etree.tostring(root, encoding="unicode")


def _edit_domcaps(
    domcaps_xml: str, *, arch: str | None = None, loader: str | None = None, firmware: str | None = None
) -> str:
    root = etree.fromstring(domcaps_xml.encode())
    if arch is not None:
        arch_el = root.find("arch")
        assert arch_el is not None
        arch_el.text = arch
    if loader is not None:
        loader_el = root.find("os/loader")
        assert loader_el is not None
        loader_el.insert(0, etree.Element("value"))
        loader_el[0].text = loader
    if firmware is not None:
        enum = root.find("os/enum[@name='firmware']")
        assert enum is not None
        etree.SubElement(enum, "value").text = firmware
    return etree.tostring(root, encoding="unicode")


def _modes(*specs: tuple[str, bool, str | None, str]) -> list[ModeSupport]:
    return [
        ModeSupport.model_validate(dict(zip(("mode", "available", "accel", "note"), s, strict=True)))
        for s in specs
    ]


# --- Xen (libxl) ---------------------------------------------------------------------------


def test_xen_host_offers_hvm_pv_and_pvh() -> None:
    caps = parse_host_capabilities(XEN_CAPS, driver="Xen", accel="xen", domcaps_xml=XEN_DOMCAPS_HVM)

    assert caps.hypervisor == "xen"
    assert caps.arch == "x86_64"
    assert (caps.cpu_model, caps.cpu_vendor) == ("Skylake-Client-noTSX-IBRS", "Intel")
    assert (caps.sockets, caps.cores, caps.threads) == (1, 4, 2)
    assert caps.modes == _modes(
        ("hvm", True, "hardware", ""), ("pv", True, "paravirt", ""), ("pvh", True, "paravirt", "")
    )
    assert [(g.os_type, g.arch) for g in caps.guests] == [
        ("xen", "x86_64"),
        ("xen", "i686"),
        ("hvm", "i686"),
        ("xenpvh", "i686"),
        ("hvm", "x86_64"),
        ("xenpvh", "x86_64"),
    ]
    assert caps.guests[5] == GuestArch(
        os_type="xenpvh",
        arch="x86_64",
        domain_types=["xen"],
        machines=["xenpvh"],
        emulator="/usr/lib/xen/bin/qemu-system-i386",
    )
    assert caps.guests[4].machines == ["xenfv"]
    # From libvirt's libxl-xenfv domain capabilities: HVM's vCPU limit, hvmloader + OVMF.
    assert caps.max_vcpus == 128
    assert caps.disk_buses == ["ide", "scsi", "xen"]
    assert caps.graphics == ["sdl", "vnc", "spice"]
    assert caps.firmware == ["bios", "efi"]


def test_xen_host_without_vtx_offers_only_pv() -> None:
    # What libxl reports when Xen's caps string has no hvm-* entry: no HVM, hence no PVH.
    caps_xml = _without_guests(XEN_CAPS, "hvm", "xenpvh")

    caps = parse_host_capabilities(caps_xml, driver="Xen", accel="xen")

    assert caps.modes == _modes(
        ("hvm", False, None, NOTE_XEN_NO_HVM),
        ("pv", True, "paravirt", ""),
        ("pvh", False, None, NOTE_XEN_NO_PVH_NO_HVM),
    )
    assert "VT-x/AMD-V" in caps.modes[0].note and "BIOS" in caps.modes[0].note
    assert {g.os_type for g in caps.guests} == {"xen"}


def test_xen_pvh_follows_libvirts_guest_list_not_hvm() -> None:
    caps = parse_host_capabilities(_without_guests(XEN_CAPS, "hvm"), driver="Xen", accel="xen")

    assert [(m.mode, m.available) for m in caps.modes] == [("hvm", False), ("pv", True), ("pvh", True)]


def test_xen_without_pvh_support_says_why() -> None:
    caps = parse_host_capabilities(_without_guests(XEN_CAPS, "xenpvh"), driver="Xen", accel="xen")

    assert caps.modes[0] == ModeSupport(mode="hvm", available=True, accel="hardware")
    assert caps.modes[2] == ModeSupport(mode="pvh", available=False, note=NOTE_XEN_NO_PVH)
    assert "does not offer PVH" in caps.modes[2].note


def test_xen_without_pv_guests() -> None:
    caps = parse_host_capabilities(_without_guests(XEN_CAPS, "xen"), driver="Xen", accel="xen")

    assert caps.modes[1] == ModeSupport(mode="pv", available=False, note=NOTE_XEN_NO_PV)


def test_xen_pv_domain_capabilities_have_no_firmware() -> None:
    caps = parse_host_capabilities(XEN_CAPS, driver="Xen", accel="xen", domcaps_xml=XEN_DOMCAPS_PV)

    assert caps.max_vcpus == 512
    assert caps.disk_buses == ["ide", "scsi", "xen"]
    # PV guests boot a kernel directly: libvirt reports loader supported='no'.
    assert caps.firmware == []


# --- QEMU / KVM ----------------------------------------------------------------------------


def test_qemu_with_tcg_is_software_emulation() -> None:
    caps = parse_host_capabilities(QEMU_CAPS, driver="QEMU", accel="tcg", domcaps_xml=QEMU_DOMCAPS)

    assert caps.hypervisor == "qemu"
    assert caps.arch == "x86_64"
    assert (caps.cpu_model, caps.cpu_vendor) == ("Broadwell-noTSX-IBRS", "Intel")
    assert (caps.sockets, caps.cores, caps.threads) == (1, 2, 1)
    assert caps.modes == _modes(
        ("hvm", True, "software", NOTE_TCG),
        ("pv", False, None, NOTE_PV_NEEDS_XEN),
        ("pvh", False, None, NOTE_PVH_NEEDS_XEN),
    )
    assert caps.modes[0].note == "software emulation (QEMU TCG): works, but slowly"
    assert "Xen" in caps.modes[1].note and "Xen" in caps.modes[2].note


def test_qemu_guests_list_machines_once_with_aliases() -> None:
    caps = parse_host_capabilities(QEMU_CAPS, driver="QEMU", accel="tcg")

    assert [(g.os_type, g.arch) for g in caps.guests] == [("hvm", "i686"), ("hvm", "x86_64")]
    x86_64 = caps.guests[1]
    assert x86_64.domain_types == ["qemu", "kvm"]
    assert x86_64.emulator == "/usr/bin/qemu-system-x86_64"
    assert x86_64.machines[:2] == ["pc-i440fx-7.2", "pc"]  # alias right after its canonical
    assert {"q35", "pc-q35-7.2", "microvm", "isapc"} <= set(x86_64.machines)
    assert len(x86_64.machines) == len(set(x86_64.machines)) == 60
    assert caps.guests[0].emulator == "/usr/bin/qemu-system-i386"


def test_machines_of_domain_elements_and_canonical_names_count() -> None:
    # Older libvirt lists a kvm domain's own emulator and machines under <domain>.
    caps_xml = """<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
      <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>
        <machine canonical='pc-i440fx-2.6'>pc</machine><domain type='qemu'/>
        <domain type='kvm'><emulator>/usr/bin/qemu-kvm</emulator>
          <machine canonical='pc-q35-2.6'>q35</machine><machine>pc</machine></domain>
      </arch></guest></capabilities>"""

    (guest,) = parse_host_capabilities(caps_xml, driver="QEMU", accel="kvm").guests

    assert guest.machines == ["pc", "pc-i440fx-2.6", "q35", "pc-q35-2.6"]
    assert guest.domain_types == ["qemu", "kvm"]
    assert guest.emulator == "/usr/bin/qemu-kvm"


def test_qemu_domain_capabilities() -> None:
    caps = parse_host_capabilities(QEMU_CAPS, driver="QEMU", accel="tcg", domcaps_xml=QEMU_DOMCAPS)

    assert caps.max_vcpus == 255
    assert caps.disk_buses == ["ide", "fdc", "scsi", "virtio", "usb", "sata"]
    assert caps.graphics == ["sdl", "vnc", "spice", "egl-headless", "dbus"]
    # This host has no OVMF installed: the loader lists no image, so no EFI.
    assert caps.firmware == ["bios"]


def test_qemu_without_domain_capabilities_leaves_them_empty() -> None:
    caps = parse_host_capabilities(QEMU_CAPS, driver="QEMU", accel="tcg")

    assert (caps.max_vcpus, caps.disk_buses, caps.graphics, caps.firmware) == (None, [], [], [])


@pytest.mark.parametrize(
    ("loader", "firmware", "arch", "expected"),
    [
        ("/usr/share/OVMF/OVMF_CODE.fd", None, None, ["bios", "efi"]),
        (None, "efi", None, ["bios", "efi"]),
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "efi", "aarch64", ["efi"]),
        (None, None, "aarch64", []),
    ],
)
def test_firmware_from_loader_images_and_firmware_enum(
    loader: str | None, firmware: str | None, arch: str | None, expected: list[str]
) -> None:
    domcaps = _edit_domcaps(QEMU_DOMCAPS, arch=arch, loader=loader, firmware=firmware)

    caps = parse_host_capabilities(QEMU_CAPS, driver="QEMU", accel="tcg", domcaps_xml=domcaps)

    assert caps.firmware == expected


def test_qemu_with_kvm_is_hardware_assisted() -> None:
    caps = parse_host_capabilities(QEMU_CAPS, driver="QEMU", accel="kvm", domcaps_xml=QEMU_DOMCAPS)

    assert caps.hypervisor == "kvm"
    assert caps.modes[0] == ModeSupport(mode="hvm", available=True, accel="hardware", note="")
    assert [m.available for m in caps.modes] == [True, False, False]


def test_qemu_without_any_hvm_guest_cannot_run_hvm() -> None:
    caps = parse_host_capabilities(_without_guests(QEMU_CAPS, "hvm"), driver="QEMU", accel="tcg")

    assert caps.modes[0] == ModeSupport(mode="hvm", available=False, note=NOTE_NO_HVM_GUEST)


# --- test driver and sparse documents ------------------------------------------------------


def test_test_driver_capabilities() -> None:
    caps = parse_host_capabilities(TEST_CAPS, driver="Test", accel="test")

    assert caps.hypervisor == "test"
    assert caps.arch == "i686"  # sic: the test driver simulates a 32-bit host
    assert (caps.cpu_model, caps.cpu_vendor, caps.sockets, caps.cores, caps.threads) == (None,) * 5
    assert caps.modes == _modes(
        ("hvm", True, "hardware", ""),
        ("pv", False, None, NOTE_PV_NEEDS_XEN),
        ("pvh", False, None, NOTE_PVH_NEEDS_XEN),
    )
    assert caps.guests == [
        GuestArch(os_type="hvm", arch="i686", domain_types=["test"], emulator="/usr/bin/test-hv"),
        GuestArch(os_type="xen", arch="i686", domain_types=["test"], emulator="/usr/bin/test-hv"),
    ]
    assert (caps.max_vcpus, caps.disk_buses, caps.graphics, caps.firmware) == (None, [], [], [])


@pytest.mark.parametrize(
    "caps_xml",
    [
        "<capabilities/>",
        "<capabilities><host/></capabilities>",
        "<capabilities><host><cpu><topology sockets='x'/></cpu></host><guest/>"
        "<guest><os_type>hvm</os_type><arch/></guest></capabilities>",
    ],
)
@pytest.mark.parametrize("driver", ["QEMU", "Xen", "Test"])
def test_sparse_documents_never_crash(caps_xml: str, driver: str) -> None:
    caps = parse_host_capabilities(
        caps_xml,
        driver=driver,
        accel="tcg",
        domcaps_xml="<domainCapabilities><vcpu/><devices><disk/></devices></domainCapabilities>",
    )

    assert caps.arch == "unknown"
    assert caps.guests == [] and caps.sockets is None and caps.max_vcpus is None
    assert [m.mode for m in caps.modes] == ["hvm", "pv", "pvh"]
    assert caps.disk_buses == caps.graphics == caps.firmware == []


# --- live drivers --------------------------------------------------------------------------


@pytest.fixture
def test_conn() -> Iterator[libvirt.virConnect]:
    """The test driver's default host. Its state is shared by every connection in this
    process while one is open, so whatever a test defines it must remove."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        conn.close()


def test_read_host_capabilities_on_the_test_driver(test_conn: libvirt.virConnect) -> None:
    # The test driver has no domain capabilities: libvirt raises, and that is not an error.
    caps = read_host_capabilities(test_conn, accel="test")

    assert (caps.hypervisor, caps.arch, caps.max_vcpus) == ("test", "i686", None)
    assert [g.os_type for g in caps.guests] == ["hvm", "xen"]


def test_read_host_resources_on_the_test_driver(test_conn: libvirt.virConnect) -> None:
    resources = read_host_resources(test_conn, local=True)

    assert resources.pools == [
        PoolInfo(
            name="default-pool",
            type="dir",
            active=True,
            path="/default-pool",
            capacity_bytes=100 * 1024**3,
            allocation_bytes=0,
            available_bytes=100 * 1024**3,
            state="running",
            autostart=False,
            persistent=True,
            volume_count=0,
            source="",
        )
    ]
    # The test driver cannot say which pool types it runs: it is taken to run them all.
    assert resources.pool_types == list(POOL_TYPES)
    assert resources.networks == [
        NetworkInfo(
            name="default",
            active=True,
            forward="nat",
            bridge="virbr0",
            persistent=True,
            ipv4="192.168.122.1/24",
            dhcp_start="192.168.122.2",
            dhcp_end="192.168.122.254",
        )
    ]
    assert resources.bridges == []  # its only interface, eth1, is plain ethernet
    assert resources.bridge_addresses == {}  # its host is simulated: no kernel to ask


def test_test_driver_bridges_come_from_its_interfaces(test_conn: libvirt.virConnect) -> None:
    suffix = uuid.uuid4().hex[:6]
    bridge, owned = f"br{suffix}", f"virbr{suffix}"
    iface = test_conn.interfaceDefineXML(
        f"<interface type='bridge' name='{bridge}'><start mode='onboot'/>"
        "<protocol family='ipv4'><dhcp/></protocol><bridge stp='off' delay='0.01'>"
        "<interface type='ethernet' name='eth0'><mac address='00:11:22:33:44:55'/></interface>"
        "</bridge></interface>",
        0,
    )
    lan = test_conn.networkDefineXML(
        f"<network><name>lan-{suffix}</name><forward mode='bridge'/><bridge name='{bridge}'/></network>"
    )
    isolated = test_conn.networkCreateXML(
        f"<network><name>iso-{suffix}</name><bridge name='{owned}'/></network>"
    )
    # The simulated host's interface backend owns this bridge too, as udev does for virbr0.
    owned_iface = test_conn.interfaceDefineXML(
        f"<interface type='bridge' name='{owned}'><bridge/></interface>", 0
    )
    try:
        # local=True, yet the test driver's bridges live in libvirt, not in this host's sysfs.
        resources = read_host_resources(test_conn, local=True)
    finally:
        owned_iface.undefine()
        isolated.destroy()
        lan.undefine()
        iface.undefine()

    assert resources.bridges == [bridge]
    networks = {n.name: n for n in resources.networks}
    assert networks[f"lan-{suffix}"] == NetworkInfo(
        name=f"lan-{suffix}", active=False, forward="bridge", bridge=bridge
    )
    assert networks[f"iso-{suffix}"] == NetworkInfo(
        name=f"iso-{suffix}", active=True, forward="isolated", bridge=owned, persistent=False
    )


def test_sysfs_bridges(tmp_path: Path) -> None:
    for name, is_bridge in (("eth0", False), ("br0", True), ("virbr0", True), ("lo", False)):
        (tmp_path / name).mkdir()
        if is_bridge:
            (tmp_path / name / "bridge").mkdir()

    assert sysfs_bridges(str(tmp_path)) == ["br0", "virbr0"]
    assert sysfs_bridges(str(tmp_path / "missing")) == []


# `ip -j addr show type bridge` (iproute2 6.1) in a namespace with two bridges, one of them without
# addresses, and the link-local address the kernel gives a bridge.
IP_ADDR_JSON = json.dumps(
    [
        {
            "ifindex": 2,
            "ifname": "br9",
            "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
            "operstate": "UNKNOWN",
            "address": "6a:50:b1:40:18:66",
            "addr_info": [
                {
                    "family": "inet",
                    "local": "192.168.77.5",
                    "prefixlen": 24,
                    "scope": "global",
                    "label": "br9",
                },
                {
                    "family": "inet6",
                    "local": "2001:db8::5",
                    "prefixlen": 64,
                    "scope": "global",
                    "tentative": True,
                },
                {"family": "inet6", "local": "fe80::6850:b1ff:fe40:1866", "prefixlen": 64, "scope": "link"},
            ],
        },
        {"ifindex": 3, "ifname": "br-empty", "flags": ["BROADCAST"], "addr_info": []},
        {
            "ifindex": 4,
            "ifname": "virbr0",
            "addr_info": [{"family": "inet", "local": "192.168.122.1", "prefixlen": 24, "scope": "global"}],
        },
    ]
)


def test_bridge_addresses_from_iproute2() -> None:
    assert parse_bridge_addresses(IP_ADDR_JSON, ["br9", "br-empty", "br-gone"]) == {
        "br9": ["192.168.77.5/24", "2001:db8::5/64"],  # no link-local one
        "br-empty": [],  # listed bridges with none say so; a missing one is left out
    }
    assert parse_bridge_addresses("not json", ["br9"]) == {}
    assert bridge_addresses([]) == {}  # nothing asked: iproute2 is not even run


def _system_libvirt_available() -> bool:
    if shutil.which("virsh") is None:
        return False
    result = subprocess.run(
        ["virsh", "-c", SYSTEM_URI, "version"], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode == 0


needs_system_libvirt = pytest.mark.skipif(
    not _system_libvirt_available(), reason=f"`virsh -c {SYSTEM_URI} version` fails"
)


@pytest.fixture
def system_conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(SYSTEM_URI)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _host_bridge(name: str) -> Iterator[None]:
    """A real (empty, down) Linux bridge that no libvirt network owns."""
    result = subprocess.run(
        ["ip", "link", "add", name, "type", "bridge"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot create a test bridge: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


@pytest.mark.parametrize("local", [True, False], ids=["sysfs", "libvirt-interfaces"])
@pytest.mark.libvirt
@needs_system_libvirt
def test_read_host_resources_on_qemu_system(
    system_conn: libvirt.virConnect, tmp_path: Path, local: bool
) -> None:
    suffix = uuid.uuid4().hex[:6]
    host_bridge, net_bridge = f"dcbr{suffix}", f"dcvbr{suffix}"
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    pool = system_conn.storagePoolCreateXML(
        f"<pool type='dir'><name>domus-caps-{suffix}</name><target><path>{pool_dir}</path></target></pool>", 0
    )
    try:
        network = system_conn.networkCreateXML(
            f"<network><name>domus-caps-{suffix}</name><bridge name='{net_bridge}'/></network>"
        )
        try:
            with _host_bridge(host_bridge):
                resources = read_host_resources(system_conn, local=local)
        finally:
            network.destroy()
    finally:
        pool.destroy()

    pools = {p.name: p for p in resources.pools}
    ours = pools[f"domus-caps-{suffix}"]
    assert (ours.type, ours.active, ours.path) == ("dir", True, str(pool_dir))
    # Created (transient): running, not persistent, so it cannot start with the host.
    assert (ours.state, ours.persistent, ours.autostart, ours.volume_count) == ("running", False, False, 0)
    # This host's libvirt says which types it runs (its storage pool capabilities).
    assert resources.pool_types[0] == "dir" and set(resources.pool_types) <= set(POOL_TYPES)
    assert ours.capacity_bytes > 0 and 0 < ours.available_bytes <= ours.capacity_bytes
    networks = {n.name: n for n in resources.networks}
    assert networks[f"domus-caps-{suffix}"] == NetworkInfo(
        name=f"domus-caps-{suffix}", active=True, forward="isolated", bridge=net_bridge, persistent=False
    )
    assert host_bridge in resources.bridges
    # The isolated network's bridge exists on the host, but it belongs to libvirt.
    assert net_bridge not in resources.bridges


@pytest.mark.libvirt
@needs_system_libvirt
def test_read_host_capabilities_on_qemu_system_with_tcg(system_conn: libvirt.virConnect) -> None:
    caps = read_host_capabilities(system_conn, accel="tcg")

    assert caps.hypervisor == "qemu"
    assert caps.modes[0] == ModeSupport(mode="hvm", available=True, accel="software", note=NOTE_TCG)
    assert any(g.os_type == "hvm" and g.arch == caps.arch for g in caps.guests)
    # Domain capabilities for virttype qemu were read: QEMU always offers these.
    assert caps.max_vcpus is not None and caps.max_vcpus >= 1
    assert "vnc" in caps.graphics and "virtio" in caps.disk_buses
    if caps.arch in ("i686", "x86_64"):
        assert caps.firmware[0] == "bios"
