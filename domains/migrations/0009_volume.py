"""Volumes get an owner (domains.volumes): the table, and the disks domains already have
recorded as their teams' (the oldest domain first: the one that made a volume, or was given it)."""

import django.db.models.deletion
from django.db import migrations, models


def register_existing_disks(apps, schema_editor):
    Domain = apps.get_model("domains", "Domain")
    Volume = apps.get_model("domains", "Volume")
    seen = set()
    rows = []
    for domain in Domain.objects.order_by("created_at", "pk").iterator():
        for disk in domain.disks or []:
            path = disk.get("path") if isinstance(disk, dict) else None
            if disk.get("device") == "disk" and path and (domain.host_id, path) not in seen:
                seen.add((domain.host_id, path))
                rows.append(Volume(host_id=domain.host_id, path=path, team_id=domain.team_id, domain=domain))
    Volume.objects.bulk_create(rows, batch_size=500)


class Migration(migrations.Migration):
    dependencies = [
        ("access", "0004_api_token_scopes"),
        ("domains", "0008_domain_create_failed"),
        ("hosts", "0003_enrolment_maintenance_stats"),
    ]

    operations = [
        migrations.CreateModel(
            name="Volume",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("path", models.CharField(max_length=1024)),
                ("library", models.BooleanField(default=False)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "domain",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="volumes",
                        to="domains.domain",
                    ),
                ),
                (
                    "host",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="volumes", to="hosts.host"
                    ),
                ),
                (
                    "team",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="volumes",
                        to="access.team",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("host", "path"), name="volume_path_unique_per_host")
                ],
            },
        ),
        migrations.RunPython(register_existing_disks, migrations.RunPython.noop),
    ]
