"""A domain's disks and CD-ROM drives after define.

Without a daemon: the <disk> elements built for each device and bus (libvirt's schema), target
and bus picking, what is pending between a running domain's two definitions, image sizes and the
requests' rules. On libvirt's test driver: the API's refusals, and a volume made for an attach
that fails is deleted again. On the host's libvirt (qemu:///system, TCG) with the test guest: a
disk hot-plugged and seen in the guest's /sys/block, then released; a CD-ROM's disc changed and
ejected live; what the running guest cannot take shows as pending.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest
from lxml import etree
from pydantic import ValidationError

from agent.client import AgentClient, AgentConflict, AgentError, AgentInvalid, AgentNotFound
from agent.diskxml import attach_bus, media_xml, next_target, render_disk, with_pending
from agent.domain_disks import image_capacity
from agent.domxml import parse_disks
from agent.events import EventHub
from agent.protocol import (
    DiskAttachRequest,
    DiskSpec,
    DomainEvent,
    DomainInfo,
    DomainSpec,
    KernelBoot,
    MediaRequest,
)
from tests.agent.conftest import RunningAgent, launch_agent, stop_agent
from tests.agent.test_domxml import _validate, needs_validator
from tests.agent.test_events import next_event, wait_for_domain_event
from tests.agent.test_real_libvirt import (
    GUEST,
    POOL_PATH,
    SLOW,
    URI,
    _force_cleanup,
    _libvirt_available,
    kernel_guest,
    needs_guest,
)

MIB = 1024 * 1024
POOL = "/var/lib/libvirt/images"


# -- the XML, without a daemon -----------------------------------------------------------------
def _domain(machine: str = "", *, domain_type: str = "kvm", os_type: str = "hvm", disks: str = "") -> str:
    machine_attr = f" machine='{machine}'" if machine else ""
    return (
        f"<domain type='{domain_type}'><name>d</name><memory>65536</memory>"
        f"<os><type arch='x86_64'{machine_attr}>{os_type}</type></os><devices>{disks}</devices></domain>"
    )


def _with_devices(xml: str, *elements: str) -> str:
    root = etree.fromstring(xml.encode())
    devices = root.find("devices")
    for element in elements:
        devices.append(etree.fromstring(element.encode()))
    return etree.tostring(root, encoding="unicode")


RENDERED: dict[str, dict[str, Any]] = {
    "virtio-qcow2": dict(
        device="disk", bus="virtio", target="vdb", path=f"{POOL}/web-vdb.qcow2", fmt="qcow2"
    ),
    "sata-raw-readonly": dict(
        device="disk", bus="sata", target="sdb", path=f"{POOL}/data.img", fmt="raw", readonly=True
    ),
    "scsi-lvm": dict(device="disk", bus="scsi", target="sda", path="/dev/vg0/web-sda", fmt="raw", block=True),
    "ide-disk": dict(device="disk", bus="ide", target="hdb", path=f"{POOL}/old.img", fmt="raw"),
    "xen-disk": dict(device="disk", bus="xen", target="xvdb", path=f"{POOL}/pv-xvdb.qcow2", fmt="qcow2"),
    "ide-cdrom-iso": dict(device="cdrom", bus="ide", target="hdc", path=f"{POOL}/debian-12.iso"),
    "sata-cdrom-empty": dict(device="cdrom", bus="sata", target="sdc", path=None),
    "scsi-cdrom-host-drive": dict(device="cdrom", bus="scsi", target="sdd", path="/dev/sr0", block=True),
}


def _holding(case: str) -> str:
    """A domain (Xen PV for the xen bus, else KVM) whose one device is the case's element."""
    xen = RENDERED[case]["bus"] == "xen"
    domain = _domain(domain_type="xen", os_type="xen") if xen else _domain()
    return _with_devices(domain, render_disk(**RENDERED[case]))


