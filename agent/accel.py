"""Choose the accelerator: prove KVM with a tiny probe guest, else fall back to TCG.

"The guest started" is not proof: under broken nested virtualisation a KVM guest starts and
then crawls (SeaBIOS takes seconds, a kernel never gets out of its decompressor). So the probe
boots a 512-byte boot sector that writes a marker to COM1, times how long the marker takes to
appear under KVM, and does the same under TCG: KVM is used only if it is not slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import libvirt

from agent.domxml import render_probe_xml
from agent.hostfacts import Capabilities
from agent.protocol import Accel

log = logging.getLogger(__name__)

AccelRequest = Literal["auto", "kvm", "tcg"]
KVM_DEVICE = "/dev/kvm"
PROBE_DEADLINE_S = 10.0
MARKER = b"DOMUS-ACCEL-PROBE-OK"
# KVM must reach the boot sector at most this much slower than TCG (healthy KVM is faster).
SLOWER_THAN_TCG_FACTOR = 1.5
SLOW_FLOOR_S = 0.5

# 16-bit real mode at 0x7c00: ds=0; for each byte of msg: out 0x3f8 (COM1); then hlt forever.
_BOOT_CODE = (
    bytes([0xFA, 0x31, 0xC0, 0x8E, 0xD8, 0xBA, 0xF8, 0x03, 0xBE, 0x16, 0x7C])  # cli; ds=0; dx; si
    + bytes([0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8])  # lodsb; test; jz done; out; jmp
    + bytes([0xF4, 0xEB, 0xFD])  # done: hlt; jmp done
)


def boot_sector() -> bytes:
    body = _BOOT_CODE + MARKER + b"\r\n\x00"
    return body + b"\x00" * (510 - len(body)) + b"\x55\xaa"


@dataclass(frozen=True)
class AccelDecision:
    accel: Accel
    kvm_usable: bool
    reason: str


def time_probe_guest(conn: libvirt.virConnect, domain_type: str, work_dir: str) -> float | None:
    """Blocking: seconds from start until the probe guest's marker appears; None if it never
    does within PROBE_DEADLINE_S. Raises libvirtError when libvirt refuses the guest."""
    name = f"domus-accel-probe-{uuid.uuid4().hex[:8]}"
    image = os.path.join(work_dir, f".{name}.img")
    serial_log = os.path.join(work_dir, f".{name}.log")
    with open(image, "wb") as handle:
        handle.write(boot_sector())
    dom: libvirt.virDomain | None = None
    try:
        xml = render_probe_xml(name=name, domain_type=domain_type, boot_image=image, serial_log=serial_log)
        dom = conn.createXML(xml, 0)
        started = time.monotonic()
        while time.monotonic() - started < PROBE_DEADLINE_S:
            with contextlib.suppress(FileNotFoundError), open(serial_log, "rb") as handle:
                if MARKER in handle.read():
                    return time.monotonic() - started
            if not dom.isActive():
                return None
            time.sleep(0.02)
        return None
    finally:
        if dom is not None:
            with contextlib.suppress(libvirt.libvirtError):  # already gone is fine
                dom.destroy()
        for path in (image, serial_log):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _is_stale(path: str, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return True


def clean_stale_probes(conn: libvirt.virConnect, work_dir: str) -> None:
    """Probe guests and files left behind by an agent killed mid-probe. A live probe (maybe
    another agent's) has a fresh image file; anything older than a probe can last is stale."""
    cutoff = time.time() - 2 * PROBE_DEADLINE_S
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT):
        name = dom.name()
        if name.startswith("domus-accel-probe-") and _is_stale(
            os.path.join(work_dir, f".{name}.img"), cutoff
        ):
            log.info("destroying stale probe guest %s", name)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    for path in glob.glob(os.path.join(work_dir, ".domus-accel-probe-*")):
        if _is_stale(path, cutoff):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _probe_kvm(conn: libvirt.virConnect, work_dir: str) -> tuple[bool, str]:
    clean_stale_probes(conn, work_dir)
    try:
        kvm = time_probe_guest(conn, "kvm", work_dir)
    except libvirt.libvirtError as err:
        return False, f"libvirt refused a KVM probe guest: {err.get_error_message()}"
    if kvm is None:
        return False, f"KVM probe guest made no progress within {PROBE_DEADLINE_S:.0f}s"
    try:
        tcg = time_probe_guest(conn, "qemu", work_dir)
    except libvirt.libvirtError as err:
        return True, f"KVM probe guest booted in {kvm:.2f}s (no TCG baseline: {err})"
    if tcg is not None and kvm > SLOW_FLOOR_S and kvm > tcg * SLOWER_THAN_TCG_FACTOR:
        return False, (
            f"KVM works but is slower than software emulation ({kvm:.2f}s vs {tcg:.2f}s "
            "to boot the probe guest; nested virtualisation?)"
        )
    baseline = f"{tcg:.2f}s" if tcg is not None else "n/a"
    return True, f"KVM probe guest booted in {kvm:.2f}s (TCG {baseline})"


async def decide_accel(
    conn: libvirt.virConnect,
    caps: Capabilities,
    requested: AccelRequest,
    *,
    work_dir: str,
    timeout_s: float,
) -> AccelDecision:
    driver = caps.driver.lower()
    if driver == "test":
        return AccelDecision("test", False, "test driver")
    if driver == "xen":
        return AccelDecision("xen", False, "xen driver")
    if requested == "tcg":
        return AccelDecision("tcg", False, "--accel tcg requested")
    if requested == "kvm":
        return AccelDecision("kvm", True, "--accel kvm requested (not probed)")
    if not os.path.exists(KVM_DEVICE):
        return AccelDecision("tcg", False, f"{KVM_DEVICE} is absent")
    if "kvm" not in caps.guest_domain_types:
        return AccelDecision("tcg", False, "libvirt offers no 'kvm' domain type")
    try:
        ok, why = await asyncio.wait_for(asyncio.to_thread(_probe_kvm, conn, work_dir), timeout_s)
    except TimeoutError:
        # The worker thread still finishes (and destroys its probe guest) on its own.
        return AccelDecision("tcg", False, f"KVM probe did not finish within {timeout_s:.0f}s")
    return AccelDecision("kvm", True, why) if ok else AccelDecision("tcg", False, why)
