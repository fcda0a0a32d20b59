"""The contract between the console and the agent (API v1).

Both sides import these pydantic models; nothing else crosses the wire. The agent never imports
Django, so this module must stay plain (pydantic and the standard library only).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid as uuid_mod
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    field_validator,
    model_validator,
)

from agent.cloudinit import CloudInitSpec
from agent.protocol.base import POOL_NAME, _no_dotdot, _Strict
from agent.protocol.media import (
    DEFAULT_FETCH_MAX_BYTES,
    FETCH_SCHEMES,
    MAX_UPLOAD_BYTES,
    UPLOAD_ID,
    FetchRequest,
    UploadCreateRequest,
    UploadState,
    UploadStatus,
)
from agent.protocol.networks import (
    ADDRESS_SOURCES,
    IFACE_NAME,
    MAX_DHCP_HOSTS,
    NETWORK_ADDRESSED,
    NETWORK_MODES,
    NETWORK_NAME,
    NETWORK_NEEDS_IPV4,
    AddressesEvent,
    AddressSource,
    DhcpHost,
    DhcpSettings,
    NetworkAutostartRequest,
    NetworkInfo,
    NetworkMode,
    NetworkResult,
    NetworkSpec,
    NicAddress,
    NicAddresses,
    NicChangeRequest,
    NicInfo,
    NicPending,
)
from agent.protocol.storage import (
    MAX_POOL_VOLUMES,
    POOL_BUILDABLE,
    POOL_FIELDS,
    POOL_FORMATS,
    POOL_SPEC_SOURCE_FIELDS,
    POOL_TYPES,
    VOLUME_NAME,
    VOLUME_PAGE_DEFAULT,
    VOLUME_PAGE_MAX,
    AbsPath,
    HostName,
    PoolAutostartRequest,
    PoolDeleteRequest,
    PoolInfo,
    PoolResult,
    PoolSpec,
    PoolType,
    VolumeCloneRequest,
    VolumeCreateRequest,
    VolumeDetail,
    VolumeInfo,
    VolumeKind,
    VolumeList,
    VolumeResizeRequest,
    VolumeResult,
)

# What the parts define, offered here as before the split: import protocol names from
# agent.protocol, never from its parts. (Its own definitions below are public as well.)
__all__ = [
    "ADDRESS_SOURCES",
    "DEFAULT_FETCH_MAX_BYTES",
    "FETCH_SCHEMES",
    "IFACE_NAME",
    "MAX_DHCP_HOSTS",
    "MAX_POOL_VOLUMES",
    "MAX_UPLOAD_BYTES",
    "NETWORK_ADDRESSED",
    "NETWORK_MODES",
    "NETWORK_NAME",
    "NETWORK_NEEDS_IPV4",
    "POOL_BUILDABLE",
    "POOL_FIELDS",
    "POOL_FORMATS",
    "POOL_NAME",
    "POOL_SPEC_SOURCE_FIELDS",
    "POOL_TYPES",
    "UPLOAD_ID",
    "VOLUME_NAME",
    "VOLUME_PAGE_DEFAULT",
    "VOLUME_PAGE_MAX",
    "AbsPath",
    "AddressSource",
    "AddressesEvent",
    "DhcpHost",
    "DhcpSettings",
    "FetchRequest",
    "HostName",
    "NetworkAutostartRequest",
    "NetworkInfo",
    "NetworkMode",
    "NetworkResult",
    "NetworkSpec",
    "NicAddress",
    "NicAddresses",
    "NicChangeRequest",
    "NicInfo",
    "NicPending",
    "PoolAutostartRequest",
    "PoolDeleteRequest",
    "PoolInfo",
    "PoolResult",
    "PoolSpec",
    "PoolType",
    "UploadCreateRequest",
    "UploadState",
    "UploadStatus",
    "VolumeCloneRequest",
    "VolumeCreateRequest",
    "VolumeDetail",
    "VolumeInfo",
    "VolumeKind",
    "VolumeList",
    "VolumeResizeRequest",
    "VolumeResult",
]

API_VERSION = "v1"

# Names end up in libvirt names and volume file names: keep them boring.
DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NAME_RULE = "must be 1-63 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


def _domain_name(value: str) -> str:
    if not DOMAIN_NAME_RE.match(value):
        raise ValueError(NAME_RULE)
    return value


# A domain name, as every model naming one takes it.
DomainName = Annotated[str, AfterValidator(_domain_name)]

DomainState = Literal[
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"
]
Hypervisor = Literal["qemu", "kvm", "xen", "test"]
Accel = Literal["kvm", "tcg", "xen", "test"]


VirtMode = Literal["hvm", "pv", "pvh"]
DiskBus = Literal["virtio", "sata", "scsi", "ide", "xen"]
NicModel = Literal["virtio", "e1000", "e1000e", "rtl8139", "netfront"]
# Paths the user names (ISOs, kernels, images) are checked again on the agent against its real
# pools; here only their shape: absolute or pool-relative, no NUL, no `..` component.
PathField = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f]+$")]
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# An installer tree path relative to its URL: no scheme, no leading '/', no '..'.
TREE_PATH_RE = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_.+/-]{1,512}$")


class DiskSpec(_Strict):
    """One disk: a new volume (`size_gib` in `pool`), a new qcow2 overlay on a base image
    (`backing`, e.g. a cloud image), or an existing volume used as is (`existing`). With none of
    them it is nothing: an empty CD-ROM drive in a DiskAttachRequest, refused as a domain's disk."""

    size_gib: Annotated[float | None, Field(gt=0, le=65536)] = None
    format: Literal["qcow2", "raw"] = "qcow2"
    pool: Annotated[str, Field(pattern=POOL_NAME)] = "default"
    # sparse: grows as the guest writes; preallocated: all the space is taken now.
    allocation: Literal["sparse", "preallocated"] = "sparse"
    bus: DiskBus | None = None  # None: the default for the OS and mode
    existing: PathField | None = None
    backing: PathField | None = None

    @field_validator("existing", "backing")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _no_dotdot(value)

    @model_validator(mode="after")
    def _one_source(self) -> DiskSpec:
        if self.existing is not None and self.backing is not None:
            raise ValueError("give either existing or backing, not both")
        if self.backing is not None and self.format != "qcow2":
            raise ValueError("a disk on a base image (backing) must be qcow2")
        return self


