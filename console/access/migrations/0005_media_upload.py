"""The built-in Admin and Owner roles gain `media.upload` (ISOs and images into a host's pools)."""

from django.db import migrations

GAINED = ("Admin", "Owner")


def add(apps, schema_editor):
    Role = apps.get_model("access", "Role")
    for role in Role.objects.filter(builtin=True, name__in=GAINED):
        if "media.upload" not in role.permissions:
            role.permissions = [*role.permissions, "media.upload"]
            role.save(update_fields=["permissions"])


def remove(apps, schema_editor):
    Role = apps.get_model("access", "Role")
    for role in Role.objects.filter(builtin=True, name__in=GAINED):
        role.permissions = [p for p in role.permissions if p != "media.upload"]
        role.save(update_fields=["permissions"])


class Migration(migrations.Migration):
    dependencies = [("access", "0004_api_token_scopes")]
    operations = [migrations.RunPython(add, remove)]
