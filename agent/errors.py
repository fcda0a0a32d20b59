"""Typed errors of the agent and their mapping from libvirt error codes.

Every error that leaves a request handler is an `AgentProblem`; the server renders it as a
`Problem` JSON body with its HTTP status.
"""

from __future__ import annotations

import libvirt


class AgentProblem(Exception):
    """Base class: an error with an HTTP status and a machine-readable code."""

    status = 500
    code = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(AgentProblem):
    status = 401
    code = "unauthorized"


class InvalidSpec(AgentProblem):
    status = 400
    code = "invalid_spec"


class InstallSourceRefused(InvalidSpec):
    """A network install's URL, or a redirect on the way, leads where the agent never connects
    (this host, link-local, a management range). A code of its own, so that a refusal reads
    differently from a mirror that answered 404."""

    code = "install_source_refused"


class NotFound(AgentProblem):
    status = 404
    code = "not_found"


class Conflict(AgentProblem):
    status = 409
    code = "conflict"


class OffsetConflict(Conflict):
    """A piece of an upload sent at another offset than the one it is at (a retry of a piece
    already written, or one sent ahead): the answer says where to resume."""

    code = "offset_mismatch"

    def __init__(self, detail: str, *, offset: int) -> None:
        super().__init__(detail)
        self.offset = offset


class InsufficientStorage(AgentProblem):
    """The file system under a pool has no room for what is asked (RFC 4918's 507)."""

    status = 507
    code = "insufficient_storage"


class LibvirtFailure(AgentProblem):
    status = 502
    code = "libvirt"


class LibvirtUnavailable(LibvirtFailure):
    """The libvirt connection is down (libvirtd restarting); the agent is reconnecting. A
    transient fault: the console retries."""

    status = 503
    code = "libvirt_unavailable"


# libvirt error codes that mean "the connection itself is gone".
CONNECTION_LOST_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_AUTH_FAILED,
    }
)

_NOT_FOUND_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
    }
)
_CONFLICT_CODES = frozenset(
    {
        libvirt.VIR_ERR_OPERATION_INVALID,
        libvirt.VIR_ERR_OPERATION_FAILED,
        libvirt.VIR_ERR_DOM_EXIST,
        libvirt.VIR_ERR_STORAGE_VOL_EXIST,
    }
)
_INVALID_CODES = frozenset(
    {
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_ERR_INVALID_ARG,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    }
)


def is_connection_lost(err: libvirt.libvirtError) -> bool:
    code = err.get_error_code()
    if code == libvirt.VIR_ERR_SYSTEM_ERROR:
        # A system error is a lost connection only when it comes from the RPC layer.
        return bool(err.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE))
    return code in CONNECTION_LOST_CODES


def from_libvirt(err: libvirt.libvirtError, *, what: str) -> AgentProblem:
    """Translate a libvirt error into the agent's typed error, by error code."""
    code = err.get_error_code()
    message = err.get_error_message() or str(err)
    detail = f"{what}: {message}"
    if is_connection_lost(err):
        return LibvirtUnavailable(f"{detail} (libvirt connection lost; reconnecting)")
    if code in _NOT_FOUND_CODES:
        return NotFound(detail)
    if code in _CONFLICT_CODES:
        return Conflict(detail)
    if code in _INVALID_CODES:
        return InvalidSpec(detail)
    return LibvirtFailure(detail)