def _sized(disk: DiskSpec) -> DiskSpec:
    if disk.existing is None and disk.size_gib is None:
        raise ValueError("size_gib is required for a new disk")
    return disk


# A disk a domain is defined with, or that is attached as a disk: a new one needs its size.
DomainDisk = Annotated[DiskSpec, AfterValidator(_sized)]


class NicSpec(_Strict):
    """A network card on a libvirt virtual network (NAT/isolated) or on a host bridge."""

    source: Literal["network", "bridge"] = "network"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "default"
    model: NicModel | None = None  # None: the default for the OS and mode
    mac: str | None = None  # chosen by the console when absent, so a retry keeps it

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        mac = value.strip().lower().replace("-", ":")
        if not MAC_RE.match(mac):
            raise ValueError("must be six hex pairs such as 52:54:00:12:34:56")
        if int(mac[:2], 16) & 1:
            raise ValueError("must be a unicast address (the first byte must be even)")
        return mac


class KernelBoot(_Strict):
    """Direct kernel boot (also Xen PV/PVH): kernel and optional initrd inside a host pool."""

    kind: Literal["kernel"] = "kernel"
    kernel: PathField
    initrd: PathField | None = None
    cmdline: Annotated[str, Field(max_length=4096)] = ""

    @field_validator("kernel", "initrd")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _no_dotdot(value)