@pytest.mark.parametrize("case", sorted(RENDERED))
def test_the_disk_element_of_each_device_and_bus(case: str) -> None:
    fields = RENDERED[case]
    xml = render_disk(**fields)
    disk = etree.fromstring(xml.encode())
    assert disk.tag == "disk" and disk.get("device") == fields["device"]
    assert disk.get("type") == ("block" if fields.get("block") else "file")
    target = disk.find("target")
    assert (target.get("dev"), target.get("bus")) == (fields["target"], fields["bus"])
    source = disk.find("source")
    if fields["path"] is None:
        assert source is None
    else:
        assert source.get("dev" if fields.get("block") else "file") == fields["path"]
    cdrom = fields["device"] == "cdrom"
    assert disk.find("driver").get("type") == ("raw" if cdrom else fields["fmt"])
    assert (disk.find("readonly") is not None) == (cdrom or bool(fields.get("readonly")))
    # What parse_disks reads back from a domain holding it.
    [info] = parse_disks(_holding(case))
    assert (info.target, info.device, info.path, info.bus) == (
        fields["target"],
        fields["device"],
        fields["path"],
        fields["bus"],
    )
    assert info.readonly == (cdrom or bool(fields.get("readonly"))) and info.pending is None


@needs_validator
@pytest.mark.parametrize("case", sorted(RENDERED))
def test_each_disk_element_passes_libvirt_schema(case: str, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(_holding(case))
    assert _validate(path) is None


@needs_validator
def test_a_hostile_path_stays_an_attribute(tmp_path: Path) -> None:
    hostile = f"{POOL}/x'/><source file='/etc/shadow'/><a b='"
    xml = render_disk(device="disk", bus="virtio", target="vdb", path=hostile, fmt="raw")
    disk = etree.fromstring(xml.encode())
    assert [s.get("file") for s in disk.iterfind("source")] == [hostile]
    path = tmp_path / "domain.xml"
    path.write_text(_with_devices(_domain(), xml))
    assert _validate(path) is None


LIVE_DRIVE = """
<disk type='file' device='cdrom'>
  <driver name='qemu' type='raw'/>
  <source file='/var/lib/libvirt/images/a.iso' index='2'/>
  <backingStore/>
  <target dev='hdc' bus='ide'/>
  <readonly/>
  <alias name='ide0-1-0'/>
  <address type='drive' controller='0' bus='1' target='0' unit='0'/>
</disk>
"""


@needs_validator
@pytest.mark.parametrize("path", [f"{POOL}/b.iso", None])
def test_another_disc_in_a_drive_keeps_the_rest_of_it(path: str | None, tmp_path: Path) -> None:
    xml = media_xml(etree.fromstring(LIVE_DRIVE.encode()), path)
    drive = etree.fromstring(xml.encode())
    assert [s.get("file") for s in drive.iterfind("source")] == ([path] if path else [])
    assert drive.find("backingStore") is None and drive.get("type") == "file"
    assert drive.find("target").get("dev") == "hdc" and drive.find("alias").get("name") == "ide0-1-0"
    assert drive.find("address").get("bus") == "1" and drive.find("readonly") is not None
    if path:  # right after <driver>, where libvirt writes it
        assert [child.tag for child in drive][:2] == ["driver", "source"]
    document = tmp_path / "domain.xml"
    document.write_text(_with_devices(_domain(), xml))
    assert _validate(document) is None


def test_next_free_target() -> None:
    assert next_target({"vda", "hda"}, "virtio") == "vdb"
    assert next_target({"vda", "vdc"}, "virtio") == "vdb"  # a gap left by a detach is reused
    assert next_target(set(), "virtio") == "vda"
    assert next_target({"sda", "sdb", "vda"}, "sata") == "sdc"
    assert next_target({"sda"}, "scsi") == "sdb"  # sata and scsi share sdX
    assert next_target({"hda", "hdb", "hdc"}, "ide") == "hdd"
    assert next_target({"xvda"}, "xen") == "xvdb"
    every = {f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1)}
    assert next_target(every, "virtio") == "vdaa"


