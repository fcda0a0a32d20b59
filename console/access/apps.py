from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "console.access"
    label = "access"

    def ready(self) -> None:
        from console.access import access_events, schema, signals, tasks  # noqa: F401  (OpenAPI auth scheme, audit of sign-ins, expired sessions)

        access_events.connect()
