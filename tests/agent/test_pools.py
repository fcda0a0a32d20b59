"""Storage pools without a daemon: their XML (golden files and libvirt's own schema), what a
PoolSpec refuses and how it says so, how a pool is summed up for people, and the event hub's
debounced publication of fresh resources."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pydantic import ValidationError

from agent.events import EventHub
from agent.pools import definition_differences, pool_source, pool_xml
from agent.protocol import POOL_FIELDS, POOL_TYPES, HostResources, PoolInfo, PoolSpec, StatsEvent

GOLDEN = Path(__file__).parent / "golden" / "pools"
UPDATE = os.environ.get("DOMUS_UPDATE_GOLDEN") == "1"
SCHEMA = Path("/usr/share/libvirt/schemas/storagepool.rng")

# Every type, with all the optional fields it takes, and the smallest spec of the types that
# have optional fields (the XML must be valid both ways).
CASES: dict[str, dict[str, Any]] = {
    "dir": {"type": "dir", "target_path": "/srv/pools/vms", "build": True},
    "fs": {
        "type": "fs",
        "source_devices": ["/dev/sdb1"],
        "target_path": "/mnt/vms",
        "source_format": "ext4",
        "build": True,
    },
    "fs_minimal": {"type": "fs", "source_devices": ["/dev/sdb1"], "target_path": "/mnt/vms"},
    "netfs_nfs": {
        "type": "netfs",
        "source_host": "nfs.example.com",
        "source_dir": "/export/vms",
        "target_path": "/mnt/nfs-vms",
        "source_format": "nfs",
        "build": True,
    },
    "netfs_minimal": {
        "type": "netfs",
        "source_host": "192.0.2.10",
        "source_dir": "/export",
        "target_path": "/mnt/nfs",
    },
    "netfs_cifs": {
        "type": "netfs",
        "source_host": "smb.example.com",
        "source_dir": "/vmshare",
        "target_path": "/mnt/smb",
        "source_format": "cifs",
    },
    "netfs_glusterfs": {
        "type": "netfs",
        "source_host": "2001:db8::10",
        "source_dir": "/gv0",
        "target_path": "/mnt/gluster",
        "source_format": "glusterfs",
    },
    "logical": {
        "type": "logical",
        "source_name": "vg_vms",
        "source_devices": ["/dev/sdc", "/dev/sdd"],
        "build": True,
    },
    "logical_existing": {"type": "logical", "source_name": "vg_vms"},
    "disk": {"type": "disk", "source_devices": ["/dev/sde"], "source_format": "gpt", "build": True},
    "disk_minimal": {"type": "disk", "source_devices": ["/dev/sde"]},
    "iscsi": {
        "type": "iscsi",
        "source_host": "san.example.com",
        "source_name": "iqn.2013-06.com.example:vms",
    },
    "scsi": {"type": "scsi", "adapter": "host0"},
    "zfs": {"type": "zfs", "source_name": "tank", "source_devices": ["/dev/sdf"], "build": True},
    "zfs_existing": {"type": "zfs", "source_name": "tank"},
    "gluster": {
        "type": "gluster",
        "source_host": "gluster.example.com",
        "source_name": "gv0",
        "source_dir": "/vms",
    },
    "gluster_minimal": {"type": "gluster", "source_host": "gluster.example.com", "source_name": "gv0"},
}


def spec(case: str, **changes: Any) -> PoolSpec:
    return PoolSpec.model_validate({"name": f"p-{case}", **CASES[case], **changes})


def _validate(path: Path) -> str | None:
    """None when `path` is a valid storage pool XML, else `virt-xml-validate`'s complaint."""
    result = subprocess.run(
        ["virt-xml-validate", str(path), "storagepool"], capture_output=True, text=True, check=False
    )
    return None if result.returncode == 0 else result.stderr + result.stdout


needs_validator = pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None or not SCHEMA.exists(),
    reason="virt-xml-validate / xmllint / libvirt schemas are not installed (scripts/bootstrap.sh installs them)",
)


