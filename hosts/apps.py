from django.apps import AppConfig


class HostsConfig(AppConfig):
    name = "hosts"

    def ready(self) -> None:
        from hosts import jobs, uploads  # noqa: F401  (register the job handlers and periodic tasks)
