"""The permissions Domus knows and the built-in roles (plain data; the policy interprets it)."""

from __future__ import annotations

PERMISSIONS: dict[str, str] = {
    "domain.view": "See domains, their state and jobs",
    "domain.console.view": "Watch a domain's console",
    "domain.console.interact": "Type into a domain's console",
    "domain.power": "Start, shut down, force off",
    "domain.create": "Create domains",
    "domain.edit": "Change a domain's settings",
    "domain.delete": "Delete domains (and, when asked, their disks)",
    "domain.migrate": "Move domains between hosts",
    "host.view": "See hosts and what they offer",
    "media.upload": "Upload ISOs and images to a host's pools, or have its agent fetch them",
    "host.manage": "Add, change and remove hosts",
    "team.manage": "Manage a team's members, grants and quotas",
    "audit.view": "Read the audit trail",
}

_VIEWER = ["domain.view", "domain.console.view", "host.view"]
_OPERATOR = [*_VIEWER, "domain.console.interact", "domain.power"]
_ADMIN = [
    *_OPERATOR,
    "domain.create",
    "domain.edit",
    "domain.delete",
    "domain.migrate",
    "media.upload",
    "team.manage",
    "audit.view",
]
_OWNER = [*_ADMIN, "host.manage"]

BUILTIN_ROLES: dict[str, list[str]] = {
    "Owner": _OWNER,
    "Admin": _ADMIN,
    "Operator": _OPERATOR,
    "Viewer": _VIEWER,
}

# Permissions that only a site- or host-wide grant confers: a team role cannot manage shared
# machines or read the whole audit trail.
NOT_FROM_TEAMS = {"host.manage", "audit.view"}
