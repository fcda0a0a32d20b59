"""The network service's DHCP changes against a stand-in for libvirt's network object, for what
neither the test driver nor a healthy libvirtd does: a running network that refuses a change
(its dnsmasq cannot be told), and a change that fails half-way. And the event hub on drivers
without storage pool or network events."""

from __future__ import annotations

from collections import Counter
from typing import Any

import libvirt
import pytest

from agent.errors import InvalidSpec
from agent.events import EventHub
from agent.networks import update_dhcp_sync
from agent.netxml import network_info
from agent.protocol import DhcpHost, DhcpSettings

XML = """<network>
  <name>lab</name>
  <forward mode='nat'/>
  <bridge name='virbr7'/>
  <ip address='192.168.160.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.160.100' end='192.168.160.200'/>
      <host mac='52:54:00:00:00:01' ip='192.168.160.10'/>
    </dhcp>
  </ip>
</network>"""
LIVE = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG


def _error(message: str) -> libvirt.libvirtError:
    libvirt.virResetLastError()  # (the error's code comes from libvirt's last one: none)
    return libvirt.libvirtError(message)


class FakeNetwork:
    """Records each update; refuses the live ones, or the `fail_at`-th of all."""

    def __init__(self, *, refuse_live: bool = False, fail_at: int | None = None) -> None:
        self.refuse_live = refuse_live
        self.fail_at = fail_at
        self.updates: list[tuple[str, str, int, str, int]] = []

    def isActive(self) -> int:
        return 1

    def isPersistent(self) -> int:
        return 1

    def autostart(self) -> int:
        return 0

    def XMLDesc(self, flags: int = 0) -> str:
        return XML

    def update(self, command: int, section: int, parent: int, xml: str, flags: int) -> int:
        commands = {
            libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST: "add",
            libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE: "delete",
        }
        sections = {
            libvirt.VIR_NETWORK_SECTION_IP_DHCP_RANGE: "range",
            libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST: "host",
        }
        if self.refuse_live and flags & LIVE:
            raise _error("dnsmasq could not be told")
        if self.fail_at is not None and len(self.updates) == self.fail_at:
            self.fail_at = None
            raise _error("no room for another host")
        self.updates.append((commands[command], sections[section], parent, xml, flags))
        return 0


class FakeConn:
    def __init__(self, net: FakeNetwork) -> None:
        self.net = net

    def networkLookupByName(self, name: str) -> Any:
        assert name == "lab"
        return self.net


NEW = DhcpSettings(
    dhcp_start="192.168.160.100",
    dhcp_end="192.168.160.200",
    hosts=[
        DhcpHost(mac="52:54:00:00:00:01", ip="192.168.160.11"),  # moved
        DhcpHost(mac="52:54:00:00:00:02", ip="192.168.160.12"),
    ],
)


def test_a_running_network_gets_each_change_live_and_in_its_definition() -> None:
    net = FakeNetwork()
    result = update_dhcp_sync(FakeConn(net), "lab", NEW)
    assert [(c, s, flags) for c, s, _p, _x, flags in net.updates] == [
        ("delete", "host", LIVE | CONFIG),
        ("add", "host", LIVE | CONFIG),
        ("add", "host", LIVE | CONFIG),
    ]
    assert result.detail.endswith("in effect now and from its next start")


def test_what_the_running_network_refuses_is_kept_for_its_next_start() -> None:
    net = FakeNetwork(refuse_live=True)
    result = update_dhcp_sync(FakeConn(net), "lab", NEW)
    assert [(c, s, flags) for c, s, _p, _x, flags in net.updates] == [
        ("delete", "host", CONFIG),
        ("add", "host", CONFIG),
        ("add", "host", CONFIG),
    ]
    assert result.detail == (
        "network 'lab': DHCP range 192.168.160.100 to 192.168.160.200, 2 static host(s); saved for its "
        "next start only, as the running network did not take it (dnsmasq could not be told): stop and "
        "start the network to apply it"
    )


