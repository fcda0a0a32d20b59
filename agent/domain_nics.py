"""A domain's network cards after it was defined: attach one, detach one, change one's link state,
the network or host bridge it is on, or its MAC. Blocking libvirt work on one domain, run by
DomainService (agent/domains.py) through LibvirtConnection.call, which also keeps its cache right
after each change.

As with disks (agent/domain_disks.py): a running domain gets each change live and in its
definition for the next boot; what the running guest cannot take (a guest or bus without
hot-plug, a guest that does not release a card, a source libvirt cannot switch live) goes to the
definition alone, and the answer says "next boot". A shut-off domain has only its definition: a
change to it is all there is ("now"). A card is named by its MAC, which the console chooses, so a
retried attach finds the card it added.

A driver without libvirt's device calls (the test driver; some older Xen ones) gets the
definition rewritten instead, as a card's MAC always is: libvirt finds the card to change by its
MAC, so it cannot change that.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import libvirt
from lxml import etree

from agent.capabilities import sysfs_bridges
from agent.devicedefs import Definitions, definitions
from agent.domxml import nic_element, nic_model_for
from agent.errors import Conflict, InvalidSpec, NotFound, is_connection_lost
from agent.netxml import find_nic, nic_info, parse
from agent.protocol import NicAttachRequest, NicChangeRequest

log = logging.getLogger(__name__)

Applied = Literal["now", "next boot"]
_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
# libvirt's OS types of paravirtualised Xen guests ("linux" is an old name of "xen").
_PV_OS_TYPES = frozenset({"xen", "linux", "xenpvh"})


@dataclass(frozen=True)
class NicResult:
    """What a change did, for NicOutcome (the domain after it is read by the caller): the card's
    MAC (the new one, after a MAC change), and when it takes effect."""

    mac: str
    applied: Applied
    detail: str = ""


def _cards(defs: Definitions, mac: str) -> tuple[etree._Element | None, etree._Element | None]:
    """The card with this MAC in the running guest and in the next boot's definition."""
    live = find_nic(defs.live, mac) if defs.active else None
    planned = find_nic(defs.next_boot, mac) if defs.next_boot is not None else None
    return live, planned


def _text(iface: etree._Element) -> str:
    """A card's element as a document of its own (what libvirt's device calls take)."""
    alone = copy.deepcopy(iface)
    alone.tail = None
    return etree.tostring(alone, encoding="unicode")


def _why(err: libvirt.libvirtError) -> str:
    return err.get_error_message() or str(err)


# -- the definition rewritten -----------------------------------------------------------------
Edit = Callable[[etree._Element], None]


def _redefine(conn: libvirt.virConnect, dom: libvirt.virDomain, edit: Edit) -> None:
    """The definition for the next boot, read whole (secrets included, or a VNC password would
    be lost), changed by `edit` and defined again."""
    root = parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
    edit(root)
    conn.defineXML(etree.tostring(root, encoding="unicode"))


def _to_definition(
    conn: libvirt.virConnect, dom: libvirt.virDomain, call: Callable[[str, int], object], xml: str, edit: Edit
) -> None:
    """A device call on the definition for the next boot alone; rewritten by `edit` where the
    driver has no device calls."""
    try:
        call(xml, _CONFIG)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        log.info(
            "%s: the driver has no device calls (%s); its definition is rewritten", dom.name(), _why(err)
        )
        _redefine(conn, dom, edit)


def _add(iface: etree._Element) -> Edit:
    def edit(root: etree._Element) -> None:
        devices = root.find("devices")
        if devices is None:
            devices = etree.SubElement(root, "devices")
        devices.append(copy.deepcopy(iface))

    return edit


def _remove(mac: str) -> Edit:
    def edit(root: etree._Element) -> None:
        while (iface := find_nic(root, mac)) is not None:
            parent = iface.getparent()
            assert parent is not None
            parent.remove(iface)

    return edit


def _replace(mac: str, new: etree._Element) -> Edit:
    def edit(root: etree._Element) -> None:
        old = find_nic(root, mac)
        if old is None:
            raise NotFound(f"{root.findtext('name')} has no network card {mac}")
        replacement = copy.deepcopy(new)
        replacement.tail = old.tail
        parent = old.getparent()
        assert parent is not None
        parent.replace(old, replacement)

    return edit


