"""The protocol's storage part: pools (what a host has, what Domus defines) and their volumes.

Re-exported by agent.protocol: import these from there.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.protocol.base import POOL_NAME, _no_dotdot, _Strict


class VolumeInfo(BaseModel):
    """A file in a pool the wizard can offer: an installer ISO or a disk / cloud image."""

    name: str
    path: str
    kind: Literal["iso", "image"]
    capacity_bytes: int = 0  # the file's size; 0 when the agent cannot see it


MAX_POOL_VOLUMES = 500


class PoolInfo(BaseModel):
    name: str
    type: str  # dir, logical, netfs ...
    active: bool
    path: str | None = None
    capacity_bytes: int = 0
    allocation_bytes: int = 0
    available_bytes: int = 0
    volumes: list[VolumeInfo] = []  # ISOs and images only, at most MAX_POOL_VOLUMES
    # inactive, building, running, degraded, inaccessible (libvirt's virStoragePoolState)
    state: str = "running"
    autostart: bool = False
    persistent: bool = True
    volume_count: int | None = None  # every volume, not only those offered; None when inactive
    source: str = ""  # where its storage comes from, for people: "nfs.example:/export", "/dev/sdb"


# Pool types Domus can define, in the order the page offers them. libvirt's storage pool
# capabilities (virConnectGetStoragePoolCapabilities) say which of these a host's libvirt can run;
# rbd, sheepdog and vstorage need cluster credentials Domus does not manage yet.
PoolType = Literal["dir", "fs", "netfs", "logical", "disk", "iscsi", "scsi", "zfs", "gluster"]
POOL_TYPES: tuple[str, ...] = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "scsi", "zfs", "gluster")
HostName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_\[\]-]+$")]
AbsPath = Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/[^\x00-\x1f]*$")]


# What each pool type takes besides `name`, `type` and the flags: (required, optional) fields.
# `PoolSpec` refuses a missing required field and any field its type does not use, by name.
POOL_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dir": (("target_path",), ()),
    "fs": (("source_devices", "target_path"), ("source_format",)),
    "netfs": (("source_host", "source_dir", "target_path"), ("source_format",)),
    "logical": (("source_name",), ("source_devices",)),
    "disk": (("source_devices",), ("source_format",)),
    "iscsi": (("source_host", "source_name"), ()),
    "scsi": (("adapter",), ()),
    "zfs": (("source_name",), ("source_devices",)),
    "gluster": (("source_host", "source_name"), ("source_dir",)),
}
# The `source_format` values libvirt knows for each type that takes one (its storagepool.rng).
POOL_FORMATS: dict[str, tuple[str, ...]] = {
    "fs": (
        "auto",
        "ext2",
        "ext3",
        "ext4",
        "ufs",
        "iso9660",
        "udf",
        "gfs",
        "gfs2",
        "vfat",
        "xfs",
        "ocfs2",
        "vmfs",
    ),
    "netfs": ("auto", "nfs", "cifs", "glusterfs"),
    "disk": ("dos", "gpt", "mac", "bsd", "pc98", "sun", "dvh", "lvm2"),
}
# Types whose storage libvirt can make (`build`) and remove (`delete_storage`); the others' storage
# (an iSCSI target, a SCSI adapter's LUNs, a gluster volume) is made and kept elsewhere.
POOL_BUILDABLE: tuple[str, ...] = ("dir", "fs", "netfs", "logical", "disk", "zfs")
_ONE_DEVICE = ("fs", "disk", "zfs")  # zfs: libvirt's format has room for one device
_DEVICES_ONLY_TO_BUILD = ("logical", "zfs")
_IQN_RE = re.compile(r"^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[A-Za-z0-9.-]+(:.+)?$")
_VG_NAME_RE = re.compile(r"^[A-Za-z0-9+_.-]+$")
_SCSI_ADAPTER_RE = re.compile(r"^(scsi_host|host)[0-9]+$")
_DNS_NAME_RE = re.compile(r"^[A-Za-z0-9.-]+$")


def _clean_abs_path(value: str) -> str:
    """One spelling per path (libvirt keeps what it is given): no '..', no '//', no trailing '/'."""
    _no_dotdot(value)
    return re.sub(r"/+", "/", value).rstrip("/") or "/"


def _host_name(value: str) -> str:
    bare = value.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if bare != value or not _DNS_NAME_RE.match(value) or value.startswith(("-", ".")):
        raise ValueError("must be a host name or an IP address, such as nfs.example.com or 192.0.2.10")
    return value


def _pool_problem(field: str, kind: str, message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=(field,), input=value)


class PoolSpec(_Strict):
    """A storage pool to define. What each type needs (any other field is refused by name):

    - dir: `target_path` (made when `build`)
    - fs: `source_devices` (one block device), `target_path` (the mount point); `source_format`
      (auto, ext4, xfs ...; `build` makes that file system on the device, never over one it finds)
    - netfs: `source_host`, `source_dir` (the export; for cifs, the share as /share),
      `target_path`; `source_format` (auto, nfs, cifs, glusterfs)
    - logical: `source_name` (the volume group); `source_devices` (physical volumes) only with
      `build`, which makes the group on them (refused if they hold data libvirt recognises)
    - disk: `source_devices` (one disk); `source_format` (dos, gpt ...: its partition table)
    - iscsi: `source_host`, `source_name` (the target's IQN)
    - scsi: `adapter` (a SCSI host adapter's name, e.g. host0)
    - zfs: `source_name` (the zpool); `source_devices` (one device) only with `build`
    - gluster: `source_host`, `source_name` (the gluster volume); `source_dir` (default /)

    `build` is refused for iscsi, scsi and gluster: their storage is made elsewhere. Errors name
    their field in `loc` (e.g. `target_path`: "required for a pool of type dir").
    """

    name: Annotated[str, Field(pattern=POOL_NAME)]
    type: PoolType
    target_path: AbsPath | None = None
    source_host: HostName | None = None
    source_dir: AbsPath | None = None
    source_name: (
        Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.:/+-]+$")] | None
    ) = None
    source_devices: Annotated[list[AbsPath], Field(max_length=32)] = []
    source_format: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,16}$")] | None = None
    adapter: Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.-]{1,64}$")] | None = None
    # Make its storage: a directory, mount point; a file system, volume group or partition table
    # on the devices, where libvirt finds none (it never writes over one it recognises).
    build: bool = False
    start: bool = True
    autostart: bool = True

    @field_validator("target_path", "source_dir")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _clean_abs_path(value)

    @field_validator("source_devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        devices = [_clean_abs_path(device) for device in value]
        if len(set(devices)) != len(devices):
            raise ValueError("a device is named twice")
        return devices

    @field_validator("source_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else _host_name(value)

    def given(self, field: str) -> bool:
        """Whether `field` carries a value (an empty device list is no value)."""
        value = getattr(self, field)
        return bool(value) if isinstance(value, list) else value is not None

    @model_validator(mode="after")
    def _fields_of_type(self) -> PoolSpec:
        kind = self.type
        required, optional = POOL_FIELDS[kind]
        problems: list[InitErrorDetails] = []

        def refuse(field: str, code: str, message: str) -> None:
            problems.append(_pool_problem(field, code, message, getattr(self, field)))

        if self.name in (".", ".."):
            refuse("name", "pool_name", "must not be '.' or '..'")
        for field in POOL_SPEC_SOURCE_FIELDS:
            if field in required and not self.given(field):
                if field == "source_devices" and kind in ("fs", "disk"):
                    refuse(field, "pool_field_missing", f"required for a pool of type {kind} (one device)")
                else:
                    refuse(field, "pool_field_missing", f"required for a pool of type {kind}")
            elif field not in required and field not in optional and self.given(field):
                refuse(field, "pool_field_unused", f"not used by a pool of type {kind}: leave it out")
        if kind in _ONE_DEVICE and len(self.source_devices) > 1:
            refuse("source_devices", "pool_field_invalid", f"a pool of type {kind} takes one device")
        if kind in _DEVICES_ONLY_TO_BUILD:
            if self.source_devices and not self.build:
                refuse(
                    "source_devices",
                    "pool_field_unused",
                    f"only to build a pool of type {kind} (the devices to make it on); leave it out "
                    "for an existing one",
                )
            elif self.build and not self.source_devices:
                refuse("source_devices", "pool_field_missing", f"required to build a pool of type {kind}")
        if self.build and kind not in POOL_BUILDABLE:
            refuse(
                "build",
                "pool_field_invalid",
                f"libvirt cannot build a pool of type {kind}: its storage is made elsewhere",
            )
        formats = POOL_FORMATS.get(kind, ())
        if self.source_format is not None and formats and self.source_format not in formats:
            refuse(
                "source_format",
                "pool_field_invalid",
                f"a pool of type {kind} takes one of {', '.join(formats)}",
            )
        if kind == "iscsi" and self.source_name is not None and not _IQN_RE.match(self.source_name):
            refuse(
                "source_name",
                "pool_field_invalid",
                "must be the target's IQN, such as iqn.2004-04.com.example:storage",
            )
        if kind == "logical" and self.source_name is not None and not _VG_NAME_RE.match(self.source_name):
            refuse(
                "source_name",
                "pool_field_invalid",
                "must be a volume group's name: letters, digits, '+', '_', '.', '-'",
            )
        if self.adapter is not None and kind == "scsi" and not _SCSI_ADAPTER_RE.match(self.adapter):
            refuse(
                "adapter",
                "pool_field_invalid",
                "must be a SCSI host adapter's name, such as host0 (see /sys/class/scsi_host)",
            )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


# The fields of PoolSpec that say where a pool's storage is (POOL_FIELDS maps types onto them).
POOL_SPEC_SOURCE_FIELDS: tuple[str, ...] = (
    "target_path",
    "source_host",
    "source_dir",
    "source_name",
    "source_devices",
    "source_format",
    "adapter",
)


class PoolAutostartRequest(_Strict):
    autostart: bool


class PoolDeleteRequest(_Strict):
    """Remove a pool's definition (stopping it first). `delete_storage` also removes what `build`
    made: a directory, a mount point (fs, netfs: the data stays on the device or server), an LVM
    volume group, a disk's partition table, a zpool. The agent refuses it while a dir, logical,
    disk or zfs pool holds volumes (they would go with it), and for iscsi, scsi and gluster pools,
    whose storage is not the host's."""

    delete_storage: bool = False


class PoolResult(BaseModel):
    """A pool after an action (None once deleted), and what was done."""

    pool: PoolInfo | None
    detail: str = ""


VolumeKind = Literal["iso", "disk", "cloud-image", "other"]
VOLUME_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$"
# A pool's volume list comes a page at a time: `limit` volumes (by name) from `offset`.
VOLUME_PAGE_DEFAULT = 500
VOLUME_PAGE_MAX = 5000


class VolumeDetail(BaseModel):
    """One volume of a pool, as the pool's volume list gives it."""

    name: str
    path: str
    format: str  # qcow2, raw, iso ... ("" when libvirt does not say)
    kind: VolumeKind  # from its name and format: an installer ISO, a disk image, a cloud image
    capacity_bytes: int
    allocation_bytes: int
    backing: str | None = None  # the image a qcow2 overlay is layered on


class VolumeList(BaseModel):
    pool: str
    volumes: list[VolumeDetail]
    total: int  # every volume of the pool; `volumes` holds at most the asked `limit` of them


class VolumeCreateRequest(_Strict):
    name: Annotated[str, Field(pattern=VOLUME_NAME)]
    capacity_bytes: Annotated[int, Field(gt=0, le=1 << 50)]
    format: Literal["qcow2", "raw"] = "qcow2"
    allocation: Literal["sparse", "preallocated"] = "sparse"


class VolumeResizeRequest(_Strict):
    """Grow a volume to `capacity_bytes` (never shrink: a guest's file system would lose data).
    A volume a running domain uses is grown through that domain (libvirt's block resize), so the
    guest sees its new size at once."""

    capacity_bytes: Annotated[int, Field(gt=0, le=1 << 50)]


class VolumeCloneRequest(_Strict):
    name: Annotated[str, Field(pattern=VOLUME_NAME)]  # the copy's, in the same pool


class VolumeResult(BaseModel):
    """A volume after an action (None once deleted), and what was done."""

    volume: VolumeDetail | None
    detail: str = ""