def _root(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


SATA_DISK = "<disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='sata'/></disk>"
SCSI_CDROM = "<disk type='file' device='cdrom'><target dev='sdb' bus='scsi'/><readonly/></disk>"


@pytest.mark.parametrize(
    ("xml", "device", "asked", "bus"),
    [
        (_domain("pc-i440fx-7.2"), "disk", None, "virtio"),
        (_domain("pc-i440fx-7.2"), "disk", "sata", "sata"),
        (_domain("pc-i440fx-7.2"), "cdrom", None, "ide"),
        (_domain("pc-q35-7.2"), "cdrom", None, "sata"),  # q35 has no IDE
        (_domain("pc", disks=SATA_DISK), "cdrom", None, "sata"),  # as domxml does next to SATA disks
        (_domain("pc-q35-7.2", disks=SCSI_CDROM), "cdrom", None, "scsi"),  # where the drives are
        (_domain("pc"), "cdrom", "scsi", "scsi"),
        (_domain(domain_type="xen", os_type="hvm"), "disk", None, "xen"),
        (_domain(domain_type="xen", os_type="hvm"), "disk", "scsi", "xen"),
        (_domain(domain_type="xen", os_type="hvm"), "disk", "sata", "sata"),
        (_domain(domain_type="xen", os_type="hvm"), "cdrom", None, "ide"),
        (_domain(domain_type="xen", os_type="xen"), "disk", "virtio", "xen"),
        (_domain(domain_type="xen", os_type="xenpvh"), "cdrom", None, "xen"),
    ],
)
def test_the_bus_of_a_new_disk_or_drive(xml: str, device: str, asked: str | None, bus: str) -> None:
    assert attach_bus(_root(xml), device, asked) == bus


@pytest.mark.parametrize(("device", "asked"), [("disk", "xen"), ("cdrom", "virtio"), ("cdrom", "xen")])
def test_buses_a_kvm_guest_cannot_have_are_refused(device: str, asked: str) -> None:
    with pytest.raises(ValueError, match=asked):
        attach_bus(_root(_domain("pc")), device, asked)


def _disk(target: str, path: str | None, *, device: str = "disk", bus: str = "virtio") -> str:
    source = f"<source file='{path}'/>" if path else ""
    readonly = "<readonly/>" if device == "cdrom" else ""
    return (
        f"<disk type='file' device='{device}'><driver name='qemu' type='raw'/>{source}"
        f"<target dev='{target}' bus='{bus}'/>{readonly}</disk>"
    )


def test_what_the_next_boot_changes_is_pending() -> None:
    live = _domain(
        disks=_disk("vda", "/p/root.img")
        + _disk("hda", "/p/a.iso", device="cdrom", bus="ide")
        + _disk("hdb", "/p/c.iso", device="cdrom", bus="ide")
        + _disk("vdc", "/p/old.img")
    )
    config = _domain(
        disks=_disk("vda", "/p/root.img")
        + _disk("hda", "/p/b.iso", device="cdrom", bus="ide")
        + _disk("hdb", "/p/c.iso", device="cdrom", bus="ide")
        + _disk("vdb", "/p/new.img")
        + _disk("hdd", None, device="cdrom", bus="ide")
    )
    disks = with_pending(parse_disks(live), parse_disks(config))
    assert [(d.target, d.path, d.pending) for d in disks] == [
        ("vda", "/p/root.img", None),
        ("hda", "/p/a.iso", "media"),  # the running guest's disc, another one next boot
        ("hdb", "/p/c.iso", None),
        ("vdc", "/p/old.img", "detach"),
        ("vdb", "/p/new.img", "attach"),
        ("hdd", None, "attach"),
    ]
    assert with_pending(parse_disks(live), parse_disks(live)) == parse_disks(live)


def test_image_sizes_are_read_cheaply(tmp_path: Path) -> None:
    qcow2 = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "96M"], check=True)
    raw = tmp_path / "b.img"
    raw.write_bytes(b"\0" * 4096)
    assert image_capacity(str(qcow2), "qcow2") == 96 * MIB
    assert qcow2.stat().st_size < 96 * MIB  # the file is not the size the guest sees
    assert image_capacity(str(raw), "raw") == 4096
    assert image_capacity(str(raw), "qcow2") is None  # not a qcow2 image after all
    assert image_capacity(str(tmp_path / "missing.img"), "raw") is None
    assert image_capacity("a.qcow2", "qcow2") is None  # a volume's name, not a path
    assert image_capacity(str(tmp_path), "raw") is None  # a directory
    xml = _domain(disks=_disk("vda", str(raw)) + _disk("hda", None, device="cdrom", bus="ide"))
    sizes = parse_disks(xml, capacity=image_capacity)
    assert [(d.target, d.capacity_bytes) for d in sizes] == [("vda", 4096), ("hda", None)]


