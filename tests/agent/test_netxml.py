"""Virtual networks without a daemon: their XML (golden files and libvirt's own schema), how
libvirt's XML (Domus's own and virsh's) is read back, the changes a new DHCP makes, and a
domain's network cards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from agent.netxml import (
    DhcpChange,
    dhcp_plan,
    domain_nics,
    network_differences,
    network_info,
    network_ipv4,
    network_xml,
    nic_uses,
)
from agent.protocol import DhcpHost, DhcpSettings, NetworkInfo, NetworkSpec, NicInfo

GOLDEN = Path(__file__).parent / "golden" / "networks"
UPDATE = os.environ.get("DOMUS_UPDATE_GOLDEN") == "1"
SCHEMA = Path("/usr/share/libvirt/schemas/network.rng")

HOSTS = [
    {"mac": "52:54:00:aa:bb:01", "ip": "192.168.150.10", "name": "web"},
    {"mac": "52:54:00:aa:bb:02", "ip": "192.168.150.11"},
]
# One per mode, with all the fields it takes, and the smallest isolated one (no address at all).
CASES: dict[str, dict[str, Any]] = {
    "nat": {
        "mode": "nat",
        "bridge": "virbr-lab",
        "ipv4": "192.168.150.1/24",
        "ipv6": "fd00:150::1/64",
        "forward_dev": "eth0",
        "dhcp_start": "192.168.150.100",
        "dhcp_end": "192.168.150.200",
        "hosts": HOSTS,
    },
    "route": {
        "mode": "route",
        "ipv4": "10.20.0.1/16",
        "dhcp_start": "10.20.1.0",
        "dhcp_end": "10.20.1.255",
    },
    "open": {"mode": "open", "ipv4": "172.30.5.1/28"},  # libvirt takes no forward dev in open mode
    "isolated": {
        "mode": "isolated",
        "bridge": "virbr-iso",
        "ipv4": "192.168.151.1/24",
        "dhcp_start": "192.168.151.50",
        "dhcp_end": "192.168.151.99",
    },
    "isolated_no_ipv4": {"mode": "isolated"},
    "isolated_ipv6_only": {"mode": "isolated", "ipv6": "fd00:151::1/64"},
    "bridge": {"mode": "bridge", "bridge": "br0"},
}


def spec(case: str, **changes: Any) -> NetworkSpec:
    return NetworkSpec.model_validate({"name": f"n-{case}", **CASES[case], **changes})


def _validate(path: Path) -> str | None:
    """None when `path` is a valid network XML, else `virt-xml-validate`'s complaint."""
    result = subprocess.run(
        ["virt-xml-validate", str(path), "network"], capture_output=True, text=True, check=False
    )
    return None if result.returncode == 0 else result.stderr + result.stdout


needs_validator = pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None or not SCHEMA.exists(),
    reason="virt-xml-validate / xmllint / libvirt schemas are not installed (scripts/bootstrap.sh installs them)",
)


