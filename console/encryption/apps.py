from django.apps import AppConfig


class EncryptionConfig(AppConfig):
    name = "console.encryption"
    label = "encryption"

    def ready(self) -> None:
        from console.encryption import keys

        keys.connect()
