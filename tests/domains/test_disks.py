"""A domain's disks and CD-ROMs changed after create (domains.disks): who may, which paths, the
quota, and what is refused before any job starts; and quotas that count volumes. (The agent's
side on a real guest: tests/agent/test_disks.py; the page in a browser: tests/e2e/test_disks.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from console.access.models import Team
from console.access.quotas import team_usage
from console.audit.models import AuditEvent
from console.jobs.models import Job
from domains import volumes
from domains.models import Domain, Volume
from hosts.models import Host
from tests.domains.test_volume_ownership import MINE, POOL, SITE_ISO, THEIRS, _member, shared_host  # noqa: F401

pytestmark = pytest.mark.django_db
GIB = 1 << 30


@pytest.fixture
def teams(db: None) -> dict[str, Team]:
    return {n: Team.objects.create(name=n) for n in ("red", "blue")}


@pytest.fixture
def running(shared_host: Host, teams: dict[str, Team]) -> dict[str, Domain]:  # noqa: F811
    made = {}
    for name, team, disk in (("mine", "red", MINE), ("theirs", "blue", THEIRS)):
        made[name] = Domain.objects.create(
            name=name,
            host=shared_host,
            team=teams[team],
            state=Domain.State.RUNNING,
            spec={"name": name, "disks": [{"size_gib": 2}]},
            disks=[
                {"target": "vda", "device": "disk", "path": disk, "capacity_bytes": 2 * GIB},
                {"target": "sda", "device": "cdrom", "path": None},
            ],
        )
    volumes.register_disks(made.values())
    return made


def _jobs() -> int:
    return Job.objects.count()


def test_what_is_refused_before_any_job(
    running: dict[str, Domain], teams: dict[str, Team], django_user_model: Any
) -> None:
    red = _member(django_user_model, "red-admin", teams["red"])
    viewer = _member(django_user_model, "red-viewer", teams["red"], role="Operator")
    mine = f"/api/v1/domains/{running['mine'].pk}"
    theirs = f"/api/v1/domains/{running['theirs'].pk}"
    before = _jobs()
    cases = [
        (viewer, f"{mine}/disks/", {"size": "1 GiB"}, 403, "domain.edit"),
        (red, f"{theirs}/disks/", {"size": "1 GiB"}, 404, ""),  # another team's domain is not there
        (red, f"{mine}/disks/", {"existing": THEIRS}, 400, "is a disk of"),
        (red, f"{mine}/disks/", {"size": "-1"}, 400, "size"),
        (red, f"{mine}/disks/", {"device": "floppy"}, 400, "device"),
        (red, f"{mine}/disks/", {"device": "cdrom", "existing": THEIRS}, 400, "is a disk of"),
        (red, f"{mine}/disks/vdz/detach/", {}, 404, "vdz"),
        (red, f"{mine}/disks/vda/media/", {"path": SITE_ISO}, 400, "not a CD-ROM"),
        (red, f"{mine}/disks/sda/media/", {"path": THEIRS}, 400, "is a disk of"),
        (red, f"{mine}/disks/vda/resize/", {"size": "1 GiB"}, 400, "never shrunk"),
        (red, f"{mine}/disks/sda/resize/", {"size": "9 GiB"}, 400, "not a disk"),
    ]
    for api, url, body, status, said in cases:
        answer = api.post(url, body, format="json")
        assert answer.status_code == status, (url, body, answer.content)
        assert said in answer.content.decode(), (url, body, answer.content)
    assert _jobs() == before
    Domain.objects.filter(pk=running["mine"].pk).update(state=Domain.State.FAILED)
    assert red.post(f"{mine}/disks/", {"size": "1 GiB"}, format="json").status_code == 409
    assert _jobs() == before


def test_each_change_is_a_job_and_an_audit_row(
    running: dict[str, Domain], teams: dict[str, Team], django_user_model: Any
) -> None:
    red = _member(django_user_model, "red-admin", teams["red"])
    mine = f"/api/v1/domains/{running['mine'].pk}"
    Volume.objects.create(host=running["mine"].host, path=f"{POOL}/red-spare.qcow2", team=teams["red"])
    asked = [
        (f"{mine}/disks/", {"size": "1 GiB"}, "domain.disk.attach"),
        (f"{mine}/disks/", {"device": "cdrom", "existing": SITE_ISO}, "domain.disk.attach"),
        (f"{mine}/disks/", {"existing": f"{POOL}/red-spare.qcow2"}, "domain.disk.attach"),
        (f"{mine}/disks/sda/media/", {"path": SITE_ISO}, "domain.disk.media"),
        (f"{mine}/disks/sda/media/", {"path": None}, "domain.disk.media"),
        (f"{mine}/disks/vda/resize/", {"size": "3 GiB"}, "domain.disk.resize"),
        (f"{mine}/disks/vda/detach/", {}, "domain.disk.detach"),
    ]
    for url, body, kind in asked:
        answer = red.post(url, body, format="json")
        assert answer.status_code == 202, (url, body, answer.content)
        job = Job.objects.get(pk=answer.json()["job"]["id"])
        assert job.kind == kind and job.domain_id == running["mine"].pk
        Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)  # the next one may queue
    kinds = list(
        AuditEvent.objects.filter(action__startswith="domain.disk.").values_list("action", flat=True)
    )
    assert sorted(kinds) == sorted(k for _, _, k in asked)
    resize = Job.objects.get(kind="domain.disk.resize")
    assert resize.params == {"target": "vda", "path": MINE, "capacity_bytes": 3 * GIB}


def test_the_disk_quota_counts_new_disks_growth_and_the_team_s_volumes(
    running: dict[str, Domain], teams: dict[str, Team], django_user_model: Any
) -> None:
    red_team = teams["red"]
    red = _member(django_user_model, "red-admin", red_team)
    mine = f"/api/v1/domains/{running['mine'].pk}"
    assert team_usage(red_team).disk_gib == 2  # its disk, by spec and by its reported size
    # A volume of the team not in any domain (an ISO it uploaded, a disk kept) counts too.
    Volume.objects.create(
        host=running["mine"].host, path=f"{POOL}/red.iso", team=red_team, capacity_bytes=3 * GIB
    )
    assert team_usage(red_team).disk_gib == 5
    Volume.objects.create(host=running["mine"].host, path=f"{POOL}/lib.iso", library=True, capacity_bytes=GIB)
    assert team_usage(red_team).disk_gib == 5  # the site's library is nobody's
    # Its host reports the disk bigger than the spec said (grown with virsh): that counts.
    Volume.objects.filter(path=MINE).update(capacity_bytes=4 * GIB)
    assert team_usage(red_team).disk_gib == 7
    Team.objects.filter(pk=red_team.pk).update(max_disk_gib=8)
    over = red.post(f"{mine}/disks/", {"size": "2 GiB"}, format="json")
    assert over.status_code == 400 and "quota of 8 GiB" in over.content.decode(), over.content
    grow = red.post(f"{mine}/disks/vda/resize/", {"size": "6 GiB"}, format="json")
    assert grow.status_code == 400 and "quota" in grow.content.decode()
    assert red.post(f"{mine}/disks/", {"size": "1 GiB"}, format="json").status_code == 202


def test_reported_sizes_are_recorded_on_the_volumes(running: dict[str, Domain]) -> None:
    domain = running["mine"]
    domain.disks = [{"target": "vda", "device": "disk", "path": MINE, "capacity_bytes": 5 * GIB}]
    domain.save()
    volumes.register_disks([domain])
    assert Volume.objects.get(path=MINE).capacity_bytes == 5 * GIB


def test_the_page_lists_disks_with_what_is_pending(
    running: dict[str, Domain], teams: dict[str, Team], django_user_model: Any, client: Any
) -> None:
    domain = running["mine"]
    domain.disks = [
        {"target": "vda", "device": "disk", "path": MINE, "capacity_bytes": 2 * GIB},
        {"target": "sda", "device": "cdrom", "path": None, "pending": "attach"},
    ]
    domain.save()
    _member(django_user_model, "red-admin", teams["red"])
    client.force_login(django_user_model.objects.get(username="red-admin"))
    page = client.get(f"/domains/{domain.pk}/").content.decode()
    assert "Disks and CD-ROMs" in page and "attached from the next boot" in page
    assert "2.0\xa0GiB" in page and "debian.iso" in page  # the ISO offered for the drive
    refused = client.post(f"/domains/{domain.pk}/disks/vda/media/", {"path": SITE_ISO}, follow=True)
    assert "not a CD-ROM drive" in refused.content.decode()
    done = client.post(
        f"/domains/{domain.pk}/disks/", {"kind": "new", "size": "1 GiB", "pool": "default"}, follow=True
    )
    assert "Attaching a new 1 GiB disk" in done.content.decode()
    assert Job.objects.filter(kind="domain.disk.attach", domain=domain).exists()
