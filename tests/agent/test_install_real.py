"""Install sources and disks against the host's real libvirt and QEMU (TCG).

An ISO install boots the test guest's ISO, powers off at the installer's first reboot and then
boots the installed definition; a network install fetches the kernel and initrd from an HTTP
tree; volumes are raw or qcow2, sparse or preallocated, or overlays on a base image; a cloud
image gets a cloud-init seed ISO that is removed with the domain.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from agent.client import AgentClient, AgentInvalid
from agent.domxml import install_pending
from agent.protocol import DomainSpec
from tests.agent.conftest import RunningAgent, launch_agent, stop_agent
from tests.agent.test_real_libvirt import (
    GUEST,
    POOL_PATH,
    PREFIX,
    SLOW,
    URI,
    _force_cleanup,
    _libvirt_available,
    _read_until,
)

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.asyncio,
    pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails"),
]
BANNER = b"DOMUS-TEST-GUEST READY"
needs_iso = pytest.mark.skipif(
    not (GUEST / "guest.iso").exists(), reason="test guest ISO not built: run tests/guest/build.sh"
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    log = tmp_path_factory.mktemp("install-agent") / "agent.log"
    # The test's mirror is on loopback, which an agent refuses to fetch from unless allowed
    # (agent/netinstall.py): as an operator allows a lab mirror's address.
    running = launch_agent(
        uri=URI,
        pool_dir=POOL_PATH,
        log_path=log,
        accel="tcg",
        ready_timeout=SLOW,
        env={"DOMUS_AGENT_NETINSTALL_ALLOW": "127.0.0.1/32"},
    )
    try:
        yield running
    finally:
        stop_agent(running)


def _inactive_xml(domain_uuid: uuid.UUID) -> etree._Element:
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByUUIDString(str(domain_uuid))
        return etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    finally:
        conn.close()


def _live_xml(domain_uuid: uuid.UUID) -> etree._Element:
    conn = libvirt.open(URI)
    try:
        return etree.fromstring(conn.lookupByUUIDString(str(domain_uuid)).XMLDesc(0).encode())
    finally:
        conn.close()


def _volume(path: str) -> tuple[int, int, str]:
    """(capacity, allocation, XML) of the volume at `path`."""
    conn = libvirt.open(URI)
    try:
        vol = conn.storageVolLookupByPath(path)
        _type, capacity, allocation = vol.info()
        return capacity, allocation, vol.XMLDesc(0)
    finally:
        conn.close()


async def _wait_state(client: AgentClient, domain_uuid: uuid.UUID, state: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while (await client.get_domain(domain_uuid)).state != state:
            await asyncio.sleep(0.5)


@needs_iso
async def test_iso_install_boots_the_installer_once_then_the_installed_system(agent: RunningAgent) -> None:
    name = f"{PREFIX}iso-{uuid.uuid4().hex[:6]}"
    iso = POOL_PATH / f"{name}.iso"
    shutil.copyfile(GUEST / "guest.iso", iso)
    spec = DomainSpec.model_validate(
        {
            "uuid": uuid.uuid4(),
            "name": name,
            "memory_mib": 256,
            "disks": [{"size_gib": 0.0625, "bus": "virtio"}],
            "boot": {"kind": "iso", "iso": iso.name},
        }
    )
    try:
        async with AgentClient(agent.url, agent.secret, timeout=SLOW) as client:
            info = await client.define(spec)
            assert [(d.device, d.path) for d in info.disks][1] == ("cdrom", str(iso))
            assert install_pending(etree.tostring(_inactive_xml(spec.uuid), encoding="unicode"))

            await client.start(spec.uuid)  # the installer: CD-ROM first, reboot powers off
            live = _live_xml(spec.uuid)
            assert [b.get("dev") for b in live.iterfind("os/boot")] == ["cdrom", "hd"]
            assert live.findtext("on_reboot") == "destroy"
            after = _inactive_xml(spec.uuid)  # what every later start boots
            assert [b.get("dev") for b in after.iterfind("os/boot")] == ["hd", "cdrom"]
            assert after.findtext("on_reboot") == "restart"
            assert not install_pending(etree.tostring(after, encoding="unicode"))
            async with client.open_serial(spec.uuid) as serial:
                await _read_until(serial, BANNER, timeout=SLOW)
                # An installer ends by rebooting the machine itself: the domain powers off.
                await serial.send_bytes(b"reboot -f\n")
            await _wait_state(client, spec.uuid, "shutoff", timeout=SLOW)

            await client.start(spec.uuid)  # the installed definition (its blank disk falls to the CD)
            assert _live_xml(spec.uuid).findtext("on_reboot") == "restart"
            async with client.open_serial(spec.uuid) as serial:
                await _read_until(serial, BANNER, timeout=SLOW)
                await serial.send_bytes(b"reboot -f\n")  # now a reboot is a reboot
                await _read_until(serial, b"ISOLINUX", timeout=SLOW)
            assert (await client.get_domain(spec.uuid)).state == "running"
            result = await client.delete(spec.uuid, delete_disks=True)
            assert len(result.deleted_volumes) == 1 and iso.exists()  # the ISO is not the domain's
    finally:
        _force_cleanup(spec.uuid, [iso, POOL_PATH / f"{name}-{spec.uuid.hex[:8]}-disk0.qcow2"])


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def installer_tree(tmp_path: Path) -> Iterator[str]:
    """An HTTP installer tree (RHEL layout) whose kernel and initrd are the test guest's."""
    pxe = tmp_path / "tree" / "images" / "pxeboot"
    pxe.mkdir(parents=True)
    shutil.copyfile(GUEST / "vmlinuz", pxe / "vmlinuz")
    shutil.copyfile(GUEST / "initrd.img", pxe / "initrd.img")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(tmp_path / "tree")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


