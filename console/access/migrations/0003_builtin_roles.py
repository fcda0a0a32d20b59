from django.db import migrations

# Frozen here on purpose: later changes to the built-in roles get a migration of their own.
VIEWER = ["domain.view", "domain.console.view", "host.view"]
OPERATOR = [*VIEWER, "domain.console.interact", "domain.power"]
ADMIN = [
    *OPERATOR,
    "domain.create",
    "domain.edit",
    "domain.delete",
    "domain.migrate",
    "team.manage",
    "audit.view",
]
OWNER = [*ADMIN, "host.manage"]
ROLES = {
    "Owner": (OWNER, "Everything, including hosts"),
    "Admin": (ADMIN, "Everything on domains, the team's members and the audit trail"),
    "Operator": (OPERATOR, "Power and consoles"),
    "Viewer": (VIEWER, "Look, and watch consoles"),
}


def create_roles(apps, schema_editor):
    Role = apps.get_model("access", "Role")
    for name, (permissions, description) in ROLES.items():
        Role.objects.update_or_create(
            name=name, defaults={"permissions": permissions, "builtin": True, "description": description}
        )


def remove_roles(apps, schema_editor):
    apps.get_model("access", "Role").objects.filter(builtin=True).delete()


class Migration(migrations.Migration):
    dependencies = [("access", "0002_teams_roles_grants")]
    operations = [migrations.RunPython(create_roles, remove_roles)]