# -- the requests ------------------------------------------------------------------------------
def test_attach_requests() -> None:
    empty = DiskAttachRequest.model_validate({"device": "cdrom"})
    assert empty.disk.existing is None and empty.disk.size_gib is None
    assert DiskAttachRequest.model_validate({"disk": {}, "device": "cdrom"}) == empty
    # What the console stores in a job and reads back.
    again = DiskAttachRequest.model_validate(empty.model_dump(mode="json", exclude_defaults=True))
    assert again == empty
    iso = DiskAttachRequest.model_validate({"disk": {"existing": "a.iso", "bus": "sata"}, "device": "cdrom"})
    assert iso.disk.bus == "sata"
    assert DiskAttachRequest(disk=DiskSpec(size_gib=0.0625)).device == "disk"
    refused = [
        ({"disk": {}}, "disk.size_gib: required"),
        ({"device": "disk"}, "disk.size_gib: required"),
        ({"disk": {"size_gib": 1}, "device": "cdrom"}, "takes an ISO"),
        ({"disk": {"backing": "base.qcow2"}, "device": "cdrom"}, "takes an ISO"),
        ({"disk": {"bus": "virtio"}, "device": "cdrom"}, "cannot be on virtio"),
        ({"disk": {"existing": "../etc/passwd"}}, "must not contain '..'"),
        ({"disk": {"size_gib": 1}, "device": "floppy"}, "device"),
        ({"disk": {"size_gib": 1}, "bogus": 1}, "bogus"),
    ]
    for body, message in refused:
        with pytest.raises(ValidationError, match=re.escape(message)):
            DiskAttachRequest.model_validate(body)
    assert MediaRequest.model_validate({}).path is None
    with pytest.raises(ValidationError, match="must not contain"):
        MediaRequest(path="isos/../../etc/shadow")


def test_a_domain_s_new_disk_still_needs_its_size() -> None:
    with pytest.raises(ValidationError, match="size_gib is required for a new disk") as caught:
        DomainSpec.model_validate(
            {"uuid": str(uuid.uuid4()), "name": "x", "disks": [{}], "boot": {"kind": "kernel", "kernel": "k"}}
        )
    assert caught.value.errors()[0]["loc"] == ("disks", 0)


# -- device events -----------------------------------------------------------------------------
class _Domain:
    """What the event hub reads of a domain a device event names."""

    def __init__(self, domain_uuid: uuid.UUID) -> None:
        self.uuid = domain_uuid

    def UUIDString(self) -> str:
        return str(self.uuid)

    def name(self) -> str:
        return "hotplugged"

    def state(self) -> tuple[int, int]:
        return libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED


@pytest.mark.parametrize(
    ("event_id", "name"),
    [
        (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, "device-added"),
        (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, "device-removed"),
        (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, "device-removal-failed"),
    ],
)
async def test_device_events_reach_listeners_and_subscribers(event_id: int, name: str) -> None:
    """A disk the guest released late changes the domain: the cache (a listener) must hear it."""
    hub = EventHub()
    heard: list[DomainEvent] = []
    hub.add_listener(heard.append)
    subscriber = hub.subscribe()
    hub.start()
    try:
        domain_uuid = uuid.uuid4()
        hub._on_device(None, _Domain(domain_uuid), "virtio-disk1", event_id)  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            while not heard:
                await asyncio.sleep(0.01)
        assert [(e.uuid, e.event, e.state) for e in heard] == [(domain_uuid, name, "running")]
        published = DomainEvent.model_validate_json(subscriber.queue.get_nowait() or "")
        assert published == heard[0]
    finally:
        await hub.stop()


# -- the API on libvirt's test driver ----------------------------------------------------------
TEST_DOMAIN = uuid.UUID("6695eb01-f6a4-8304-79aa-97f2502e193f")  # the test driver's "test"