def test_every_mode_has_a_case() -> None:
    assert {CASES[case]["mode"] for case in CASES} == {"nat", "route", "open", "isolated", "bridge"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_network_xml_matches_golden(case: str) -> None:
    xml = network_xml(spec(case))
    golden = GOLDEN / f"{case}.xml"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(xml)
    assert xml == golden.read_text(), f"re-run with DOMUS_UPDATE_GOLDEN=1 to accept: {case}"


def test_every_network_golden_file_has_a_case() -> None:
    assert sorted(p.name.removesuffix(".xml") for p in GOLDEN.glob("*.xml")) == sorted(CASES)


@needs_validator
@pytest.mark.parametrize("case", sorted(CASES))
def test_network_xml_passes_libvirt_schema(case: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.xml"
    path.write_text(network_xml(spec(case)))
    assert _validate(path) is None


@needs_validator
def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    """The validator really judges: a forward mode libvirt does not know is refused."""
    root = etree.fromstring(network_xml(spec("route")).encode())
    forward = root.find("forward")
    assert forward is not None
    forward.set("mode", "teleport")
    path = tmp_path / "bad.xml"
    path.write_bytes(etree.tostring(root))
    assert _validate(path) is not None


def _attrib(element: etree._Element) -> dict[str, str]:
    return {str(key): str(value) for key, value in element.attrib.items()}


def _attrs(root: etree._Element, path: str) -> dict[str, str]:
    element = root.find(path)
    assert element is not None, path
    return _attrib(element)


def test_network_xml_places_each_field() -> None:
    nat = etree.fromstring(network_xml(spec("nat")).encode())
    assert _attrs(nat, "forward") == {"mode": "nat", "dev": "eth0"}
    assert _attrs(nat, "bridge") == {"name": "virbr-lab", "stp": "on", "delay": "0"}
    ip4, ip6 = nat.findall("ip")
    assert _attrib(ip4) == {"address": "192.168.150.1", "netmask": "255.255.255.0"}
    assert _attrs(ip4, "dhcp/range") == {"start": "192.168.150.100", "end": "192.168.150.200"}
    assert [_attrib(h) for h in ip4.iterfind("dhcp/host")] == HOSTS
    assert _attrib(ip6) == {"family": "ipv6", "address": "fd00:150::1", "prefix": "64"}
    isolated = etree.fromstring(network_xml(spec("isolated_no_ipv4")).encode())
    assert [el.tag for el in isolated] == ["name"]  # no <forward>: isolated; libvirt names the bridge
    bridge = etree.fromstring(network_xml(spec("bridge")).encode())
    assert [(el.tag, _attrib(el)) for el in bridge][1:] == [
        ("forward", {"mode": "bridge"}),
        ("bridge", {"name": "br0"}),
    ]
    route = etree.fromstring(network_xml(spec("route")).encode())
    assert _attrs(route, "ip")["netmask"] == "255.255.0.0"
    assert route.find("ip/dhcp/host") is None


# -- reading back --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_network_reads_back_as_it_was_asked(case: str) -> None:
    asked = spec(case)
    info = network_info(network_xml(asked), active=True, autostart=True, persistent=True)
    assert info == NetworkInfo(
        name=asked.name,
        active=True,
        forward=asked.mode,
        bridge=asked.bridge,
        autostart=True,
        persistent=True,
        ipv4=asked.ipv4,
        ipv6=asked.ipv6,
        dhcp_start=asked.dhcp_start,
        dhcp_end=asked.dhcp_end,
        hosts=asked.hosts,
        forward_dev=asked.forward_dev,
    )
    assert network_differences(info, asked) == []


def test_a_transient_network_never_starts_with_the_host() -> None:
    info = network_info(network_xml(spec("nat")), active=True, autostart=True, persistent=False)
    assert (info.autostart, info.persistent) == (False, False)


# What libvirt writes for the networks virsh (or virt-manager) made.
VIRSH_DEFAULT = """<network>
  <name>default</name>
  <uuid>ab5d2465-dbb8-40de-a1bd-7672a6d4772d</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:1b:85:68'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'>
        <lease expiry='1' unit='hours'/>
      </range>
      <range start='192.168.122.20' end='192.168.122.29'/>
      <host mac='52:54:00:AB:CD:EF' name='db' ip='192.168.122.5'/>
      <host mac='52:54:00:ab:cd:00' name='db.example.com' ip='192.168.122.6'/>
      <host name='nomac' ip='192.168.122.7'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'>
    <dhcp>
      <range start='2001:db8:ca2:2:1::10' end='2001:db8:ca2:2:1::ff'/>
      <host id='0:4:7e:7d:f0:7d:a8:bc:c5:d2:13:32:11:ed:16:ea:84:63' ip='2001:db8:ca2:2:3::1'/>
    </dhcp>
  </ip>
</network>
"""


def test_a_network_virsh_made_is_read() -> None:
    info = network_info(VIRSH_DEFAULT, active=False, autostart=True, persistent=True)
    assert info == NetworkInfo(
        name="default",
        active=False,
        forward="nat",
        bridge="virbr0",
        autostart=True,
        persistent=True,
        ipv4="192.168.122.1/24",
        ipv6="2001:db8:ca2:2::1/64",
        dhcp_start="192.168.122.2",  # the first range
        dhcp_end="192.168.122.254",
        # MACs as the console spells them; a name the console cannot take is left out, not the
        # host; a host without a MAC is not shown at all (nor is IPv6's DHCP).
        hosts=[
            DhcpHost(mac="52:54:00:ab:cd:ef", ip="192.168.122.5", name="db"),
            DhcpHost(mac="52:54:00:ab:cd:00", ip="192.168.122.6"),
        ],
    )
    # What the console is sent must be what it accepts again.
    assert NetworkInfo.model_validate_json(info.model_dump_json()) == info


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        # No <forward>: isolated; a bare <forward/>: NAT (libvirt's default mode).
        ("<network><name>a</name><bridge name='virbr9'/></network>", {"forward": "isolated", "ipv4": None}),
        ("<network><name>a</name><forward/></network>", {"forward": "nat"}),
        (
            "<network><name>a</name><forward mode='route' dev='eth1'/>"
            "<ip address='10.1.2.1' prefix='23'/></network>",
            {"forward": "route", "forward_dev": "eth1", "ipv4": "10.1.2.1/23"},
        ),
        # No netmask nor prefix: the classful one, as libvirt takes it.
        ("<network><name>a</name><ip address='10.9.8.1'/></network>", {"ipv4": "10.9.8.1/8"}),
        ("<network><name>a</name><ip address='172.16.0.1'/></network>", {"ipv4": "172.16.0.1/16"}),
        (
            "<network><name>a</name><ip family='ipv6' address='fd00::1'/></network>",
            {"ipv4": None, "ipv6": "fd00::1/64"},
        ),
        (
            "<network><name>sriov</name><forward mode='hostdev' managed='yes'>"
            "<pf dev='eth3'/></forward></network>",
            {"forward": "hostdev", "bridge": None},
        ),
        (
            "<network><name>mv</name><forward mode='passthrough'><interface dev='eth10'/>"
            "<interface dev='eth11'/></forward></network>",
            {"forward": "passthrough"},
        ),
        ("<network><name>a</name><bridge stp='on' delay='0'/></network>", {"bridge": None}),
    ],
)
def test_other_shapes_of_networks(xml: str, expected: dict[str, Any]) -> None:
    info = network_info(xml, active=True, autostart=False, persistent=True)
    for field, value in expected.items():
        assert getattr(info, field) == value, field


