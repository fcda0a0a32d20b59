"""Sign-in URLs, included at the site root by console/urls.py."""

from __future__ import annotations

from django.conf import settings
from django.urls import URLPattern, URLResolver, include, path

from console.access.login import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("login/", views.DomusLoginView.as_view(), name="login"),
    path("login/code/", views.login_code, name="login-code"),
    path("account/2fa/", views.account_2fa, name="account-2fa"),
]
if getattr(settings, "DOMUS_OIDC_ENABLED", False):
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))
