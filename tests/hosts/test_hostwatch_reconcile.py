from __future__ import annotations

import uuid
from typing import Any

import pytest

from agent.protocol import DomainEvent, DomainInfo, HostFacts, InventoryEvent
from domains.models import Domain
from hosts.hostwatch import _domain_changed, _reconcile
from hosts.models import Host

pytestmark = pytest.mark.django_db

SPEC = {"name": "gone", "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
FACTS = HostFacts(
    hostname="h1",
    uri="test:///default",
    hypervisor="test",
    accel="test",
    arch="x86_64",
    hvm_hardware_assisted=False,
    kvm_usable=False,
    cpus=2,
    memory_mib=2048,
    free_memory_mib=1024,
    libvirt_version="9.0.0",
    agent_version="0.1.0",
)


def info(name: str, state: str = "running", u: uuid.UUID | None = None) -> DomainInfo:
    return DomainInfo(uuid=u or uuid.uuid4(), name=name, state=state, vcpus=1, memory_mib=128)  # type: ignore[arg-type]


def test_inventory_updates_adds_and_flags_missing(host: Host) -> None:
    known = Domain.objects.create(name="known", host=host, state=Domain.State.SHUTOFF)
    gone = Domain.objects.create(name="gone", host=host, state=Domain.State.RUNNING, spec=SPEC)
    discovered_then_gone = Domain.objects.create(name="was-virsh", host=host, state=Domain.State.RUNNING)
    being_created = Domain.objects.create(name="new", host=host, state=Domain.State.NEW, spec=SPEC)
    behind_our_back = info("made-with-virsh")
    _reconcile(host.pk, InventoryEvent(host=FACTS, domains=[info("known", u=known.uuid), behind_our_back]))

    known.refresh_from_db()
    gone.refresh_from_db()
    being_created.refresh_from_db()
    assert known.state == "running"
    assert gone.state == Domain.State.MISSING
    assert not Domain.objects.filter(pk=discovered_then_gone.pk).exists()
    assert being_created.state == Domain.State.NEW
    assert Domain.objects.get(uuid=behind_our_back.uuid).name == "made-with-virsh"
    host.refresh_from_db()
    assert host.state == Host.State.ONLINE
    assert host.facts["hypervisor"] == "test"

    # Reconciling the same inventory again changes nothing and duplicates nothing.
    _reconcile(host.pk, InventoryEvent(host=FACTS, domains=[info("known", u=known.uuid), behind_our_back]))
    assert Domain.objects.filter(host=host).count() == 4  # known, gone (missing), new, virsh


def test_name_clash_with_an_unknown_uuid_keeps_both(host: Host) -> None:
    Domain.objects.create(name="web", host=host, state=Domain.State.NEW)
    stranger = info("web")
    _reconcile(host.pk, InventoryEvent(host=FACTS, domains=[stranger]))
    assert Domain.objects.get(uuid=stranger.uuid).name.startswith("web-")


def test_lifecycle_event_updates_state(host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.RUNNING, memory_mib=256)
    _domain_changed(host.pk, DomainEvent(uuid=domain.uuid, name="d", event="stopped", state="shutoff"))
    domain.refresh_from_db()
    assert domain.state == "shutoff"
    assert domain.memory_mib == 256


def test_undefined_behind_our_back_is_flagged_missing(host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF, spec=SPEC)
    _domain_changed(host.pk, DomainEvent(uuid=domain.uuid, name="d", event="undefined", state=None))
    domain.refresh_from_db()
    assert domain.state == Domain.State.MISSING


def test_a_discovered_domain_that_goes_away_is_forgotten(host: Host) -> None:
    stranger = info("transient-probe")
    _domain_changed(host.pk, DomainEvent(uuid=stranger.uuid, name="p", event="started", state="running"))
    assert Domain.objects.filter(uuid=stranger.uuid).exists()
    _domain_changed(host.pk, DomainEvent(uuid=stranger.uuid, name="p", event="stopped", state=None))
    assert not Domain.objects.filter(uuid=stranger.uuid).exists()


def test_undefined_during_our_own_delete_is_left_to_the_delete_job(host: Host) -> None:
    from console.jobs.models import Job

    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF, spec=SPEC)
    Job.objects.create(kind="domain.delete", domain=domain, host=host, status=Job.Status.RUNNING)
    _domain_changed(host.pk, DomainEvent(uuid=domain.uuid, name="d", event="undefined", state=None))
    domain.refresh_from_db()
    assert domain.state == Domain.State.SHUTOFF  # not flagged missing: the job forgets it


def test_undefined_after_the_row_is_gone_is_harmless(host: Host) -> None:
    from domains.services import domain_vanished

    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF, spec=SPEC)
    domain_id = domain.pk
    domain.delete()
    domain_vanished(domain_id=domain_id)  # the race hostwatch lost against a delete job
    assert not Domain.objects.filter(pk=domain_id).exists()


def test_a_first_inventory_is_written_in_bulk(host: Host, django_assert_max_num_queries: Any) -> None:
    """300 unknown domains: a handful of queries, not several per domain; one known elsewhere
    (moved from another host, say) still goes through the one-by-one path."""
    other = Host.objects.create(name="h2", url="http://127.0.0.1:2", secret="y" * 32)
    moved = Domain.objects.create(name="moved", host=other, state=Domain.State.SHUTOFF)
    inventory = [info(f"d{i:03d}") for i in range(300)] + [info("moved", u=moved.uuid)]
    with django_assert_max_num_queries(30):
        _reconcile(host.pk, InventoryEvent(host=FACTS, domains=inventory))
    assert Domain.objects.filter(host=host).count() == 300
    moved.refresh_from_db()
    assert moved.state == "running"
    # And again: nothing changed, so nothing is written.
    with django_assert_max_num_queries(20):
        _reconcile(host.pk, InventoryEvent(host=FACTS, domains=inventory))


def test_autostart_follows_the_host(host: Host) -> None:
    domain = Domain.objects.create(
        name="auto", host=host, state=Domain.State.SHUTOFF, vcpus=1, memory_mib=128
    )
    reported = DomainInfo(
        uuid=domain.uuid, name="auto", state="shutoff", vcpus=1, memory_mib=128, autostart=True
    )
    _reconcile(host.pk, InventoryEvent(host=FACTS, domains=[reported]))
    domain.refresh_from_db()
    assert domain.autostart is True
    # A lifecycle event (which does not carry the setting) leaves it alone.
    _domain_changed(host.pk, DomainEvent(uuid=domain.uuid, name="auto", event="started", state="running"))
    domain.refresh_from_db()
    assert domain.autostart is True and domain.state == "running"
