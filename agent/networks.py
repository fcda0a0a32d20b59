"""libvirt virtual networks: define (then start, autostart), start, stop, autostart, change
their DHCP (live when they run), delete; and who uses one.

The `*_sync` functions are blocking libvirt calls; `NetworkService` runs them through
`LibvirtConnection.call` and says when networks changed, so that subscribers hear of it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable

import libvirt
from pydantic import ValidationError
from pydantic_core import InitErrorDetails

from agent.capabilities import SYS_CLASS_NET, sysfs_bridges
from agent.connection import LibvirtConnection
from agent.errors import Conflict, InvalidSpec, NotFound, from_libvirt, is_connection_lost
from agent.netxml import (
    DhcpChange,
    DhcpPlan,
    dhcp_plan,
    network_differences,
    network_info,
    network_ipv4,
    network_xml,
    nic_uses,
)
from agent.netxml import parse as parse_xml
from agent.protocol import DhcpSettings, NetworkInfo, NetworkResult, NetworkSpec

log = logging.getLogger(__name__)

NetworksChanged = Callable[[], None]

_COMMANDS = {
    "add": libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
    "delete": libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
}
_SECTIONS = {
    "range": libvirt.VIR_NETWORK_SECTION_IP_DHCP_RANGE,
    "host": libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
}
_LIVE = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
_CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG


# -- reading -------------------------------------------------------------------------------------
def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virNetwork:
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            raise NotFound(f"no network {name!r} on this host") from err
        raise


def _lookup_or_none(conn: libvirt.virConnect, name: str) -> libvirt.virNetwork | None:
    try:
        return _lookup(conn, name)
    except NotFound:
        return None


def read_network(net: libvirt.virNetwork) -> NetworkInfo:
    """Blocking: one network as it runs (as it is defined, when it does not)."""
    persistent = bool(net.isPersistent())
    return network_info(
        net.XMLDesc(0),
        active=bool(net.isActive()),
        autostart=persistent and bool(net.autostart()),
        persistent=persistent,
    )


def _definition_xml(net: libvirt.virNetwork, persistent: bool) -> str:
    """The definition a network starts with next (the running one for a transient network, or
    where libvirt cannot tell them apart: the test driver)."""
    if persistent:
        try:
            return str(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                raise
    return str(net.XMLDesc(0))


def _other_networks(conn: libvirt.virConnect, name: str) -> list[NetworkInfo]:
    others = []
    for net in conn.listAllNetworks(0):
        try:
            if net.name() != name:
                others.append(network_info(net.XMLDesc(0), active=False, autostart=False, persistent=True))
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            # Undefined since the listing: it clashes with nothing.
    return others


def network_users(conn: libvirt.virConnect, info: NetworkInfo) -> list[str]:
    """Names of the running domains with a network card on the network (by its name, or on the
    bridge it owns, which a card can name directly)."""
    bridge = info.bridge if info.forward != "bridge" else None
    users = []
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            if nic_uses(parse_xml(dom.XMLDesc(0)), info.name, bridge):
                users.append(str(dom.name()))
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise  # stopped and gone since the listing: it uses nothing any more
    return sorted(users)


# -- checks before a define ----------------------------------------------------------------------
def _refuse_clashes(conn: libvirt.virConnect, spec: NetworkSpec, *, local: bool, net_dir: str) -> None:
    """What libvirt would take and fail on later (at start, or with a message about another
    field), refused up front and by field: a bridge to join that the host does not have, a
    bridge to make that exists already, a subnet another network has."""
    if spec.mode == "bridge":
        if local and spec.bridge not in (bridges := sysfs_bridges(net_dir)):
            raise InvalidSpec(
                f"bridge: this host has no bridge {spec.bridge!r} "
                f"(its bridges: {', '.join(bridges) or 'none'})"
            )
        return
    others = _other_networks(conn, spec.name)
    if spec.bridge is not None:
        owner = next((n for n in others if n.bridge == spec.bridge), None)
        if owner is not None:
            raise InvalidSpec(f"bridge: {spec.bridge!r} is already the bridge of network {owner.name!r}")
        if local and os.path.lexists(os.path.join(net_dir, spec.bridge)):
            raise InvalidSpec(
                f"bridge: this host already has an interface {spec.bridge!r}; name another bridge, "
                "or leave it out for libvirt to pick one (bridge mode joins an existing bridge)"
            )
    for field, mine in (("ipv4", spec.ipv4), ("ipv6", spec.ipv6)):
        if mine is None:
            continue
        subnet = ipaddress.ip_interface(mine).network
        for other in others:
            theirs = getattr(other, field)
            if theirs is not None and subnet.overlaps(ipaddress.ip_interface(theirs).network):
                raise InvalidSpec(
                    f"{field}: {subnet} overlaps the subnet of network {other.name!r} ({theirs}); "
                    "each network needs a subnet of its own"
                )


# -- operations ----------------------------------------------------------------------------------
def _undo_define(net: libvirt.virNetwork, name: str) -> None:
    """A define that failed half-way (start, autostart): take the definition back, so that a
    retry starts afresh and an error never leaves a network nobody asked for."""
    try:
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
    except libvirt.libvirtError as err:
        log.warning("could not take back the definition of network %s: %s", name, err)


def define_network_sync(
    conn: libvirt.virConnect, spec: NetworkSpec, *, local: bool, net_dir: str = SYS_CLASS_NET
) -> tuple[NetworkResult, bool]:
    """Define (then start, autostart as asked); returns the result and whether this call
    defined it. The same network defined again is answered as it is: retries are harmless."""
    xml = network_xml(spec)
    existing = _lookup_or_none(conn, spec.name)
    if existing is not None:
        info = read_network(existing)
        differences = network_differences(info, spec)
        if differences:
            raise Conflict(
                f"network {spec.name!r} already exists with another definition ({'; '.join(differences)})"
            )
        return NetworkResult(network=info, detail=f"network {spec.name!r} is already defined"), False
    _refuse_clashes(conn, spec, local=local, net_dir=net_dir)
    net = conn.networkDefineXML(xml)
    done = ["defined"]
    step = ""
    try:
        if spec.start:
            step = "starting it"
            net.create()
            done.append("started")
        if spec.autostart:
            step = "setting it to start with the host"
            net.setAutostart(1)
            done.append("set to start with the host")
    except libvirt.libvirtError as err:
        _undo_define(net, spec.name)
        if is_connection_lost(err):
            raise
        # A start that fails (the subnet on a host interface, no dnsmasq) is an answer for people.
        raise from_libvirt(err, what=f"network {spec.name!r} was not defined: {step} failed") from err
    except BaseException:
        _undo_define(net, spec.name)
        raise
    log.info("network %s (%s): %s", spec.name, spec.mode, ", ".join(done))
    return NetworkResult(network=read_network(net), detail=f"network {spec.name!r}: {', '.join(done)}"), True


def start_network_sync(conn: libvirt.virConnect, name: str) -> NetworkResult:
    net = _lookup(conn, name)
    if net.isActive():
        return NetworkResult(network=read_network(net), detail=f"network {name!r} was already running")
    net.create()
    log.info("started network %s", name)
    return NetworkResult(network=read_network(net), detail=f"network {name!r} started")


def _in_use(name: str, users: list[str], doing: str) -> Conflict:
    return Conflict(
        f"network {name!r} is used by running domain(s) {', '.join(users)}: shut them off, "
        f"or move their network cards to another network, before {doing} it"
    )


def _destroy(net: libvirt.virNetwork) -> None:
    try:
        net.destroy()
    except libvirt.libvirtError as err:
        # It stopped by another hand since isActive(): that is the goal.
        if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or net.isActive():
            raise


def stop_network_sync(conn: libvirt.virConnect, name: str) -> NetworkResult:
    net = _lookup(conn, name)
    if not net.isActive():
        return NetworkResult(network=read_network(net), detail=f"network {name!r} was already stopped")
    users = network_users(conn, read_network(net))
    if users:
        raise _in_use(name, users, "stopping")
    persistent = bool(net.isPersistent())
    _destroy(net)
    log.info("stopped network %s", name)
    if not persistent:  # a transient network exists only while it runs
        return NetworkResult(network=None, detail=f"network {name!r} stopped (it was transient: it is gone)")
    return NetworkResult(network=read_network(net), detail=f"network {name!r} stopped")


def autostart_network_sync(conn: libvirt.virConnect, name: str, autostart: bool) -> NetworkResult:
    net = _lookup(conn, name)
    if not net.isPersistent():
        raise Conflict(f"network {name!r} is transient: only a defined network can start with the host")
    net.setAutostart(1 if autostart else 0)
    log.info("network %s autostart %s", name, "on" if autostart else "off")
    what = "starts with the host" if autostart else "no longer starts with the host"
    return NetworkResult(network=read_network(net), detail=f"network {name!r} {what}")


def delete_network_sync(conn: libvirt.virConnect, name: str) -> NetworkResult:
    """Stop (if running), undefine. Refused while a running domain has a card on it."""
    net = _lookup(conn, name)
    if net.isActive():
        users = network_users(conn, read_network(net))
        if users:
            raise _in_use(name, users, "deleting")
    persistent = bool(net.isPersistent())
    done = []
    if net.isActive():
        _destroy(net)
        done.append("stopped")
    if persistent:
        net.undefine()
        done.append("undefined")
    log.info("deleted network %s: %s", name, ", ".join(done))
    return NetworkResult(network=None, detail=f"network {name!r}: {', '.join(done) or 'gone'}")


# -- DHCP ----------------------------------------------------------------------------------------
def _refusal(problems: list[InitErrorDetails]) -> InvalidSpec:
    """The problems `dhcp_problems` found, worded as the API words a refused body."""
    errors = ValidationError.from_exception_data("DhcpSettings", problems).errors()
    return InvalidSpec("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))


def _summary(settings: DhcpSettings, kept: int) -> str:
    if settings.dhcp_start is not None:
        parts = [f"range {settings.dhcp_start} to {settings.dhcp_end}"]
    else:
        parts = ["no range"]
    parts.append(f"{len(settings.hosts)} static host(s)")
    summary = ", ".join(parts)
    if kept:
        summary += f" (and {kept} static host(s) Domus cannot show, kept as they were)"
    return summary


def _update(net: libvirt.virNetwork, change: DhcpChange, parent: int, flags: int) -> None:
    net.update(_COMMANDS[change.command], _SECTIONS[change.section], parent, change.xml, flags)


def _apply(net: libvirt.virNetwork, plan: DhcpPlan, flags: int) -> None:
    """Each change of `plan`; if one fails, those made are undone (each is one libvirt call, so
    a half-changed DHCP is never left), then the error is raised."""
    made: list[DhcpChange] = []
    try:
        for change in plan.changes:
            _update(net, change, plan.parent_index, flags)
            made.append(change)
    except libvirt.libvirtError:
        for change in reversed(made):
            with contextlib.suppress(libvirt.libvirtError):
                _update(net, change.inverse(), plan.parent_index, flags)
        raise


def update_dhcp_sync(conn: libvirt.virConnect, name: str, settings: DhcpSettings) -> NetworkResult:
    """Give the network the DHCP range and static hosts of `settings`: in its definition, and in
    the running network too when it runs (dnsmasq is told at once). What the running network
    cannot take is kept for its next start, and the answer says so."""
    net = _lookup(conn, name)
    active, persistent = bool(net.isActive()), bool(net.isPersistent())
    defined = _definition_xml(net, persistent)
    ipv4 = network_ipv4(defined)
    problems = settings.dhcp_problems(ipv4)
    if problems:
        raise _refusal(problems)
    plan = dhcp_plan(defined, settings)
    if plan is None or not plan.changes:
        return NetworkResult(network=read_network(net), detail=f"network {name!r}: DHCP unchanged")
    summary = _summary(settings, plan.kept_hosts)
    what = f"the DHCP of network {name!r} was not changed"
    live_plan: DhcpPlan | None = None
    if active and persistent:
        running = str(net.XMLDesc(0))
        live_plan = dhcp_plan(running, settings) if network_ipv4(running) == ipv4 else None
    try:
        if not active:
            _apply(net, plan, _CONFIG)
            detail = f"network {name!r}: DHCP {summary}; in effect when it starts (it is stopped)"
        elif not persistent:
            _apply(net, plan, _LIVE)
            detail = f"network {name!r}: DHCP {summary}; in effect now (it is transient: no next start)"
        elif live_plan == plan:  # the running network and its definition alike: both at once
            try:
                _apply(net, plan, _LIVE | _CONFIG)
                detail = f"network {name!r}: DHCP {summary}; in effect now and from its next start"
            except libvirt.libvirtError as err:
                if is_connection_lost(err):
                    raise
                _apply(net, plan, _CONFIG)
                detail = _next_start_only(name, summary, err)
        else:  # the running network differs from its definition (redefined since it started)
            _apply(net, plan, _CONFIG)
            detail = _live_too(net, name, summary, live_plan)
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        raise from_libvirt(err, what=what) from err
    log.info("%s", detail)
    return NetworkResult(network=read_network(net), detail=detail)


def _next_start_only(name: str, summary: str, err: libvirt.libvirtError) -> str:
    return (
        f"network {name!r}: DHCP {summary}; saved for its next start only, as the running network "
        f"did not take it ({err.get_error_message() or err}): stop and start the network to apply it"
    )


def _live_too(net: libvirt.virNetwork, name: str, summary: str, live_plan: DhcpPlan | None) -> str:
    """After the definition changed: the running network's own changes, if it can take them."""
    if live_plan is None:
        return (
            f"network {name!r}: DHCP {summary}; saved for its next start only, as the running "
            "network has another address than its definition: stop and start the network to apply it"
        )
    try:
        _apply(net, live_plan, _LIVE)
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        return _next_start_only(name, summary, err)
    return f"network {name!r}: DHCP {summary}; in effect now and from its next start"