def test_differences_are_said_field_by_field() -> None:
    asked = spec("nat")
    existing = network_info(network_xml(asked), active=True, autostart=False, persistent=True)
    assert network_differences(existing, asked) == []  # autostart, running: not what makes it
    other = spec("nat", mode="route", ipv4="192.168.150.1/25", dhcp_start=None, dhcp_end=None, hosts=[])
    assert network_differences(existing, other) == [
        "mode nat, not route",
        "ipv4 192.168.150.1/24, not 192.168.150.1/25",
        "dhcp_start 192.168.150.100, not none",
        "dhcp_end 192.168.150.200, not none",
        "hosts 52:54:00:aa:bb:01=192.168.150.10, 52:54:00:aa:bb:02=192.168.150.11, not none",
    ]
    # A bridge name counts only when asked: libvirt picks one otherwise.
    unnamed = spec("isolated", bridge=None)
    named = network_info(network_xml(spec("isolated")), active=True, autostart=False, persistent=True)
    assert network_differences(named, unnamed) == []
    assert network_differences(named, spec("isolated", bridge="virbr-x")) == ["bridge virbr-iso, not virbr-x"]


# -- a new DHCP ---------------------------------------------------------------------------------
def _settings(**fields: Any) -> DhcpSettings:
    return DhcpSettings.model_validate(fields)


def test_the_same_dhcp_changes_nothing() -> None:
    nat = spec("nat")
    plan = dhcp_plan(network_xml(nat), nat.dhcp())
    assert plan is not None and (plan.parent_index, plan.changes, plan.kept_hosts) == (0, [], 0)


def test_a_new_dhcp_deletes_first_then_adds() -> None:
    xml = network_xml(spec("nat"))
    moved = {"mac": "52:54:00:aa:bb:02", "ip": "192.168.150.12"}
    new = _settings(
        dhcp_start="192.168.150.50",
        dhcp_end="192.168.150.99",
        hosts=[HOSTS[0], moved, {"mac": "52:54:00:aa:bb:03", "ip": "192.168.150.13", "name": "db"}],
    )
    plan = dhcp_plan(xml, new)
    assert plan is not None
    assert plan.changes == [
        DhcpChange("delete", "host", '<host mac="52:54:00:aa:bb:02" ip="192.168.150.11"/>'),
        DhcpChange("delete", "range", '<range start="192.168.150.100" end="192.168.150.200"/>'),
        DhcpChange("add", "range", '<range start="192.168.150.50" end="192.168.150.99"/>'),
        DhcpChange("add", "host", '<host mac="52:54:00:aa:bb:02" ip="192.168.150.12"/>'),
        DhcpChange("add", "host", '<host mac="52:54:00:aa:bb:03" ip="192.168.150.13" name="db"/>'),
    ]
    assert plan.changes[0].inverse() == DhcpChange("add", "host", plan.changes[0].xml)