async def test_refusals_on_the_test_driver(test_agent: RunningAgent) -> None:
    async with AgentClient(test_agent.url, test_agent.secret, timeout=30) as client:
        nobody = uuid.uuid4()
        with pytest.raises(AgentNotFound, match=f"no domain with uuid {nobody}"):
            await client.attach_disk(nobody, DiskAttachRequest(device="cdrom"))
        with pytest.raises(AgentNotFound):
            await client.detach_disk(nobody, "vda")
        with pytest.raises(AgentNotFound):
            await client.change_media(nobody, "hdc", None)
        with pytest.raises(AgentNotFound, match="has no disk or CD-ROM drive vdz"):
            await client.detach_disk(TEST_DOMAIN, "vdz")
        with pytest.raises(AgentNotFound, match="has no disk or CD-ROM drive hdc"):
            await client.change_media(TEST_DOMAIN, "hdc", None)
        with pytest.raises(AgentNotFound, match="a target is a name such as vdb"):
            await client.detach_disk(TEST_DOMAIN, "VDA;rm")
        with pytest.raises(AgentInvalid, match="is a disk, not a CD-ROM drive"):
            await client.change_media(TEST_DOMAIN, "vda", "install.iso")
        with pytest.raises(AgentInvalid, match="is not a volume of a storage pool"):
            await client.attach_disk(TEST_DOMAIN, DiskAttachRequest(disk=DiskSpec(existing="/nowhere.img")))
        with pytest.raises(AgentInvalid, match=r"'missing\.iso' does not exist"):
            await client.attach_disk(
                TEST_DOMAIN, DiskAttachRequest(disk=DiskSpec(existing="missing.iso"), device="cdrom")
            )
        with pytest.raises(AgentInvalid, match="no storage pool 'nope'"):
            await client.attach_disk(TEST_DOMAIN, DiskAttachRequest(disk=DiskSpec(size_gib=1, pool="nope")))
        async with aiohttp.ClientSession() as http:  # the body is checked before anything is done
            async with http.post(
                f"{test_agent.url}/v1/domains/{TEST_DOMAIN}/disks",
                json={"device": "disk"},
                headers={"Authorization": f"Bearer {test_agent.secret}"},
            ) as resp:
                assert resp.status == 400
                assert "disk.size_gib: required" in (await resp.json())["detail"]


async def test_another_domain_s_writable_disk_is_refused(test_agent: RunningAgent) -> None:
    spec = DomainSpec(
        uuid=uuid.uuid4(),
        name=f"owner-{uuid.uuid4().hex[:6]}",
        memory_mib=64,
        disks=[DiskSpec(size_gib=1)],
        boot=KernelBoot(kernel="vmlinuz"),
    )
    async with AgentClient(test_agent.url, test_agent.secret, timeout=30) as client:
        info = await client.define(spec)
        path = info.disks[0].path
        assert path is not None
        try:  # (the test driver's volumes are no files: the CD-ROM case is in the real guest's test)
            request = DiskAttachRequest(disk=DiskSpec(existing=path))
            with pytest.raises(
                AgentConflict, match=rf"{re.escape(path)} is a writable disk of {spec.name} \(vda\)"
            ):
                await client.attach_disk(TEST_DOMAIN, request)
        finally:
            await client.delete(spec.uuid, delete_disks=True)


async def test_a_volume_made_for_an_attach_that_failed_is_deleted(test_agent: RunningAgent) -> None:
    """The test driver cannot attach devices at all: the new volume must not stay behind."""
    async with AgentClient(test_agent.url, test_agent.secret, timeout=30) as client:
        before = {v.name for v in (await client.list_volumes("default")).volumes}
        with pytest.raises(AgentError, match=r"attaching a disk: .*not supported") as caught:
            await client.attach_disk(TEST_DOMAIN, DiskAttachRequest(disk=DiskSpec(size_gib=1)))
        assert caught.value.status == 502
        after = {v.name for v in (await client.list_volumes("default")).volumes}
        assert after == before
        assert "test-vdb.qcow2" not in after
    assert "created volume test-vdb.qcow2 in pool default for vdb of test" in test_agent.log()


# -- a real guest under QEMU -------------------------------------------------------------------
def _guest_version(key: str) -> str:
    for line in (GUEST / "VERSION").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no {key}= in {GUEST / 'VERSION'}")


@pytest.fixture(scope="module")
def virtio_initrd() -> Path:
    """The test guest's initramfs, which loads the virtio block driver (the guest's Debian cloud
    kernel has it as a module): without it the guest sees no virtio disk, hot-plugged or not."""
    if "virtio_blk.ko" not in _guest_version("modules").split():
        pytest.skip(f"the test guest in {GUEST} predates its virtio modules: run tests/guest/build.sh")
    return GUEST / "initrd.img"


@pytest.fixture(scope="module")
def real_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    log = tmp_path_factory.mktemp("disks-agent") / "agent.log"
    agent = launch_agent(uri=URI, pool_dir=POOL_PATH, log_path=log, accel="tcg", ready_timeout=SLOW)
    try:
        yield agent
    finally:
        stop_agent(agent)


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirt.open(URI)
    try:
        yield connection
    finally:
        connection.close()