class IsoBoot(_Strict):
    """Install from an ISO image (inside a host pool) attached as a CD-ROM."""

    kind: Literal["iso"] = "iso"
    iso: PathField

    @field_validator("iso")
    @classmethod
    def _path(cls, value: str) -> str:
        return _no_dotdot(value)


class CdromBoot(_Strict):
    """Install from the host's physical CD/DVD drive."""

    kind: Literal["cdrom"] = "cdrom"
    device: Annotated[str, Field(pattern=r"^/dev/(cdrom|dvd|sr[0-9]{1,2})$")] = "/dev/cdrom"


class NetworkInstall(_Strict):
    """Install from an installer tree on the network: the agent fetches the kernel and initrd
    from `url` into the default pool and boots them once; the installed system boots from disk."""

    kind: Literal["url"] = "url"
    url: Annotated[str, Field(max_length=2048)]
    kernel: str = "images/pxeboot/vmlinuz"
    initrd: str = "images/pxeboot/initrd.img"
    cmdline: Annotated[str, Field(max_length=4096)] = ""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL of an installer tree")
        if any(ch.isspace() or ord(ch) < 32 for ch in value):
            raise ValueError("must not contain spaces or control characters")
        return value

    @field_validator("kernel", "initrd")
    @classmethod
    def _tree_path(cls, value: str) -> str:
        if not TREE_PATH_RE.match(value):
            raise ValueError("must be a path inside the installer tree, such as images/pxeboot/vmlinuz")
        return value


class PxeBoot(_Strict):
    """Boot from the network (PXE) on the first NIC."""

    kind: Literal["pxe"] = "pxe"


class DiskBoot(_Strict):
    """Boot the first disk: an existing image, or a cloud image with a cloud-init seed."""

    kind: Literal["disk"] = "disk"
    cloud_init: CloudInitSpec | None = None  # a NoCloud seed ISO the agent builds and attaches


class BootloaderBoot(_Strict):
    """Xen PV: the host's bootloader (pygrub) reads the kernel from the guest's first disk."""

    kind: Literal["bootloader"] = "bootloader"
    bootloader: Literal["pygrub"] = "pygrub"


Boot = Annotated[
    KernelBoot | IsoBoot | CdromBoot | NetworkInstall | PxeBoot | DiskBoot | BootloaderBoot,
    Field(discriminator="kind"),
]
BOOT_KINDS = ("iso", "cdrom", "url", "pxe", "kernel", "disk", "bootloader")
# Which boot kinds each virtualisation mode can use (PV has no firmware: no CD-ROM, no PXE).
BOOT_KINDS_BY_MODE: dict[str, tuple[str, ...]] = {
    "hvm": ("iso", "cdrom", "url", "pxe", "kernel", "disk"),
    "pv": ("url", "kernel", "bootloader"),
    "pvh": ("url", "kernel"),
}


class DomainSpec(_Strict):
    """What the console asks an agent to define. The uuid is chosen by the console, which makes
    `define` idempotent: defining the same uuid again returns the existing domain."""

    uuid: uuid_mod.UUID
    name: DomainName
    mode: VirtMode = "hvm"
    os: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.+-]{0,63}$")] = "generic"
    vcpus: Annotated[int, Field(ge=1, le=4096)] = 1
    memory_mib: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] = 256
    disks: Annotated[list[DomainDisk], Field(max_length=16)] = []
    nics: Annotated[list[NicSpec], Field(max_length=8)] = []
    boot: Boot
    graphics: bool = False  # VNC, on the host's loopback only (reached through the agent)
    serial: bool = True
    clock: Literal["utc", "localtime"] = "utc"
    autostart: bool = False

    @field_validator("boot", mode="before")
    @classmethod
    def _boot_kind(cls, value: Any) -> Any:
        # Specs stored before boot kinds existed: {"iso": ...} or {"kernel": ...}.
        if isinstance(value, dict) and "kind" not in value:
            if "iso" in value:
                return {"kind": "iso", **value}
            if "kernel" in value:
                return {"kind": "kernel", **value}
        return value

    @model_validator(mode="after")
    def _coherent(self) -> DomainSpec:
        if self.boot.kind not in BOOT_KINDS_BY_MODE[self.mode]:
            allowed = ", ".join(BOOT_KINDS_BY_MODE[self.mode])
            raise ValueError(f"boot: {self.boot.kind!r} cannot start a {self.mode.upper()} guest ({allowed})")
        if self.boot.kind in ("disk", "bootloader") and not self.disks:
            raise ValueError(f"boot: {self.boot.kind!r} needs a disk to boot from")
        if self.boot.kind == "pxe" and not self.nics:
            raise ValueError("boot: a network (PXE) boot needs a network card")
        return self

    @property
    def installs(self) -> bool:
        """Whether the first boot runs an installer (then the system boots from its disk)."""
        return self.boot.kind in ("iso", "cdrom", "url", "pxe")


