"""Listing while another tool undefines a domain (libvirt's test driver, a real libvirt API):
the agent lists what is still there instead of failing, so a racing `virsh undefine` cannot
stop an agent from starting or answering."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from agent import domains as domains_module
from agent.domains import DomainService

DOMAIN_XML = """<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type>hvm</type></os></domain>"""


@pytest.fixture
def conn() -> Any:
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def test_a_domain_undefined_between_the_listing_and_its_read_is_left_out(
    conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = conn.defineXML(DOMAIN_XML.format(name="kept"))
    going = conn.defineXML(DOMAIN_XML.format(name="going"))
    going_uuid = going.UUIDString()
    read = domains_module._static_info

    def undefined_meanwhile(dom: libvirt.virDomain, *how: Any) -> Any:
        if dom.UUIDString() == going_uuid:
            conn.lookupByUUIDString(going_uuid).undefine()  # what `virsh undefine` does meanwhile
        return read(dom, *how)

    monkeypatch.setattr(domains_module, "_static_info", undefined_meanwhile)
    service = DomainService(conn=None, domain_type="test", default_pool_dir="/tmp", local_files=False)  # type: ignore[arg-type]
    names = {info.name for info in service._list_sync(conn)}
    assert "kept" in names and "going" not in names
    assert kept.UUIDString() in {str(info.uuid) for info in service._list_sync(conn)}


def test_other_libvirt_errors_still_surface(conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    conn.defineXML(DOMAIN_XML.format(name="broken"))

    def fails(dom: libvirt.virDomain, *how: Any) -> Any:
        raise libvirt.libvirtError("internal error: something else")

    monkeypatch.setattr(domains_module, "_static_info", fails)
    service = DomainService(conn=None, domain_type="test", default_pool_dir="/tmp", local_files=False)  # type: ignore[arg-type]
    with pytest.raises(libvirt.libvirtError):
        service._list_sync(conn)