BLOCKS = re.compile(rb"BLK-([a-z0-9 ]*)-END")


async def _guest_blocks(serial: aiohttp.ClientWebSocketResponse) -> set[str]:
    """The block devices the guest's kernel has (/sys/block), typed on its serial console."""
    await serial.send_bytes(b"echo BLK-$(ls /sys/block)-END\n")  # the typed line has '$(': no match
    seen = b""
    async with asyncio.timeout(30):
        while (match := BLOCKS.search(seen)) is None:
            msg = await serial.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                seen += msg.data
            else:
                assert msg.type == aiohttp.WSMsgType.TEXT, msg  # presence notices
    return set(match.group(1).decode().split())


async def _until_guest(
    serial: aiohttp.ClientWebSocketResponse, has: str, present: bool, within: float
) -> float:
    """Seconds until `has` is (or is no longer) in the guest's /sys/block; fails after `within`."""
    started = time.monotonic()
    while (has in await _guest_blocks(serial)) != present:
        assert time.monotonic() - started < within, (
            f"{has} {'never came' if present else 'stayed'} in the guest"
        )
        await asyncio.sleep(0.5)
    return time.monotonic() - started


def _blocklist(domain: str, *, inactive: bool = False) -> dict[str, str]:
    """`virsh domblklist`: target -> source ("-" when empty), live or for the next boot."""
    out = subprocess.run(
        ["virsh", "-c", URI, "domblklist", domain, *(["--inactive"] if inactive else [])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split(None, 1) for line in out.splitlines()[2:] if line.strip()]
    return {row[0]: row[1].strip() for row in rows}


def _disk_of(info: DomainInfo, target: str) -> tuple[str | None, str | None, str | None]:
    [disk] = [d for d in info.disks if d.target == target]
    return disk.device, disk.path, disk.pending


@pytest.mark.libvirt
@pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails")
@needs_guest
async def test_a_disk_hot_plugged_into_a_running_guest_and_released(
    real_agent: RunningAgent, virtio_initrd: Path
) -> None:
    spec, kernel, initrd = kernel_guest(f"hotplug-{uuid.uuid4().hex[:6]}", disks=[DiskSpec(size_gib=0.0625)])
    shutil.copyfile(virtio_initrd, initrd)
    first = POOL_PATH / f"{spec.name}-{spec.uuid.hex[:8]}-disk0.qcow2"
    added, second = POOL_PATH / f"{spec.name}-vdb.qcow2", POOL_PATH / f"{spec.name}-vdb-2.qcow2"
    try:
        async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
            await client.define(spec)
            await client.start(spec.uuid)
            async with client.open_serial(spec.uuid) as serial, client.events() as events:
                await next_event(events)  # the inventory
                await _read_until(serial, b"DOMUS-TEST-GUEST READY", timeout=180)
                assert await _guest_blocks(serial) == {"vda"}  # the virtio modules work

                # As a job makes it: the same call again (a retried job) is answered from memory.
                request = DiskAttachRequest(disk=DiskSpec(size_gib=0.0625))
                job = AgentClient(real_agent.url, real_agent.secret, timeout=SLOW, idempotency_key="job-1")
                async with job:
                    change = await job.attach_disk(spec.uuid, request)
                    assert await job.attach_disk(spec.uuid, request) == change
                assert [d.target for d in (await client.get_domain(spec.uuid)).disks] == ["vda", "vdb"]
                assert (change.target, change.path, change.applied, change.created) == (
                    "vdb",
                    str(added),
                    "now",
                    True,
                ), change
                assert added.exists()
                [vdb] = [d for d in change.domain.disks if d.target == "vdb"]
                assert (vdb.device, vdb.bus, vdb.pending, vdb.capacity_bytes) == (
                    "disk",
                    "virtio",
                    None,
                    64 * MIB,
                )
                assert _blocklist(spec.name)["vdb"] == str(added)
                assert _blocklist(spec.name, inactive=True)["vdb"] == str(added)
                seen_after = await _until_guest(serial, "vdb", present=True, within=20)
                print(f"hot-plugged vdb in the guest's /sys/block after {seen_after:.1f} s")
                await asyncio.wait_for(wait_for_domain_event(events, spec.uuid, "device-added"), 30)

                started = time.monotonic()
                detached = await client.detach_disk(spec.uuid, "vdb")
                took = time.monotonic() - started
                print(f"detach: {detached.applied} after {took:.1f} s ({detached.detail})")
                assert (detached.target, detached.path, detached.applied) == ("vdb", str(added), "now"), (
                    detached
                )
                assert [d.target for d in detached.domain.disks] == ["vda"]
                assert "vdb" not in _blocklist(spec.name) and "vdb" not in _blocklist(
                    spec.name, inactive=True
                )
                gone_after = await _until_guest(serial, "vdb", present=False, within=5)
                print(f"vdb gone from the guest's /sys/block {gone_after:.1f} s after the detach answered")
                await asyncio.wait_for(wait_for_domain_event(events, spec.uuid, "device-removed"), 30)
                assert added.exists()  # the volume is kept: the console decides

                with pytest.raises(AgentNotFound):  # the same detach again: nothing there
                    await client.detach_disk(spec.uuid, "vdb")

                # vdb again: its kept volume holds the name, so the new one gets another.
                again = await client.attach_disk(spec.uuid, DiskAttachRequest(disk=DiskSpec(size_gib=0.0625)))
                assert (again.target, again.path, again.applied) == ("vdb", str(second), "now"), again
                await _until_guest(serial, "vdb", present=True, within=20)
                # A paused guest cannot give it back: it goes at the next boot, and shows so ...
                await client.suspend(spec.uuid)
                started = time.monotonic()
                held = await client.detach_disk(spec.uuid, "vdb")
                took = time.monotonic() - started
                print(f"detach from a paused guest: {held.applied} after {took:.1f} s ({held.detail})")
                assert held.applied == "next boot" and 9 < took < 20
                assert held.detail == "the guest did not release vdb: it is removed from the next boot"
                assert _disk_of(held.domain, "vdb") == ("disk", str(second), "detach")
                assert "vdb" in _blocklist(spec.name) and "vdb" not in _blocklist(spec.name, inactive=True)
                # ... until the guest runs again and releases it: libvirt's event says so, and the
                # agent's cached domain follows.
                await client.resume(spec.uuid)
                await asyncio.wait_for(wait_for_domain_event(events, spec.uuid, "device-removed"), 30)
                assert [d.target for d in (await client.get_domain(spec.uuid)).disks] == ["vda"]
                await _until_guest(serial, "vdb", present=False, within=20)
            await client.destroy(spec.uuid)
            result = await client.delete(spec.uuid, delete_disks=True)
            assert result.deleted_volumes == [str(first)]
            assert added.exists() and second.exists()
    finally:
        _force_cleanup(spec.uuid, [first, added, second, kernel, initrd])


async def _read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes, timeout: float) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                seen += msg.data
            else:
                assert msg.type == aiohttp.WSMsgType.TEXT, (msg, seen[-500:])
    return seen


