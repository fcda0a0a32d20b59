"""The contract between the console and the agent (API v1).

Both sides import these pydantic models; nothing else crosses the wire. The agent never imports
Django, so this module must stay plain (pydantic and the standard library only).
"""

from __future__ import annotations

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


AgentEvent = Annotated[InventoryEvent | DomainEvent | HeartbeatEvent, Field(discriminator="type")]
