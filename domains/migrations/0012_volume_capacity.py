from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("domains", "0011_volume_origin")]

    operations = [
        migrations.AddField(
            model_name="volume",
            name="capacity_bytes",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