# -- checks -----------------------------------------------------------------------------------
def check_source(
    conn: libvirt.virConnect,
    source: str,
    name: str,
    field: str,
    *,
    running: str | None,
    local: bool,
) -> None:
    """What libvirt would take at define and fail on at start (or refuse with a message about
    something else), refused by field: a network the host does not have, one that is not running
    for a card of the running domain `running`, a host bridge the host does not have (known only
    when libvirt is this machine's: its sysfs is then the host's)."""
    if source == "network":
        try:
            network = conn.networkLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            names = sorted(str(n.name()) for n in conn.listAllNetworks())
            raise InvalidSpec(
                f"{field}: this host has no network {name!r} (its networks: {', '.join(names) or 'none'})"
            ) from err
        if running is not None and not network.isActive():
            raise Conflict(f"{field}: network {name!r} is not running, and {running} is: start it first")
    elif local and name not in (bridges := sysfs_bridges()):
        raise InvalidSpec(
            f"{field}: this host has no bridge {name!r} (its bridges: {', '.join(bridges) or 'none'})"
        )


def _where(iface: etree._Element) -> str:
    nic = nic_info(iface)
    return f"{nic.source} {nic.name!r}" if nic.source != "other" else f"a {iface.get('type')} interface"


# -- attach -----------------------------------------------------------------------------------
def new_card_model(root: etree._Element, asked: str | None) -> str | None:
    """The model of a new card: the one asked, else the one the domain's cards have (a guest
    without virtio drivers has e1000 ones), else virtio; as at define for Xen and PV guests."""
    if asked is None:
        asked = next((m.get("type") for m in root.iterfind("devices/interface/model") if m.get("type")), None)
    os_type = (root.findtext("os/type") or "").strip()
    return nic_model_for(asked, paravirt=os_type in _PV_OS_TYPES, xen=root.get("type") == "xen")


def _attached_before(
    defs: Definitions, request: NicAttachRequest, live: etree._Element | None, planned: etree._Element | None
) -> NicResult:
    """The MAC is the domain's already: the same card (a retried job) is answered as it is;
    anything else is refused."""
    nic, mac = request.nic, str(request.nic.mac)
    card = planned if planned is not None else live
    assert card is not None
    have = nic_info(card)
    if planned is None and defs.next_boot is not None:  # only the running guest's: it is leaving
        raise Conflict(
            f"nic.mac: {defs.name} already has a card with MAC {mac} ({_where(card)}), "
            "removed from its next boot: choose another MAC"
        )
    if (have.source, have.name) != (nic.source, nic.name):
        raise Conflict(f"nic.mac: {defs.name} already has a card with MAC {mac} ({_where(card)})")
    if defs.active and live is None:
        return NicResult(mac, "next boot", f"{mac} is already attached from the next boot")
    return NicResult(mac, "now", f"{mac} is already attached")


def attach(
    conn: libvirt.virConnect, dom: libvirt.virDomain, request: NicAttachRequest, *, local: bool
) -> NicResult:
    """Add a card on a libvirt network or a host bridge, with the MAC the request names."""
    defs = definitions(dom)
    nic = request.nic
    mac = nic.mac
    if mac is None:  # (NicAttachRequest requires it)
        raise InvalidSpec("nic.mac: required (the console chooses it, so that a retry keeps it)")
    live, planned = _cards(defs, mac)
    if live is not None or planned is not None:
        return _attached_before(defs, request, live, planned)
    check_source(
        conn, nic.source, nic.name, "nic.name", running=defs.name if defs.active else None, local=local
    )
    base = defs.next_boot if defs.next_boot is not None else defs.live
    iface = nic_element(nic, new_card_model(base, nic.model))
    xml = _text(iface)
    if not defs.active:
        _to_definition(conn, dom, dom.attachDeviceFlags, xml, _add(iface))
        result = NicResult(
            mac, "now", f"{mac} attached ({_where(iface)}): the guest has it from its next start"
        )
    else:
        try:
            dom.attachDeviceFlags(xml, _LIVE | (_CONFIG if defs.persistent else 0))
            result = NicResult(mac, "now", f"{mac} attached to the running guest ({_where(iface)})")
        except libvirt.libvirtError as err:
            if not defs.persistent or is_connection_lost(err):
                raise
            why = _why(err)
            # libvirt applies both or neither: the running guest could not take it, the next boot can.
            _to_definition(conn, dom, dom.attachDeviceFlags, xml, _add(iface))
            result = NicResult(
                mac,
                "next boot",
                f"the running guest cannot take {mac} now ({why}): it is attached from the next boot",
            )
    log.info("attached network card %s (%s) to %s: %s", mac, _where(iface), defs.name, result.applied)
    return result


# -- detach -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetachStarted:
    """A detach under way: `waiting` while the running guest has yet to release the card."""

    result: NicResult
    waiting: bool


def _no_card(name: str, mac: str) -> NotFound:
    return NotFound(f"{name} has no network card {mac}")