class ModeSupport(BaseModel):
    """One virtualisation mode and whether this host can run it (the wizard shows the reason)."""

    mode: VirtMode
    available: bool
    # hvm: "hardware" (VT-x/AMD-V through KVM or Xen) or "software" (QEMU TCG emulation: slow);
    # pv/pvh: "paravirt". None when unavailable.
    accel: Literal["hardware", "software", "paravirt"] | None = None
    note: str = ""  # why unavailable, or a caveat such as "software emulation: slow"


class GuestArch(BaseModel):
    """One <guest> of libvirt's capabilities: an OS type on an architecture."""

    os_type: str  # hvm, xen (PV), xenpvh
    arch: str
    domain_types: list[str]  # qemu, kvm, xen, test
    machines: list[str] = []
    emulator: str | None = None


class HostCapabilities(BaseModel):
    """What the host can run, from libvirt's capabilities and domain capabilities."""

    hypervisor: Hypervisor
    arch: str
    cpu_model: str | None = None
    cpu_vendor: str | None = None
    sockets: int | None = None
    cores: int | None = None  # per socket
    threads: int | None = None  # per core
    modes: list[ModeSupport] = []
    guests: list[GuestArch] = []
    max_vcpus: int | None = None  # from domain capabilities, when libvirt can tell
    disk_buses: list[str] = []
    graphics: list[str] = []  # vnc, spice ...
    firmware: list[str] = []  # bios, efi


class HostResources(BaseModel):
    pools: list[PoolInfo] = []
    pool_types: list[str] = []  # the POOL_TYPES this host's libvirt can run
    networks: list[NetworkInfo] = []
    bridges: list[str] = []  # host bridges a NIC can join (not owned by a libvirt network)
    # The host's own addresses on those bridges, with their prefixes (local agents only).
    bridge_addresses: dict[str, list[str]] = {}


class HostFacts(BaseModel):
    hostname: str
    uri: str
    hypervisor: Hypervisor
    accel: Accel
    arch: str
    hvm_hardware_assisted: bool  # the CPU has VT-x/AMD-V (vmx/svm flag)
    kvm_usable: bool  # a probe guest actually ran under KVM
    cpus: int
    memory_mib: int
    free_memory_mib: int
    libvirt_version: str
    agent_version: str
    default_pool_path: str | None = None
    capabilities: HostCapabilities | None = None
    resources: HostResources | None = None


DiskPending = Literal["attach", "detach", "media"]


class DiskInfo(BaseModel):
    """A disk or CD-ROM drive of a domain: of the running guest when it runs, with `pending` set
    where its definition for the next boot differs (attach: only there; detach: only in the
    running guest; media: another ISO there, `path` being the running guest's)."""

    target: str  # vda, hdc ...
    device: Literal["disk", "cdrom"]
    path: str | None = None
    bus: str | None = None  # virtio, sata, scsi, ide, xen ...
    readonly: bool = False
    # The size the guest sees, when the agent can tell cheaply (an image's header, a file's or
    # block device's size); None otherwise (an empty drive, a network disk).
    capacity_bytes: int | None = None
    pending: DiskPending | None = None


