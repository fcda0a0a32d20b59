from django.apps import AppConfig


class LoginConfig(AppConfig):
    name = "console.access.login"
    label = "access_login"
    verbose_name = "Sign-in"
