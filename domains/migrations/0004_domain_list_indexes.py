# The domain lists (overview page and API) sort, filter and page in the database: one index per
# sort key, each ending on the id (the tie-breaker), read forwards or backwards.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("domains", "0003_domain_autostart"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="domain",
            index=models.Index(fields=["name", "id"], name="domain_list_by_name"),
        ),
        migrations.AddIndex(
            model_name="domain",
            index=models.Index(fields=["state", "name", "id"], name="domain_list_by_state"),
        ),
        migrations.AddIndex(
            model_name="domain",
            index=models.Index(fields=["memory_mib", "name", "id"], name="domain_list_by_memory"),
        ),
        migrations.AddIndex(
            model_name="domain",
            index=models.Index(fields=["vcpus", "name", "id"], name="domain_list_by_vcpus"),
        ),
        migrations.AddIndex(
            model_name="domain",
            index=models.Index(fields=["created_at", "id"], name="domain_list_by_created"),
        ),
    ]