class DomainInfo(BaseModel):
    uuid: uuid_mod.UUID
    name: str
    state: DomainState
    vcpus: int
    memory_mib: int
    persistent: bool = True
    autostart: bool = False  # started with the host (persistent domains only)
    disks: list[DiskInfo] = []
    nics: list[NicInfo] = []


class ResourcesRequest(_Strict):
    """New memory and/or vCPUs for a domain (what is not given is left as it is)."""

    memory_mib: Annotated[int | None, Field(ge=16, le=16 * 1024 * 1024)] = None
    vcpus: Annotated[int | None, Field(ge=1, le=4096)] = None


class ResourcesResult(BaseModel):
    """The domain after an edit, and when each change takes effect: now (applied to the running
    guest as well) or at the next boot (the guest cannot take it live)."""

    domain: DomainInfo
    memory: Literal["now", "next boot", "unchanged"] = "unchanged"
    vcpus: Literal["now", "next boot", "unchanged"] = "unchanged"
    detail: str = ""


class DiskAttachRequest(_Strict):
    """A disk or CD-ROM drive to add to a domain. A disk: a new volume (`disk.size_gib`, in
    `disk.pool`, named after the domain and its target), a new overlay on a base image
    (`disk.backing`) or an existing volume (`disk.existing`), as at define. A CD-ROM drive: an ISO
    (`disk.existing`) or nothing (an empty drive). `disk.bus` None: the domain's default."""

    disk: DiskSpec = Field(default_factory=DiskSpec)
    device: Literal["disk", "cdrom"] = "disk"
    readonly: bool = False  # a CD-ROM is always read-only

    @model_validator(mode="after")
    def _coherent(self) -> DiskAttachRequest:
        disk = self.disk
        if self.device == "disk":
            if disk.existing is None and disk.size_gib is None:
                raise ValueError("disk.size_gib: required for a new disk (or disk.existing: a volume)")
        elif disk.size_gib is not None or disk.backing is not None:
            raise ValueError("disk: a CD-ROM drive takes an ISO (existing) or nothing, not a new volume")
        elif disk.bus in ("virtio", "xen"):
            raise ValueError(f"disk.bus: a CD-ROM drive cannot be on {disk.bus}: use sata, scsi or ide")
        return self


class MediaRequest(_Strict):
    """The ISO to put in a CD-ROM drive (in a host pool); None ejects the disc."""

    path: PathField | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _no_dotdot(value)


class RenameRequest(_Strict):
    name: DomainName


class DiskChange(BaseModel):
    """A disk or CD-ROM drive attached, detached or given another disc: the domain after it, and
    when it takes effect (now: the running guest has it too, or the domain is shut off; next
    boot: the running guest could not take it, and `detail` says why)."""

    domain: DomainInfo
    target: str  # vdb, sdc ...
    path: str | None = None  # the volume or ISO (None: an empty drive)
    applied: Literal["now", "next boot"]
    created: bool = False  # a new volume was made for it
    detail: str = ""


class NicAttachRequest(_Strict):
    """A network card to add to a domain (its MAC chosen by the console, so that a retry adds
    the same card, not a second one)."""

    nic: NicSpec

    @model_validator(mode="after")
    def _mac_given(self) -> NicAttachRequest:
        if self.nic.mac is None:
            raise ValueError("nic.mac: required (the console chooses it, so that a retry keeps it)")
        return self


class NicOutcome(BaseModel):
    """A card attached, detached or changed: the domain after it, and when it takes effect (now:
    the running guest has it too, or the domain is shut off; next boot: the running guest could
    not take it, and `detail` says why)."""

    domain: DomainInfo
    mac: str
    applied: Literal["now", "next boot"]
    detail: str = ""


