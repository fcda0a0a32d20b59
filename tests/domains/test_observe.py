"""What the console records from an agent's report: names follow renames made on the host."""

from __future__ import annotations

import uuid

import pytest

from agent.protocol import DiskInfo, DomainInfo
from domains.models import Domain
from domains.services import domain_observe
from hosts.models import Host

pytestmark = pytest.mark.django_db


def _info(domain: Domain, name: str) -> DomainInfo:
    disk = DiskInfo(target="vda", device="disk", path="/p/x.qcow2")
    return DomainInfo(uuid=domain.uuid, name=name, state="shutoff", vcpus=1, memory_mib=256, disks=[disk])


def test_a_rename_on_the_host_renames_the_row_and_records_its_disks(host: Host) -> None:
    domain = Domain.objects.create(name="old", host=host, state=Domain.State.SHUTOFF)
    domain_observe(host=host, info=_info(domain, "new"))
    domain.refresh_from_db()
    assert domain.name == "new"
    assert domain.disks == [DiskInfo(target="vda", device="disk", path="/p/x.qcow2").model_dump(mode="json")]
    assert domain.disks[0]["path"] == "/p/x.qcow2"


def test_a_name_another_row_holds_is_not_taken(host: Host) -> None:
    Domain.objects.create(name="taken", host=host, state=Domain.State.SHUTOFF)
    domain = Domain.objects.create(name="mine", host=host, state=Domain.State.SHUTOFF)
    domain_observe(host=host, info=_info(domain, "taken"))
    domain.refresh_from_db()
    assert domain.name == "mine"


def test_a_name_made_unique_on_discovery_stays(host: Host) -> None:
    domain_uuid = uuid.uuid4()
    domain = Domain.objects.create(
        uuid=domain_uuid, name=f"web-{str(domain_uuid)[:8]}", host=host, state=Domain.State.SHUTOFF
    )
    domain_observe(host=host, info=_info(domain, "web"))
    domain.refresh_from_db()
    assert domain.name == f"web-{str(domain_uuid)[:8]}"