def test_every_pool_type_has_a_case() -> None:
    assert {CASES[case]["type"] for case in CASES} == set(POOL_TYPES)
    assert set(POOL_FIELDS) == set(POOL_TYPES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pool_xml_matches_golden(case: str) -> None:
    xml = pool_xml(spec(case))
    golden = GOLDEN / f"{case}.xml"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(xml)
    assert xml == golden.read_text(), f"re-run with DOMUS_UPDATE_GOLDEN=1 to accept: {case}"


def test_every_pool_golden_file_has_a_case() -> None:
    assert sorted(p.name.removesuffix(".xml") for p in GOLDEN.glob("*.xml")) == sorted(CASES)


@needs_validator
@pytest.mark.parametrize("case", sorted(CASES))
def test_pool_xml_passes_libvirt_schema(case: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.xml"
    path.write_text(pool_xml(spec(case)))
    assert _validate(path) is None


@needs_validator
def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    """The validator really judges: a logical pool without its <target> is refused."""
    root = etree.fromstring(pool_xml(spec("logical")).encode())
    root.remove(root.find("target"))
    path = tmp_path / "bad.xml"
    path.write_bytes(etree.tostring(root))
    assert _validate(path) is not None


def test_pool_xml_places_each_field() -> None:
    iscsi = etree.fromstring(pool_xml(spec("iscsi")).encode())
    assert iscsi.find("source/device").get("path") == "iqn.2013-06.com.example:vms"  # the IQN
    assert iscsi.findtext("target/path") == "/dev/disk/by-path"
    cifs = etree.fromstring(pool_xml(spec("netfs_cifs")).encode())
    assert cifs.find("source/dir").get("path") == "vmshare"  # a share name, not a path
    nfs = etree.fromstring(pool_xml(spec("netfs_nfs")).encode())
    assert nfs.find("source/dir").get("path") == "/export/vms"
    logical = etree.fromstring(pool_xml(spec("logical")).encode())
    assert [d.get("path") for d in logical.iterfind("source/device")] == ["/dev/sdc", "/dev/sdd"]
    assert (logical.findtext("source/name"), logical.findtext("target/path")) == ("vg_vms", "/dev/vg_vms")
    scsi = etree.fromstring(pool_xml(spec("scsi")).encode())
    assert scsi.find("source/adapter").attrib == {"type": "scsi_host", "name": "host0"}
    dir_pool = etree.fromstring(pool_xml(spec("dir")).encode())
    assert dir_pool.find("source") is None and dir_pool.findtext("target/path") == "/srv/pools/vms"


def test_hostile_values_stay_text(tmp_path: Path) -> None:
    hostile = spec("dir", target_path="/srv/a'b\"c<d>&e</path></target><x>")
    root = etree.fromstring(pool_xml(hostile).encode())
    assert root.findtext("target/path") == "/srv/a'b\"c<d>&e</path></target><x>"
    assert [el.tag for el in root.iter()] == ["pool", "name", "target", "path"]


# -- what a spec refuses ------------------------------------------------------------------------
def _errors(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        PoolSpec.model_validate(data)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in info.value.errors()}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"type": "dir"}, {"target_path": "required for a pool of type dir"}),
        (
            {"type": "netfs", "source_host": "nfs.example.com", "target_path": "/mnt/x"},
            {"source_dir": "required for a pool of type netfs"},
        ),
        (
            {"type": "iscsi", "source_host": "san.example.com"},
            {"source_name": "required for a pool of type iscsi"},
        ),
        ({"type": "scsi"}, {"adapter": "required for a pool of type scsi"}),
        (
            {"type": "fs", "target_path": "/mnt/x"},
            {"source_devices": "required for a pool of type fs (one device)"},
        ),
        (
            {"type": "dir", "target_path": "/srv/x", "source_host": "nfs.example.com"},
            {"source_host": "not used by a pool of type dir: leave it out"},
        ),
        (
            {
                "type": "gluster",
                "source_host": "g.example.com",
                "source_name": "gv0",
                "target_path": "/mnt/g",
            },
            {"target_path": "not used by a pool of type gluster: leave it out"},
        ),
        (
            {"type": "scsi", "adapter": "host0", "source_format": "gpt"},
            {"source_format": "not used by a pool of type scsi: leave it out"},
        ),
        (
            {"type": "logical", "source_name": "vg0", "source_devices": ["/dev/sdb"]},
            {
                "source_devices": "only to build a pool of type logical (the devices to make it on); "
                "leave it out for an existing one"
            },
        ),
        (
            {"type": "zfs", "source_name": "tank", "build": True},
            {"source_devices": "required to build a pool of type zfs"},
        ),
        (
            {
                "type": "iscsi",
                "source_host": "san.example.com",
                "source_name": "iqn.2013-06.com.example:x",
                "build": True,
            },
            {"build": "libvirt cannot build a pool of type iscsi: its storage is made elsewhere"},
        ),
        (
            {"type": "disk", "source_devices": ["/dev/sdb", "/dev/sdc"]},
            {"source_devices": "a pool of type disk takes one device"},
        ),
        (
            {"type": "zfs", "source_name": "tank", "source_devices": ["/dev/sdb", "/dev/sdc"], "build": True},
            {"source_devices": "a pool of type zfs takes one device"},
        ),
        (
            {
                "type": "netfs",
                "source_host": "n.example.com",
                "source_dir": "/e",
                "target_path": "/m",
                "source_format": "ext4",
            },
            {"source_format": "a pool of type netfs takes one of auto, nfs, cifs, glusterfs"},
        ),
        (
            {"type": "iscsi", "source_host": "san.example.com", "source_name": "vms"},
            {"source_name": "must be the target's IQN, such as iqn.2004-04.com.example:storage"},
        ),
        (
            {"type": "netfs", "source_host": "bad_host", "source_dir": "/e", "target_path": "/m"},
            {
                "source_host": "Value error, must be a host name or an IP address, such as nfs.example.com or 192.0.2.10"
            },
        ),
        (
            {"type": "dir", "target_path": "/srv/../etc"},
            {"target_path": "Value error, must not contain '..'"},
        ),
    ],
)
def test_spec_refusals_name_their_field(data: dict[str, Any], expected: dict[str, str]) -> None:
    assert _errors({"name": "p", **data}) == expected


