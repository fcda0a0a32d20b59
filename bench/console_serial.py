"""Serial consoles for the console benchmark (`console_bench.py --serial-guests N`): real guests.

The graphical path's source is a fake VNC server on libvirt's test driver, which has no serial
lines; a serial console's bytes come from libvirt's console stream of a running QEMU guest,
which nothing fakes here. So this starts the real agent on the host's libvirt (`qemu:///system`,
software emulation), has it define and boot N copies of the test guest (tests/guest/build.sh's
kernel and busybox initrd, `console=ttyS0`, 128 MiB), registers it with the benchmark's console
as a second host, and opens *view* consoles on their serial lines through the console's
WebSocket, as the page does: a ticket, the socket, the presence notice the agent sends each new
viewer, then the history it recorded since the guest booted.

Needs libvirtd answering on qemu:///system and the test guest built (`make test` does both;
`make guest` builds the guest). The guests are destroyed and undefined at the end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid as uuid_mod

from bench.console_paths import (
    BenchAgent,
    BenchError,
    Children,
    _agent_healthy,
    _wait_until,
    agent_secret,
)
from bench.output import log

URI = "qemu:///system"
GUEST_MEMORY_MIB = 128


def guest_files() -> dict[str, str]:
    """The test guest's kernel and initrd, copied into the host's default pool (as the e2e tests
    do); BenchError if there is no libvirt daemon or no test guest (checked before anything starts)."""
    from tests.e2e.conftest import GUEST_DIR, guest_in_pool

    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        raise BenchError(f"no libvirt daemon answers on {URI}: `make test` starts it")
    files = guest_in_pool()
    if files is None:
        raise BenchError(f"no test guest in {GUEST_DIR}: `make guest` builds it")
    return files


def start_libvirt_agent(children: Children) -> BenchAgent:
    """The real agent (`python -m agent serve`) on the host's libvirt, on loopback with a fixed
    secret, as `make run`'s own host; no KVM probe (software emulation, as on this machine)."""
    from bench.console_stack import free_port
    from tests.e2e.conftest import POOL  # where guest_files() puts the guest

    workdir = children.workdir / "serial-agent"
    workdir.mkdir(parents=True, exist_ok=True)
    secret, secret_path = agent_secret(workdir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    children.spawn(
        "serial-agent",
        [
            *(sys.executable, "-m", "agent", "serve", "--uri", URI, "--accel", "tcg"),
            *("--listen", "127.0.0.1", "--port", str(port), "--secret-file", str(secret_path)),
            *("--state-dir", str(workdir / "state"), "--pool-path", str(POOL), "--log-level", "WARNING"),
        ],
    )
    _wait_until("the agent on qemu:///system", lambda: _agent_healthy(url), children, timeout=120)
    return BenchAgent(url, secret, [])


async def boot_guests(agent: BenchAgent, count: int, files: dict[str, str]) -> None:
    """Define and start `count` test guests (`files`: guest_files()) through the agent's API;
    their uuids go to agent.domain_uuids (so that remove_guests finds them whatever happens next)."""
    from agent.client import AgentClient
    from agent.protocol import DomainSpec, KernelBoot

    run = uuid_mod.uuid4().hex[:6]
    async with AgentClient(agent.url, agent.secret) as client:
        for i in range(count):
            spec = DomainSpec(
                uuid=uuid_mod.uuid4(),
                name=f"domus-bench-serial-{run}-{i}",
                memory_mib=GUEST_MEMORY_MIB,
                boot=KernelBoot(
                    kernel=files["kernel"], initrd=files["initrd"], cmdline="console=ttyS0 quiet"
                ),
            )
            agent.domain_uuids.append(str(spec.uuid))
            await client.define(spec)
            await client.start(spec.uuid)
    log(f"serial: {count} test guests booting on {URI}")


def serial_domains(agent: BenchAgent, children: Children, boot_s: float = 5.0) -> list[int]:
    """The agent registered with the console as another host, and the guests' rows once
    hostwatch has written them running; then `boot_s` for the guests to print their boot (the
    history each new viewer gets). Returns their ids."""
    import time

    from bench.console_stack import register_hosts
    from domains.models import Domain

    register_hosts([("bench-serial", agent.url, agent.secret)])

    def running() -> bool:
        rows = Domain.objects.filter(uuid__in=agent.domain_uuids, state=Domain.State.RUNNING)
        return rows.count() == len(agent.domain_uuids)

    _wait_until("the test guests' rows", running, children, timeout=120)
    time.sleep(boot_s)
    return list(Domain.objects.filter(uuid__in=agent.domain_uuids).values_list("id", flat=True))


async def remove_guests(agent: BenchAgent) -> None:
    """Destroy and undefine the guests boot_guests made (each its own try: one failing leaves
    the others to go)."""
    from agent.client import AgentClient, AgentError

    async with AgentClient(agent.url, agent.secret) as client:
        for text in agent.domain_uuids:
            domain_uuid = uuid_mod.UUID(text)
            try:
                await client.destroy(domain_uuid)
            except AgentError:
                pass  # not running (it may never have started): undefine it all the same
            try:
                await client.delete(domain_uuid, delete_disks=True)
            except AgentError as err:
                log(f"warning: test guest {domain_uuid} was not removed: {err}")


def remove_guests_now(agent: BenchAgent) -> None:
    asyncio.run(remove_guests(agent))
