"""The test guest's bootable ISO (tests/guest/build.sh) boots under real libvirt.

End-to-end tests install from an ISO; this proves the one the tests build really boots as a
CD-ROM (no disk, no direct kernel boot) to the guest's banner on the serial port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.agent.conftest import REPO
from tests.agent.test_real_libvirt import POOL_PATH, PREFIX, URI, _libvirt_available

GUEST = Path(os.environ.get("DOMUS_GUEST_DIR", REPO / ".cache" / "guest"))  # as build.sh and e2e
BANNER = b"DOMUS-TEST-GUEST READY"
BOOT_TIMEOUT = 60.0  # seconds from start to banner; TCG, measured ~3 s on a 2-core host


pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails"),
    pytest.mark.skipif(
        not (GUEST / "guest.iso").exists(),
        reason="test guest ISO not built: run tests/guest/build.sh (.cache/guest/guest.iso)",
    ),
]


def _cdrom_guest_xml(*, name: str, iso: Path, serial_log: Path) -> str:
    """A TCG guest with the ISO as its only drive, booting from it, serial port to a file."""
    root = etree.Element("domain", type="qemu")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "memory", unit="MiB").text = "256"
    etree.SubElement(root, "vcpu").text = "1"
    os_el = etree.SubElement(root, "os")
    etree.SubElement(os_el, "type").text = "hvm"
    etree.SubElement(os_el, "boot", dev="cdrom")
    features = etree.SubElement(root, "features")
    etree.SubElement(features, "acpi")
    etree.SubElement(features, "apic")
    devices = etree.SubElement(root, "devices")
    cdrom = etree.SubElement(devices, "disk", type="file", device="cdrom")
    etree.SubElement(cdrom, "driver", name="qemu", type="raw")
    etree.SubElement(cdrom, "source", file=str(iso))
    etree.SubElement(cdrom, "target", dev="hdc", bus="ide")
    etree.SubElement(cdrom, "readonly")
    serial = etree.SubElement(devices, "serial", type="file")
    etree.SubElement(serial, "source", path=str(serial_log))
    etree.SubElement(serial, "target", port="0")
    return etree.tostring(root, encoding="unicode")


def _read(path: Path) -> bytes:
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    return b""


def test_guest_iso_boots_from_cdrom() -> None:
    name = f"{PREFIX}iso-{uuid.uuid4().hex[:8]}"
    # libvirt's QEMU runs as libvirt-qemu: the files go where it may read and write.
    iso = POOL_PATH / f"{name}.iso"
    serial_log = POOL_PATH / f"{name}-serial.log"
    shutil.copyfile(GUEST / "guest.iso", iso)
    conn = libvirt.open(URI)
    dom: libvirt.virDomain | None = None
    try:
        xml = _cdrom_guest_xml(name=name, iso=iso, serial_log=serial_log)
        assert "<kernel>" not in xml and 'device="disk"' not in xml  # the CD-ROM is all it has
        dom = conn.createXML(xml, 0)  # transient: gone once destroyed
        started = time.monotonic()
        while BANNER not in _read(serial_log):
            elapsed = time.monotonic() - started
            assert dom.isActive(), f"guest stopped after {elapsed:.1f}s:\n{_read(serial_log)[-2000:]!r}"
            assert elapsed < BOOT_TIMEOUT, (
                f"no banner after {BOOT_TIMEOUT:.0f}s; serial log ends:\n{_read(serial_log)[-2000:]!r}"
            )
            time.sleep(0.1)
        print(f"ISO boot to banner: {time.monotonic() - started:.1f}s")
        # isolinux printed its own banner on ttyS0 first: the guest really booted the CD.
        output = _read(serial_log)
        assert b"ISOLINUX" in output.split(BANNER)[0], output[-2000:]
    finally:
        if dom is not None:
            with contextlib.suppress(libvirt.libvirtError):  # already gone is fine
                dom.destroy()
        conn.close()
        iso.unlink(missing_ok=True)
        serial_log.unlink(missing_ok=True)