def test_every_refusal_is_reported_at_once() -> None:
    errors = _errors({"name": "p", "type": "dir", "source_name": "x", "adapter": "host0"})
    assert errors == {
        "target_path": "required for a pool of type dir",
        "source_name": "not used by a pool of type dir: leave it out",
        "adapter": "not used by a pool of type dir: leave it out",
    }


def test_refusals_keep_their_field_inside_another_model() -> None:
    from pydantic import BaseModel

    class Job(BaseModel):
        spec: PoolSpec

    with pytest.raises(ValidationError) as info:
        Job.model_validate({"spec": {"name": "p", "type": "dir"}})
    assert [e["loc"] for e in info.value.errors()] == [("spec", "target_path")]


def test_spec_spelling_is_normalised() -> None:
    normal = PoolSpec(
        name="p", type="netfs", source_host="[2001:db8::1]", source_dir="/export//vms/", target_path="/mnt/x/"
    )
    assert (normal.source_host, normal.source_dir, normal.target_path) == (
        "2001:db8::1",
        "/export/vms",
        "/mnt/x",
    )


def test_spec_round_trips_through_json() -> None:
    for case in CASES:
        original = spec(case)
        assert PoolSpec.model_validate(json.loads(original.model_dump_json())) == original


# -- summaries and sameness ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "source"),
    [
        ("dir", ""),
        ("fs", "/dev/sdb1"),
        ("netfs_nfs", "nfs.example.com:/export/vms"),
        ("logical", "vg_vms (/dev/sdc, /dev/sdd)"),
        ("logical_existing", "vg_vms"),
        ("disk", "/dev/sde"),
        ("iscsi", "san.example.com/iqn.2013-06.com.example:vms"),
        ("scsi", "host0"),
        ("zfs", "tank (/dev/sdf)"),
        ("zfs_existing", "tank"),
        ("gluster", "gluster.example.com:/gv0/vms"),
        ("gluster_minimal", "gluster.example.com:/gv0"),
    ],
)
def test_pool_source_for_people(case: str, source: str) -> None:
    assert pool_source(etree.fromstring(pool_xml(spec(case)).encode())) == source


def test_sameness_is_what_the_request_says() -> None:
    asked = pool_xml(spec("logical_existing"))
    # libvirt fills in what a request leaves out: that is still the same pool.
    stored = """<pool type='logical'><name>p-logical_existing</name><uuid>7cac0e66-e736-48c2-a101-85abf236d022</uuid>
      <source><name>vg_vms</name><format type='lvm2'/></source><target><path>/dev/vg_vms</path></target></pool>"""
    assert definition_differences(stored, asked) == []
    other = pool_xml(spec("logical_existing", source_name="vg_other"))
    assert definition_differences(stored, other) == [
        "target path /dev/vg_vms, not /dev/vg_other",
        "source name vg_vms, not vg_other",
    ]
    assert definition_differences(
        pool_xml(spec("dir")), pool_xml(spec("dir", type="dir", target_path="/srv/b"))
    ) == ["target path /srv/pools/vms, not /srv/b"]


