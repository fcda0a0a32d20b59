from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "console.jobs"
    label = "jobs"

    def ready(self) -> None:
        from console.jobs import tasks  # noqa: F401  (the job task and the periodic job upkeep)