class DeleteResult(BaseModel):
    uuid: uuid_mod.UUID
    deleted_volumes: list[str] = []
    kept_volumes: list[str] = []


# Every non-2xx answer also carries its detail, percent-encoded, in this header: a WebSocket
# client refused before the upgrade sees the headers but never the body.
PROBLEM_HEADER = "Domus-Problem"


class Problem(BaseModel):
    """Error body of every non-2xx agent answer."""

    error: str  # machine-readable code: unauthorized, not_found, invalid_spec, conflict, libvirt
    detail: str
    # An upload's piece sent at the wrong offset (409): the offset the upload is at. Absent otherwise.
    offset: int | None = None


# Messages on the events WebSocket (/v1/events), JSON text frames.
class InventoryEvent(BaseModel):
    type: Literal["inventory"] = "inventory"
    host: HostFacts
    domains: list[DomainInfo]


class DomainEvent(BaseModel):
    type: Literal["domain"] = "domain"
    uuid: uuid_mod.UUID
    name: str
    event: str  # defined, undefined, started, suspended, resumed, stopped, shutdown, crashed ...
    state: DomainState | None  # None once the domain is undefined


class HeartbeatEvent(BaseModel):
    type: Literal["heartbeat"] = "heartbeat"
    ts: float


class StatsEvent(BaseModel):
    """Periodic figures (every 10 s while someone listens)."""

    type: Literal["stats"] = "stats"
    ts: float
    free_memory_mib: int
    domains_total: int
    domains_running: int
    resources: HostResources | None = None


AgentEvent = Annotated[
    InventoryEvent | DomainEvent | HeartbeatEvent | StatsEvent | AddressesEvent, Field(discriminator="type")
]


# -- Enrolment (pairing) ------------------------------------------------------------------------
PAIRING_CODE_RE = re.compile(r"^[2-9A-HJKMNP-Z]{12}$")


def normalise_pairing_code(code: str) -> str:
    """Codes are shown as XXXX-XXXX-XXXX; accept them in any case, with or without separators."""
    return re.sub(r"[\s-]", "", code).upper()


def normalise_fingerprint(value: str) -> str:
    """SHA-256 fingerprints as lowercase hex, whether given as `SHA256:AB:CD:..` or plain hex."""
    text = value.strip().lower().removeprefix("sha256:").removeprefix("sha256 ")
    return re.sub(r"[\s:]", "", text)


def format_fingerprint(hex_digest: str) -> str:
    pairs = [hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)]
    return "SHA256:" + ":".join(pairs).upper()


def pairing_proof(code: str, fingerprint: str) -> str:
    """What a console sends to prove it knows the pairing code, bound to the certificate it saw."""
    message = f"domus-pair-v1:{normalise_fingerprint(fingerprint)}".encode()
    return hmac.new(normalise_pairing_code(code).encode(), message, hashlib.sha256).hexdigest()


class PairRequest(_Strict):
    proof: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    secret: Annotated[str, Field(min_length=32, max_length=256)]
    console: Annotated[str, Field(max_length=200)] = ""  # a label for the agent's records


class PairResult(BaseModel):
    console_id: str
    fingerprint: str
    hostname: str
    agent_version: str


class RotateRequest(_Strict):
    secret: Annotated[str, Field(min_length=32, max_length=256)]


def volume_name(spec: DomainSpec, index: int, *, logical: bool = False) -> str:
    """`<name>-<first 8 hex of the uuid>-disk<N>.qcow2` (`.img` for raw; no suffix on LVM): a
    retry of the same spec finds its own volume again, but a new domain reusing an old (deleted,
    disks kept) name never picks up the old domain's disk."""
    base = f"{spec.name}-{spec.uuid.hex[:8]}-disk{index}"
    if logical:
        return base
    return f"{base}.{'qcow2' if spec.disks[index].format == 'qcow2' else 'img'}"
