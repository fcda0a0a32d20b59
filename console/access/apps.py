from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "console.access"
    label = "access"

    def ready(self) -> None:
        from console.access import schema  # noqa: F401  (registers the OpenAPI auth scheme)
