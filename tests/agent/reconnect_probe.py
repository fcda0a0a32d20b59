"""Run by test_pools_real: the agent's connection is dropped and made again (as when libvirtd
restarts), on a live libvirtd, in a process of its own (libvirt's event loop is registered once
per process). Prints, as JSON, what the old connection still has registered, what the new one
has, and the storage pool events heard afterwards.

    python -m tests.agent.reconnect_probe <pool name> <directory>
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import libvirtaio

from agent.connection import LibvirtConnection
from agent.events import EventHub

URI = "qemu:///system"
GUARD_S = 60.0  # only against a hang


async def _until(condition: Any) -> None:
    async with asyncio.timeout(GUARD_S):
        while not condition():
            await asyncio.sleep(0.02)


async def probe(pool_name: str, directory: str) -> dict[str, Any]:
    libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())
    connection = LibvirtConnection(URI)
    hub = EventHub()
    heard: list[bool] = []
    hub.pools_changed = lambda *, refreshed_only=False: heard.append(refreshed_only)  # type: ignore[method-assign]
    connection.on_connected(hub.attach)
    connection.on_disconnecting(hub.detach)
    await connection.open()
    old = connection.get()
    registered_before = [kind for _conn, kind, _id in hub._registrations]
    connection.connection_lost()  # what the close callback does when libvirtd goes away
    await _until(lambda: connection.connected and connection.get() is not old)
    new = connection.get()
    result: dict[str, Any] = {
        "registered_before": registered_before,
        "old_domain_callbacks": len(getattr(old, "domainEventCallbackID", {})),
        "old_pool_callbacks": len(getattr(old, "storagePoolEventCallbackID", {})),
        "old_network_callbacks": len(getattr(old, "networkEventCallbackID", {})),
        "registered_after": [kind for conn, kind, _id in hub._registrations if conn is new],
        "stale_registrations": sum(1 for conn, _kind, _id in hub._registrations if conn is not new),
    }
    virsh = ["virsh", "-c", URI]
    subprocess.run([*virsh, "pool-define-as", pool_name, "dir", "--target", directory], check=True)
    await _until(lambda: len(heard) >= 1)
    subprocess.run([*virsh, "pool-undefine", pool_name], check=True)
    await _until(lambda: len(heard) >= 2)
    result["heard"] = heard
    await connection.close()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(sys.argv[1], sys.argv[2]))))
