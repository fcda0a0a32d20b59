"""OpenID Connect configuration. No identity provider is reachable here, so the sign-in flow
itself (code exchange, token signature, userinfo) is not exercised: these tests check the
wiring from DOMUS_OIDC_* to settings, URLs and the login page, the redirect to the provider,
and the backend's user matching."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import clear_url_caches

from console.access.login.oidc_config import OIDCConfigError, oidc_settings

ENV = {
    "DOMUS_OIDC_ISSUER": "https://idp.example.test/realms/ops",
    "DOMUS_OIDC_CLIENT_ID": "domus",
    "DOMUS_OIDC_CLIENT_SECRET": "not-a-real-secret",
    "DOMUS_OIDC_AUTHORIZATION_ENDPOINT": "https://idp.example.test/auth",
    "DOMUS_OIDC_TOKEN_ENDPOINT": "https://idp.example.test/token",
    "DOMUS_OIDC_USER_ENDPOINT": "https://idp.example.test/userinfo",
    "DOMUS_OIDC_JWKS_ENDPOINT": "https://idp.example.test/jwks",
}

PROBE = """
import json, sys, django
django.setup()
from django.conf import settings
from django.urls import NoReverseMatch, reverse
import console.urls
try:
    init = reverse("oidc_authentication_init")
except NoReverseMatch:
    init = None
print(json.dumps({
    "backends": settings.AUTHENTICATION_BACKENDS,
    "app": "mozilla_django_oidc" in settings.INSTALLED_APPS,
    "loaded": any(m.startswith("mozilla_django_oidc") for m in sys.modules),
    "init": init,
    "token": getattr(settings, "OIDC_OP_TOKEN_ENDPOINT", None),
    "algo": getattr(settings, "OIDC_RP_SIGN_ALGO", None),
}))
"""


def probe(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOMUS_OIDC_")}
    env.update(extra, DJANGO_SETTINGS_MODULE="console.settings")
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_unset_loads_nothing_of_oidc() -> None:
    result = probe({})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {
        "backends": ["django.contrib.auth.backends.ModelBackend"],
        "app": False,
        "loaded": False,
        "init": None,
        "token": None,
        "algo": None,
    }


def test_set_configures_the_backend_and_urls() -> None:
    result = probe(ENV)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["backends"] == [
        "django.contrib.auth.backends.ModelBackend",
        "console.access.login.oidc.DomusOIDCBackend",
    ]
    assert seen["app"] and seen["init"] == "/oidc/authenticate/"
    assert seen["token"] == "https://idp.example.test/token" and seen["algo"] == "RS256"


def test_half_a_configuration_stops_the_start() -> None:
    result = probe({"DOMUS_OIDC_ISSUER": ENV["DOMUS_OIDC_ISSUER"]})
    assert result.returncode != 0
    assert "DOMUS_OIDC_CLIENT_ID" in result.stderr and ".well-known/openid-configuration" in result.stderr
    with pytest.raises(OIDCConfigError, match="DOMUS_OIDC_JWKS_ENDPOINT"):
        oidc_settings({k: v for k, v in ENV.items() if k != "DOMUS_OIDC_JWKS_ENDPOINT"})


def _reload_urls() -> None:
    import console.access.login.urls
    import console.urls

    importlib.reload(console.access.login.urls)
    importlib.reload(console.urls)
    clear_url_caches()


@pytest.fixture
def oidc_on(settings: Any) -> Iterator[None]:
    config = oidc_settings(ENV)
    assert config is not None
    for name, value in config.items():
        setattr(settings, name, value)
    settings.DOMUS_OIDC_ENABLED = True
    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        "console.access.login.oidc.DomusOIDCBackend",
    ]
    _reload_urls()
    yield
    settings.DOMUS_OIDC_ENABLED = False
    _reload_urls()


def test_login_page_has_no_sso_link_when_off(db: None, client: Client) -> None:
    page = client.get("/login/")
    assert page.status_code == 200 and b"Sign in with SSO" not in page.content
    assert client.get("/oidc/authenticate/").status_code == 404


def test_login_page_links_to_the_provider_when_on(db: None, oidc_on: None, client: Client) -> None:
    page = client.get("/login/?next=/hosts/")
    assert b"Sign in with SSO" in page.content and b'href="/oidc/authenticate/?next=/hosts/"' in page.content
    # The first leg needs no network: a redirect to the provider, with PKCE.
    leg = client.get("/oidc/authenticate/?next=/hosts/")
    assert leg.status_code == 302
    target = urlparse(leg["Location"])
    query = parse_qs(target.query)
    assert f"{target.scheme}://{target.netloc}{target.path}" == ENV["DOMUS_OIDC_AUTHORIZATION_ENDPOINT"]
    assert query["client_id"] == ["domus"] and query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == ["http://testserver/oidc/callback/"]


def test_users_are_matched_and_created_by_email(user: Any, oidc_on: None) -> None:
    from console.access.login.oidc import DomusOIDCBackend

    user.email = "Ana@Example.org"
    user.save()
    backend = DomusOIDCBackend()
    assert list(backend.filter_users_by_claims({"email": "ana@example.org"})) == [user]
    assert backend.verify_claims({"email": "ana@example.org", "email_verified": True})
    assert not backend.verify_claims({"email": "ana@example.org", "email_verified": False})
    assert not backend.verify_claims({"sub": "x"})
    created = backend.create_user({"email": "ana@elsewhere.example"})
    assert created.username == "ana2" and created.email == "ana@elsewhere.example"
    assert not get_user_model().objects.get(pk=created.pk).grants.exists()
