"""A domain's two definitions, read once for a change of one of its devices (a disk, a CD-ROM
drive, a network card): the running guest's, and the one for its next boot."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt
from lxml import etree

from agent.diskxml import domain_root


@dataclass(frozen=True)
class Definitions:
    """A domain's definitions: `live` is the running guest's (the only one when shut off or
    transient); `config` its definition for the next boot, when it runs and has one."""

    name: str
    active: bool
    persistent: bool
    live: etree._Element
    config: etree._Element | None

    @property
    def next_boot(self) -> etree._Element | None:
        """The definition a CONFIG change affects (None: a transient domain has none)."""
        if not self.active:
            return self.live if self.persistent else None
        return self.config


def definitions(dom: libvirt.virDomain) -> Definitions:
    active = bool(dom.isActive())
    persistent = bool(dom.isPersistent())
    live = domain_root(dom.XMLDesc(0))
    config = domain_root(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) if active and persistent else None
    return Definitions(name=str(dom.name()), active=active, persistent=persistent, live=live, config=config)