def detach(conn: libvirt.virConnect, dom: libvirt.virDomain, mac: str) -> DetachStarted:
    """Take the card with this MAC out of the definition, and ask the running guest to release it
    (the caller then waits for the guest: `live_has`)."""
    defs = definitions(dom)
    live, planned = _cards(defs, mac)
    if live is None and planned is None:
        raise _no_card(defs.name, mac)
    if planned is not None:
        _to_definition(conn, dom, dom.detachDeviceFlags, _text(planned), _remove(mac))
    if live is None:
        return DetachStarted(NicResult(mac, "now", f"{mac} detached"), waiting=False)
    try:
        # QEMU asks the guest and libvirt waits a few seconds for it; the caller waits the rest.
        dom.detachDeviceFlags(_text(live), _LIVE)
    except libvirt.libvirtError as err:
        if not defs.persistent or is_connection_lost(err):
            raise
        detail = f"the running guest cannot release {mac} now ({_why(err)}): it is removed from the next boot"
        log.info("detach of %s from %s: %s", mac, defs.name, detail)
        return DetachStarted(NicResult(mac, "next boot", detail), waiting=False)
    return DetachStarted(NicResult(mac, "now", f"{mac} detached from the running guest"), waiting=True)


def live_has(dom: libvirt.virDomain, mac: str) -> bool:
    """Whether the running guest still has a card with this MAC (False once it is shut off)."""
    if not dom.isActive():
        return False
    return find_nic(parse(dom.XMLDesc(0)), mac) is not None


def not_released(result: NicResult) -> NicResult:
    mac = result.mac
    return NicResult(mac, "next boot", f"the guest did not release {mac}: it is removed from the next boot")


# -- change -----------------------------------------------------------------------------------
def changed_card(iface: etree._Element, request: NicChangeRequest) -> etree._Element | None:
    """The card's element with what `request` asks; None when it has it already."""
    new = copy.deepcopy(iface)
    new.tail = None
    if request.link is not None:
        link = new.find("link")
        if link is None:
            link = etree.SubElement(new, "link")
        link.set("state", request.link)
    if request.source is not None and request.name is not None:
        new.set("type", request.source)
        old = new.find("source")
        # A fresh <source>: a running card's also names the port and bridge it was on.
        source = etree.Element("source")
        source.set(request.source, request.name)
        if old is not None:
            new.replace(old, source)
        else:
            new.insert(1 if new.find("mac") is not None else 0, source)
    if request.mac is not None:
        mac = new.find("mac")
        if mac is None:
            mac = etree.Element("mac")
            new.insert(0, mac)
        mac.set("address", request.mac)
    before, after = nic_info(iface), nic_info(new)
    if (before.mac, before.source, before.name, before.link) == (
        after.mac,
        after.source,
        after.name,
        after.link,
    ):
        return None
    return new


def _what(request: NicChangeRequest) -> str:
    parts = []
    if request.source is not None:
        parts.append(f"on {request.source} {request.name!r}")
    if request.link is not None:
        parts.append(f"link {request.link}")
    if request.mac is not None:
        parts.append(f"MAC {request.mac}")
    return ", ".join(parts)


def change(
    conn: libvirt.virConnect, dom: libvirt.virDomain, mac: str, request: NicChangeRequest, *, local: bool
) -> NicResult:
    """Change the card with this MAC: its link state, its network or bridge, its MAC (shut off)."""
    defs = definitions(dom)
    live, planned = _cards(defs, mac)
    if live is None and planned is None:
        raise _no_card(defs.name, mac)
    new_mac = request.mac if request.mac is not None else mac
    if new_mac != mac:
        if defs.active:
            raise Conflict(f"mac: {defs.name} is running: shut it off first to change a card's MAC")
        if find_nic(defs.live, new_mac) is not None:
            raise Conflict(f"mac: {defs.name} already has a card with MAC {new_mac}")
    what = _what(request)
    if request.source is not None and request.name is not None:
        running = defs.name if live is not None else None
        check_source(conn, request.source, request.name, "name", running=running, local=local)
    later = changed_card(planned, request) if planned is not None else None
    now = changed_card(live, request) if live is not None else None
    if later is None and now is None:
        return NicResult(new_mac, "now", f"nothing to change: {mac} is as asked ({what})")
    if later is not None:
        if new_mac != mac:  # libvirt finds the card by its MAC: it cannot change it
            _redefine(conn, dom, _replace(mac, later))
        else:
            _to_definition(conn, dom, dom.updateDeviceFlags, _text(later), _replace(mac, later))
    result = NicResult(new_mac, "now", f"{mac}: {what}")
    if now is not None:
        try:
            dom.updateDeviceFlags(_text(now), _LIVE)
        except libvirt.libvirtError as err:
            if planned is None or is_connection_lost(err):
                raise
            why = _why(err)
            result = NicResult(
                new_mac,
                "next boot",
                f"the running guest cannot take the change of {mac} now ({why}): {what} from the next boot",
            )
    log.info("network card %s of %s: %s (%s)", mac, defs.name, what, result.applied)
    return result