def test_no_dhcp_at_all_removes_range_and_hosts() -> None:
    plan = dhcp_plan(network_xml(spec("nat")), DhcpSettings())
    assert plan is not None
    assert [(c.command, c.section) for c in plan.changes] == [
        ("delete", "host"),
        ("delete", "host"),
        ("delete", "range"),
    ]


def test_what_the_console_is_not_shown_is_kept() -> None:
    """virsh's extra range goes (the console shows one range, and the one asked is what it
    gets); a host it is shown without its dotted name stays as it is when sent back as shown;
    one without a MAC (never shown) is kept; the changes name the <ip> of IPv4, the first."""
    shown = network_info(VIRSH_DEFAULT, active=True, autostart=False, persistent=True)
    plan = dhcp_plan(
        VIRSH_DEFAULT, _settings(dhcp_start=shown.dhcp_start, dhcp_end=shown.dhcp_end, hosts=shown.hosts)
    )
    assert plan is not None and (plan.parent_index, plan.kept_hosts) == (0, 1)
    assert plan.changes == [
        DhcpChange("delete", "range", '<range start="192.168.122.20" end="192.168.122.29"/>'),
    ]
    root = etree.fromstring(VIRSH_DEFAULT.encode())
    ipv4, ipv6 = root.findall("ip")
    root.remove(ipv6)
    root.insert(list(root).index(ipv4), ipv6)  # the IPv6 <ip> first: the IPv4 one is index 1
    reordered = dhcp_plan(etree.tostring(root, encoding="unicode"), DhcpSettings())
    assert reordered is not None and reordered.parent_index == 1


def test_a_range_with_a_lease_is_deleted_as_libvirt_has_it() -> None:
    plan = dhcp_plan(VIRSH_DEFAULT, DhcpSettings())
    assert plan is not None
    deleted_ranges = [c.xml for c in plan.changes if c.section == "range"]
    assert deleted_ranges[0] == (
        '<range start="192.168.122.2" end="192.168.122.254">\n        <lease expiry="1" unit="hours"/>\n      </range>'
    )


def test_no_ipv4_no_dhcp() -> None:
    assert dhcp_plan(network_xml(spec("isolated_ipv6_only")), DhcpSettings()) is None
    assert dhcp_plan(network_xml(spec("bridge")), DhcpSettings()) is None
    assert network_ipv4(network_xml(spec("bridge"))) is None
    assert network_ipv4(network_xml(spec("nat"))) == "192.168.150.1/24"


# -- a domain's network cards ----------------------------------------------------------------------
DOMAIN = """<domain type='kvm' id='3'>
  <name>web</name>
  <devices>
    <disk type='file' device='disk'><source file='/x.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='lab' portid='9b2a4a1e-0b1c-4c1c-9a50-7c0b5d1e0f00' bridge='virbr-lab'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:AB:CD:EF'/>
      <source bridge='br0'/>
      <model type='e1000'/>
      <link state='down'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:00:00:03'/>
      <source dev='eth0' mode='vepa'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:00:00:04'/>
      <link state='up'/>
    </interface>
  </devices>
</domain>"""


def test_domain_nics() -> None:
    assert domain_nics(etree.fromstring(DOMAIN.encode())) == [
        NicInfo(mac="52:54:00:12:34:56", source="network", name="lab", model="virtio", target="vnet0"),
        NicInfo(mac="52:54:00:ab:cd:ef", source="bridge", name="br0", model="e1000", link="down"),
        NicInfo(mac="52:54:00:00:00:03", source="other"),
        NicInfo(mac="52:54:00:00:00:04", source="other"),
    ]
    assert domain_nics(etree.fromstring(b"<domain><name>x</name></domain>")) == []


def test_who_uses_a_network() -> None:
    root = etree.fromstring(DOMAIN.encode())
    assert nic_uses(root, "lab", None)
    assert not nic_uses(root, "other", None)
    assert nic_uses(root, "other", "br0")  # a card on the network's own bridge, named directly
    assert not nic_uses(root, "other", "virbr-other")