async def test_network_install_fetches_and_boots_the_installer(
    agent: RunningAgent, installer_tree: str
) -> None:
    name = f"{PREFIX}net-{uuid.uuid4().hex[:6]}"
    spec = DomainSpec.model_validate(
        {
            "uuid": uuid.uuid4(),
            "name": name,
            "memory_mib": 256,
            "disks": [{"size_gib": 0.0625}],
            "boot": {"kind": "url", "url": installer_tree, "cmdline": "console=ttyS0 quiet"},
        }
    )
    fetched = POOL_PATH / ".domus-install" / str(spec.uuid)
    try:
        async with AgentClient(agent.url, agent.secret, timeout=SLOW) as client:
            await client.define(spec)
            assert (fetched / "vmlinuz").read_bytes() == (GUEST / "vmlinuz").read_bytes()
            assert _inactive_xml(spec.uuid).find("os/kernel") is None  # installed: boots its disk
            await client.start(spec.uuid)
            assert _live_xml(spec.uuid).findtext("os/kernel") == str(fetched / "vmlinuz")
            async with client.open_serial(spec.uuid) as serial:
                await _read_until(serial, BANNER, timeout=SLOW)
            await client.delete(spec.uuid, delete_disks=True)
            assert not fetched.exists()  # the installer's files go with the domain

            broken = spec.model_copy(update={"uuid": uuid.uuid4(), "name": name + "-404"})
            broken = DomainSpec.model_validate(
                broken.model_dump() | {"boot": {"kind": "url", "url": installer_tree + "nothing/"}}
            )
            with pytest.raises(AgentInvalid, match=r"boot\.kernel: .* answered HTTP 404"):
                await client.define(broken)
    finally:
        _force_cleanup(spec.uuid, [POOL_PATH / f"{name}-{spec.uuid.hex[:8]}-disk0.qcow2"])
        shutil.rmtree(fetched, ignore_errors=True)


async def test_volume_formats_and_allocation(agent: RunningAgent) -> None:
    name = f"{PREFIX}vol-{uuid.uuid4().hex[:6]}"
    base = POOL_PATH / f"{name}-base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "32M"], check=True)
    spec = DomainSpec.model_validate(
        {
            "uuid": uuid.uuid4(),
            "name": name,
            "disks": [
                {"size_gib": 0.0625, "format": "raw", "allocation": "preallocated"},
                {"size_gib": 0.0625, "format": "qcow2", "allocation": "sparse"},
                {"size_gib": 0.0625, "backing": base.name},
                {"existing": base.name},
            ],
            "boot": {"kind": "disk", "cloud_init": {"hostname": "vol-test", "instance_id": "i-1"}},
        }
    )
    short = spec.uuid.hex[:8]
    seed = POOL_PATH / f"{name}-{short}-cidata.iso"
    paths = [POOL_PATH / f"{name}-{short}-disk{i}.{ext}" for i, ext in enumerate(("img", "qcow2", "qcow2"))]
    mib64 = 64 * 1024**2
    try:
        async with AgentClient(agent.url, agent.secret, timeout=SLOW) as client:
            info = await client.define(spec)
            assert [d.path for d in info.disks] == [*map(str, paths), str(base), str(seed)]
            raw_capacity, raw_allocation, _ = _volume(str(paths[0]))
            assert raw_capacity == mib64 and raw_allocation >= mib64  # all taken now
            sparse_capacity, sparse_allocation, _ = _volume(str(paths[1]))
            assert sparse_capacity == mib64 and sparse_allocation < mib64 // 8  # grows as written
            _, _, overlay = _volume(str(paths[2]))
            assert etree.fromstring(overlay.encode()).findtext("backingStore/path") == str(base)
            label = subprocess.run(
                ["blkid", "-o", "value", "-s", "LABEL", str(seed)], capture_output=True, text=True
            )
            assert label.stdout.strip() == "cidata"
            result = await client.delete(spec.uuid, delete_disks=True)
            assert sorted(result.deleted_volumes) == sorted([*map(str, paths), str(base)])
            assert not seed.exists()  # made by Domus for this domain, removed with it
    finally:
        _force_cleanup(spec.uuid, [*paths, base, seed])