def test_a_change_that_fails_half_way_is_undone_before_the_definition_alone_is_changed() -> None:
    net = FakeNetwork(fail_at=2)  # the host deleted, the moved one added, then the new one fails ...
    result = update_dhcp_sync(FakeConn(net), "lab", NEW)
    # ... so both are undone, in reverse order; then the definition alone takes the change.
    assert [(c, x, flags) for c, _s, _p, x, flags in net.updates] == [
        ("delete", '<host mac="52:54:00:00:00:01" ip="192.168.160.10"/>', LIVE | CONFIG),
        ("add", '<host mac="52:54:00:00:00:01" ip="192.168.160.11"/>', LIVE | CONFIG),
        ("delete", '<host mac="52:54:00:00:00:01" ip="192.168.160.11"/>', LIVE | CONFIG),  # undone
        ("add", '<host mac="52:54:00:00:00:01" ip="192.168.160.10"/>', LIVE | CONFIG),  # undone
        ("delete", '<host mac="52:54:00:00:00:01" ip="192.168.160.10"/>', CONFIG),
        ("add", '<host mac="52:54:00:00:00:01" ip="192.168.160.11"/>', CONFIG),
        ("add", '<host mac="52:54:00:00:00:02" ip="192.168.160.12"/>', CONFIG),
    ]
    assert "saved for its next start only, as the running network did not take it (no room" in result.detail


def test_a_change_that_fails_in_the_definition_too_is_undone_and_refused() -> None:
    class Failing(FakeNetwork):
        def update(self, command: int, section: int, parent: int, xml: str, flags: int) -> int:
            if "192.168.160.12" in xml and command == libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST:
                raise _error("refused")
            return super().update(command, section, parent, xml, flags)

    net = Failing()
    with pytest.raises(Exception, match="the DHCP of network 'lab' was not changed: refused") as info:
        update_dhcp_sync(FakeConn(net), "lab", NEW)
    assert type(info.value).__name__ == "LibvirtFailure"
    # Every change made was undone, live and in the definition: each host added was deleted
    # again, each host deleted was added back.
    for flags in (LIVE | CONFIG, CONFIG):
        made = [(command, xml) for command, _s, _p, xml, f in net.updates if f == flags]
        assert made, flags
        assert Counter(x for c, x in made if c == "add") == Counter(x for c, x in made if c == "delete")


def test_settings_that_do_not_fit_the_network_are_refused_by_field() -> None:
    net = FakeNetwork()
    with pytest.raises(InvalidSpec) as info:
        update_dhcp_sync(
            FakeConn(net),
            "lab",
            DhcpSettings(hosts=[DhcpHost(mac="52:54:00:00:00:03", ip="192.168.160.13")]),
        )
    assert info.value.detail == "hosts: static hosts need a DHCP range"
    assert net.updates == []
    assert network_info(XML, active=True, autostart=False, persistent=True).hosts == [
        DhcpHost(mac="52:54:00:00:00:01", ip="192.168.160.10")
    ]


# -- event registration --------------------------------------------------------------------------
class EventConn:
    """A connection whose driver has domain events, and storage pool or network events or not."""

    def __init__(self, *, pools: bool, networks: bool) -> None:
        self.pools, self.networks = pools, networks
        self.next_id = 0
        self.deregistered: list[tuple[str, int]] = []

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def domainEventRegisterAny(self, *_args: Any) -> int:
        return self._id()

    def storagePoolEventRegisterAny(self, *_args: Any) -> int:
        if not self.pools:
            raise _error("this driver has no storage pool events")
        return self._id()

    def networkEventRegisterAny(self, *_args: Any) -> int:
        if not self.networks:
            raise _error("this driver has no network events")
        return self._id()

    def domainEventDeregisterAny(self, callback_id: int) -> None:
        self.deregistered.append(("domain", callback_id))

    def storagePoolEventDeregisterAny(self, callback_id: int) -> None:
        self.deregistered.append(("pool", callback_id))

    def networkEventDeregisterAny(self, callback_id: int) -> None:
        self.deregistered.append(("network", callback_id))


DOMAIN_CALLBACKS = ["domain"] * 5  # lifecycle, 3 device events, the guest agent's lifecycle


@pytest.mark.parametrize(
    ("pools", "networks", "kinds", "warned"),
    [
        (True, True, [*DOMAIN_CALLBACKS, "pool", "pool", "network"], []),
        (False, True, [*DOMAIN_CALLBACKS, "network"], ["no storage pool events"]),
        (True, False, [*DOMAIN_CALLBACKS, "pool", "pool"], ["no network events"]),
    ],
)
def test_a_driver_without_network_or_pool_events_breaks_nothing(
    pools: bool, networks: bool, kinds: list[str], warned: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    hub = EventHub()
    conn = EventConn(pools=pools, networks=networks)
    with caplog.at_level("WARNING", logger="agent.events"):
        hub._register(conn)
    assert [kind for _conn, kind, _id in hub._registrations] == kinds
    assert [r.getMessage().split(" from libvirt")[0] for r in caplog.records] == warned
    hub.detach(conn)  # each callback deregistered the way it was registered
    assert [kind for kind, _id in conn.deregistered] == kinds
    assert hub._registrations == []