# -- debounced publication ----------------------------------------------------------------------
def _resources(volumes: int) -> HostResources:
    pool = PoolInfo(name="p", type="dir", active=True, volume_count=volumes)
    return HostResources(pools=[pool], pool_types=["dir"])


class CountingStats:
    """The runtime's pool_stats: records how it is asked; may cause more changes meanwhile."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.calls: list[bool] = []
        self.change_during_read = 0

    async def __call__(self, refreshed_only: bool) -> StatsEvent | None:
        self.calls.append(refreshed_only)
        if self.change_during_read:
            self.change_during_read -= 1
            self.hub.pools_changed()
        await asyncio.sleep(0)
        return StatsEvent(
            ts=0.0,
            free_memory_mib=1,
            domains_total=0,
            domains_running=0,
            resources=_resources(len(self.calls)),
        )


async def _settled(hub: EventHub) -> None:
    task = hub._pools_task
    assert task is not None
    await task


@pytest.mark.asyncio
async def test_a_burst_of_pool_events_is_one_reading() -> None:
    hub = EventHub()
    hub.pool_debounce_s = 0.0
    stats = CountingStats(hub)
    hub.pool_stats = stats
    sub = hub.subscribe()
    for _ in range(5):  # define, build, start, autostart ... as one virsh script does
        hub.pools_changed()
    hub.pools_changed(refreshed_only=True)
    await _settled(hub)
    assert stats.calls == [False]  # one reading, and not "only refreshes"
    published = StatsEvent.model_validate_json(sub.queue.get_nowait() or "")
    assert published.resources == _resources(1)
    assert sub.queue.empty()


@pytest.mark.asyncio
async def test_a_change_during_the_reading_gets_a_reading_of_its_own() -> None:
    hub = EventHub()
    hub.pool_debounce_s = 0.0
    stats = CountingStats(hub)
    stats.change_during_read = 1
    hub.pool_stats = stats
    sub = hub.subscribe()
    hub.pools_changed(refreshed_only=True)
    await _settled(hub)
    assert stats.calls == [True, False]
    assert sub.queue.qsize() == 2


@pytest.mark.asyncio
async def test_nothing_is_read_while_nobody_listens() -> None:
    hub = EventHub()
    hub.pool_debounce_s = 0.0
    stats = CountingStats(hub)
    hub.pool_stats = stats
    hub.pools_changed()
    await _settled(hub)
    assert stats.calls == []


@pytest.mark.asyncio
async def test_an_unchanged_refresh_publishes_nothing() -> None:
    hub = EventHub()
    hub.pool_debounce_s = 0.0

    async def unchanged(refreshed_only: bool) -> StatsEvent | None:
        return None  # what the runtime answers when the pools look as they did

    hub.pool_stats = unchanged
    sub = hub.subscribe()
    hub.pools_changed(refreshed_only=True)
    await _settled(hub)
    assert sub.queue.empty()


@pytest.mark.asyncio
async def test_the_runtime_publishes_refreshes_only_when_people_would_see_a_change() -> None:
    from agent.runtime import AgentConfig, AgentRuntime

    runtime = AgentRuntime(AgentConfig(uri="test:///default"))
    moved = _resources(1)
    moved.pools[0].allocation_bytes = 4096  # bytes move on every reading: nobody needs an event
    readings = [moved, _resources(2), _resources(2)]
    asked: list[bool] = []

    async def resources(*, refresh_pools: bool = True) -> HostResources:
        asked.append(refresh_pools)
        runtime._last_resources = readings.pop(0)
        return runtime._last_resources

    async def stats(resources: HostResources | None = None) -> StatsEvent:
        return StatsEvent(ts=0.0, free_memory_mib=1, domains_total=0, domains_running=0, resources=resources)

    runtime.resources = resources  # type: ignore[method-assign]
    runtime.stats = stats  # type: ignore[method-assign]
    runtime._last_resources = _resources(1)
    assert await runtime.pool_stats(True) is None
    published = await runtime.pool_stats(True)  # a file counted after `virsh pool-refresh`
    assert published is not None and published.resources == _resources(2)
    unchanged = await runtime.pool_stats(False)  # a lifecycle event or an operation: always
    assert unchanged is not None and unchanged.resources == _resources(2)
    assert asked == [False, False, False]  # never a refreshing read: its refreshes would be events