class NetworkService:
    """The network operations on the agent's connection; `changed` is called after each one
    (the event hub then publishes fresh resources, whatever libvirt reported). `local`: the
    hypervisor is this machine, so its bridges are in this machine's sysfs."""

    def __init__(
        self, conn: LibvirtConnection, *, changed: NetworksChanged, local: bool, net_dir: str = SYS_CLASS_NET
    ) -> None:
        self._conn = conn
        self._changed = changed
        self._local = local
        self._net_dir = net_dir

    async def define(self, spec: NetworkSpec) -> tuple[NetworkResult, bool]:
        local, net_dir = self._local, self._net_dir
        try:
            return await self._conn.call(
                lambda c: define_network_sync(c, spec, local=local, net_dir=net_dir), what="defining network"
            )
        finally:
            self._changed()

    async def start(self, name: str) -> NetworkResult:
        try:
            return await self._conn.call(lambda c: start_network_sync(c, name), what="starting network")
        finally:
            self._changed()

    async def stop(self, name: str) -> NetworkResult:
        try:
            return await self._conn.call(lambda c: stop_network_sync(c, name), what="stopping network")
        finally:
            self._changed()

    async def set_autostart(self, name: str, autostart: bool) -> NetworkResult:
        try:
            return await self._conn.call(
                lambda c: autostart_network_sync(c, name, autostart), what="setting network autostart"
            )
        finally:
            self._changed()

    async def update_dhcp(self, name: str, settings: DhcpSettings) -> NetworkResult:
        try:
            return await self._conn.call(
                lambda c: update_dhcp_sync(c, name, settings), what="changing network DHCP"
            )
        finally:
            self._changed()

    async def delete(self, name: str) -> NetworkResult:
        try:
            return await self._conn.call(lambda c: delete_network_sync(c, name), what="deleting network")
        finally:
            self._changed()
