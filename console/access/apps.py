from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "console.access"
    label = "access"

    def ready(self) -> None:
        from console.access import access_events, schema, signals  # noqa: F401  (OpenAPI auth scheme, audit of sign-ins)

        access_events.connect()
