from django.apps import AppConfig


class DomainsConfig(AppConfig):
    name = "domains"

    def ready(self) -> None:
        from domains import jobs, tasks  # noqa: F401  (registers the job handlers, the periodic upkeep)
