# The disks and CD-ROMs a host reports for each domain: the delete confirmation lists them.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("domains", "0004_domain_list_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="domain",
            name="disks",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
