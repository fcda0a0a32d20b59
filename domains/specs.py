"""Turning a create request into a valid `DomainSpec` for a host, with errors that name fields."""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.protocol import DomainSpec, IsoBoot, KernelBoot
from console.errors import InvalidInput
from hosts.models import Host

SPEC_FIELDS = {"name", "vcpus", "memory_mib", "disks", "boot"}


def _field_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        field = ".".join(str(p) for p in (*prefix, *err["loc"])) or "non_field_errors"
        errors.setdefault(field, []).append(err["msg"])
    return errors


def _confined_path(value: str, pool_path: str) -> str | None:
    """The error for a boot path outside the host's pool, or None when it is fine."""
    if not value.startswith("/"):
        return f"must be an absolute path inside {pool_path}"
    if ".." in value.split("/"):
        return "must not contain '..'"
    if not posixpath.normpath(value).startswith(pool_path.rstrip("/") + "/"):
        return f"must lie inside the host's storage pool {pool_path}"
    return None


def _boot(data: Any, host: Host) -> BaseModel:
    if not isinstance(data, dict):
        raise InvalidInput("Invalid boot.", fields={"boot": ["must be an object with 'iso' or 'kernel'"]})
    model: type[BaseModel] = IsoBoot if "iso" in data else KernelBoot
    try:
        boot = model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput("Invalid boot.", fields=_field_errors(exc, ("boot",))) from exc
    errors: dict[str, list[str]] = {}
    for key in ("iso", "kernel", "initrd"):
        path = getattr(boot, key, None)
        if path and (problem := _confined_path(path, host.default_pool_path)):
            errors[f"boot.{key}"] = [problem]
    if errors:
        raise InvalidInput("Invalid boot path.", fields=errors)
    return boot


def build_spec(data: dict[str, Any], host: Host, *, domain_uuid: uuid.UUID | None = None) -> DomainSpec:
    unknown = set(data) - SPEC_FIELDS
    if unknown:
        raise InvalidInput("Unknown fields.", fields={name: ["unknown field"] for name in sorted(unknown)})
    if "boot" not in data:
        raise InvalidInput(
            "Missing boot.", fields={"boot": ["required: {'iso': path} or {'kernel': path, ...}"]}
        )
    body = {**data, "uuid": domain_uuid or uuid.uuid4(), "boot": _boot(data["boot"], host)}
    try:
        return DomainSpec.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput("Invalid domain spec.", fields=_field_errors(exc)) from exc
