"""The contract between the console and the agent (API v1).

Both sides import these pydantic models; nothing else crosses the wire. The agent never imports
Django, so this module must stay plain (pydantic and the standard library only).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid as uuid_mod
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_VERSION = "v1"

# Names end up in libvirt names and volume file names: keep them boring.
DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

DomainState = Literal[
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"
]
Hypervisor = Literal["qemu", "kvm", "xen", "test"]
Accel = Literal["kvm", "tcg", "xen", "test"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiskSpec(_Strict):
    size_gib: Annotated[float, Field(gt=0, le=4096)]
    format: Literal["qcow2"] = "qcow2"
    pool: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "default"


class KernelBoot(_Strict):
    """Direct kernel boot: kernel and optional initrd are paths inside a host storage pool."""

    kernel: Annotated[str, Field(min_length=1, max_length=4096)]
    initrd: Annotated[str | None, Field(max_length=4096)] = None
    cmdline: Annotated[str, Field(max_length=4096)] = ""


class IsoBoot(_Strict):
    """Boot from an ISO image (a path inside a host storage pool) attached as a CD-ROM."""

    iso: Annotated[str, Field(min_length=1, max_length=4096)]


class DomainSpec(_Strict):
    """What the console asks an agent to define. The uuid is chosen by the console, which makes
    `define` idempotent: defining the same uuid again returns the existing domain."""

    uuid: uuid_mod.UUID
    name: str
    vcpus: Annotated[int, Field(ge=1, le=256)] = 1
    memory_mib: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] = 256
    disks: Annotated[list[DiskSpec], Field(max_length=16)] = []
    boot: KernelBoot | IsoBoot

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, value: str) -> str:
        if not DOMAIN_NAME_RE.match(value):
            raise ValueError(
                "must be 1-63 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value


VirtMode = Literal["hvm", "pv", "pvh"]


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


class PoolInfo(BaseModel):
    name: str
    type: str  # dir, logical, netfs ...
    active: bool
    path: str | None = None
    capacity_bytes: int = 0
    allocation_bytes: int = 0
    available_bytes: int = 0


class NetworkInfo(BaseModel):
    name: str
    active: bool
    forward: str  # nat, route, bridge, open, isolated ...
    bridge: str | None = None


class HostResources(BaseModel):
    pools: list[PoolInfo] = []
    networks: list[NetworkInfo] = []
    bridges: list[str] = []  # host bridges a NIC can join (not owned by a libvirt network)


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


class DiskInfo(BaseModel):
    target: str  # vda, hdc ...
    device: Literal["disk", "cdrom"]
    path: str | None = None


class DomainInfo(BaseModel):
    uuid: uuid_mod.UUID
    name: str
    state: DomainState
    vcpus: int
    memory_mib: int
    persistent: bool = True
    autostart: bool = False  # started with the host (persistent domains only)
    disks: list[DiskInfo] = []


class DeleteResult(BaseModel):
    uuid: uuid_mod.UUID
    deleted_volumes: list[str] = []
    kept_volumes: list[str] = []


class Problem(BaseModel):
    """Error body of every non-2xx agent answer."""

    error: str  # machine-readable code: unauthorized, not_found, invalid_spec, conflict, libvirt
    detail: str


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
    InventoryEvent | DomainEvent | HeartbeatEvent | StatsEvent, Field(discriminator="type")
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
