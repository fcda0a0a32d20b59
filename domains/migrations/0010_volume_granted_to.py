"""A volume can be granted to teams other than its owner (domains.volumes): they use it as the
owner does, without owning it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("access", "0004_api_token_scopes"),
        ("domains", "0009_volume"),
    ]

    operations = [
        migrations.AddField(
            model_name="volume",
            name="granted_to",
            field=models.ManyToManyField(blank=True, related_name="granted_volumes", to="access.team"),
        ),
    ]