def _make_iso(path: Path, label: str) -> None:
    tree = path.parent / f".{path.name}.d"
    tree.mkdir()
    try:
        (tree / "README.TXT").write_text(f"{label}\n")
        subprocess.run(
            ["xorriso", "-as", "mkisofs", "-quiet", "-V", label, "-o", str(path), str(tree)],
            check=True,
            capture_output=True,
        )
    finally:
        shutil.rmtree(tree)


@pytest.mark.libvirt
@pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails")
@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso makes the second ISO")
@needs_guest
async def test_a_cdrom_s_disc_changed_live_and_what_waits_for_the_next_boot(
    real_agent: RunningAgent, conn: libvirt.virConnect
) -> None:
    spec, kernel, initrd = kernel_guest(f"cdrom-{uuid.uuid4().hex[:6]}", disks=[DiskSpec(size_gib=0.0625)])
    root_disk = POOL_PATH / f"{spec.name}-{spec.uuid.hex[:8]}-disk0.qcow2"
    iso_a, iso_b = POOL_PATH / f"{spec.name}-a.iso", POOL_PATH / f"{spec.name}-b.iso"
    shutil.copyfile(GUEST / "guest.iso", iso_a)
    _make_iso(iso_b, "DOMUS_DISC_B")
    try:
        # Every call as one job makes them: each a request of its own, none answered from memory.
        job = AgentClient(real_agent.url, real_agent.secret, timeout=SLOW, idempotency_key="job-2")
        async with job as client:
            await client.define(spec)
            own = DiskAttachRequest(disk=DiskSpec(existing=str(root_disk)), device="cdrom")
            with pytest.raises(AgentConflict, match=rf"is a writable disk of {spec.name} \(vda\)"):
                await client.attach_disk(spec.uuid, own)  # its own disk, as a CD-ROM too
            # Shut off: into its definition, which is all there is ("now").
            request = DiskAttachRequest(disk=DiskSpec(existing=iso_a.name), device="cdrom")
            drive = await client.attach_disk(spec.uuid, request)
            assert (drive.applied, drive.path, drive.created) == ("now", str(iso_a), False)
            target = drive.target
            [info] = [d for d in drive.domain.disks if d.target == target]
            assert (info.device, info.readonly, info.pending) == ("cdrom", True, None)
            assert info.capacity_bytes == iso_a.stat().st_size
            machine = etree.fromstring(conn.lookupByUUIDString(str(spec.uuid)).XMLDesc(0)).find("os/type")
            print(f"machine {machine.get('machine')}: the CD-ROM drive is {target} on {info.bus}")
            assert (target, info.bus) in (("hda", "ide"), ("sda", "sata"))

            assert (await client.start(spec.uuid)).state == "running"
            changed = await client.change_media(spec.uuid, target, iso_b.name)
            assert (changed.applied, changed.path) == ("now", str(iso_b))
            assert _disk_of(changed.domain, target) == ("cdrom", str(iso_b), None)
            assert _blocklist(spec.name)[target] == str(iso_b)
            assert _blocklist(spec.name, inactive=True)[target] == str(iso_b)
            assert _disk_of(await client.get_domain(spec.uuid), target) == ("cdrom", str(iso_b), None)

            ejected = await client.change_media(spec.uuid, target, None)
            assert (ejected.applied, ejected.path) == ("now", None)
            assert _disk_of(ejected.domain, target) == ("cdrom", None, None)
            assert _blocklist(spec.name)[target] == "-"
            with pytest.raises(AgentInvalid, match="does not exist"):
                await client.change_media(spec.uuid, target, f"{spec.name}-missing.iso")

            # A second drive on IDE (or SATA) cannot be hot-plugged: the next boot has it, the guest
            # not yet.
            empty = await client.attach_disk(spec.uuid, DiskAttachRequest(device="cdrom"))
            print(f"an empty drive on a running guest: {empty.applied} ({empty.detail})")
            second = empty.target
            bus = str(info.bus).upper()
            assert empty.applied == "next boot"
            assert empty.detail == (
                f"{second} is on {bus}, which takes no device while the guest runs: "
                "it is attached from the next boot"
            )
            assert _disk_of(empty.domain, second) == ("cdrom", None, "attach")
            assert second not in _blocklist(spec.name)
            assert _blocklist(spec.name, inactive=True)[second] == "-"
            # Its disc goes into the next boot's drive ("now": that drive is all there is).
            loaded = await client.change_media(spec.uuid, second, iso_a.name)
            assert loaded.applied == "now"
            assert _disk_of(loaded.domain, second) == ("cdrom", str(iso_a), "attach")
            # libvirt cannot take a CD-ROM drive out of a running guest: gone at the next boot.
            away = await client.detach_disk(spec.uuid, target)
            print(f"detach of a running guest's {bus} drive: {away.applied} ({away.detail})")
            assert away.applied == "next boot" and away.detail.startswith(
                f"the running guest cannot release {target} now ("
            )
            assert away.detail.endswith("): it is removed from the next boot")
            assert _disk_of(away.domain, target) == ("cdrom", None, "detach")
            assert target in _blocklist(spec.name) and target not in _blocklist(spec.name, inactive=True)
            dropped = await client.detach_disk(spec.uuid, second)  # only in the next boot's definition
            assert dropped.applied == "now" and second not in {d.target for d in dropped.domain.disks}

            stopped = await client.destroy(spec.uuid)
            assert all(d.pending is None for d in stopped.disks)
            result = await client.delete(spec.uuid, delete_disks=True)
            assert result.deleted_volumes == [str(root_disk)]  # never the ISOs
        assert iso_a.exists() and iso_b.exists()
    finally:
        _force_cleanup(spec.uuid, [root_disk, iso_a, iso_b, kernel, initrd])
