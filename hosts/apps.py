from django.apps import AppConfig


class HostsConfig(AppConfig):
    name = "hosts"

    def ready(self) -> None:
        from hosts import jobs  # noqa: F401  (registers the job handlers)
