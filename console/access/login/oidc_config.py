"""OpenID Connect settings from DOMUS_OIDC_* environment variables (imported by settings.py, so
it imports nothing from Django).

OIDC is on when any DOMUS_OIDC_* variable is set; then the configuration must be complete or
start-up fails naming what is missing (a half-configured SSO is a mistake, not "off"):

- DOMUS_OIDC_CLIENT_ID, DOMUS_OIDC_CLIENT_SECRET: this console as the identity provider's client;
- DOMUS_OIDC_AUTHORIZATION_ENDPOINT, DOMUS_OIDC_TOKEN_ENDPOINT, DOMUS_OIDC_USER_ENDPOINT,
  DOMUS_OIDC_JWKS_ENDPOINT: the provider's endpoints, spelled out, because nothing is fetched at
  start-up (copy them from `$DOMUS_OIDC_ISSUER/.well-known/openid-configuration`);
- DOMUS_OIDC_ISSUER: optional, for the record and the hint above;
- DOMUS_OIDC_SIGN_ALGO (default RS256, verified with the JWKS keys), DOMUS_OIDC_SCOPES (default
  "openid email profile"), DOMUS_OIDC_CREATE_USERS ("0" to only match existing users; default on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ENDPOINTS = {
    "DOMUS_OIDC_AUTHORIZATION_ENDPOINT": "OIDC_OP_AUTHORIZATION_ENDPOINT",
    "DOMUS_OIDC_TOKEN_ENDPOINT": "OIDC_OP_TOKEN_ENDPOINT",
    "DOMUS_OIDC_USER_ENDPOINT": "OIDC_OP_USER_ENDPOINT",
    "DOMUS_OIDC_JWKS_ENDPOINT": "OIDC_OP_JWKS_ENDPOINT",
}
REQUIRED = ("DOMUS_OIDC_CLIENT_ID", "DOMUS_OIDC_CLIENT_SECRET", *ENDPOINTS)
BACKEND = "console.access.login.oidc.DomusOIDCBackend"


class OIDCConfigError(ValueError):
    """Raised at start-up for an incomplete DOMUS_OIDC_* configuration."""


def oidc_settings(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The mozilla-django-oidc settings for `environ`, or None when OIDC is not configured."""
    given = {k: v.strip() for k, v in environ.items() if k.startswith("DOMUS_OIDC_") and v.strip()}
    if not given:
        return None
    missing = [name for name in REQUIRED if name not in given]
    if missing:
        hint = ""
        if issuer := given.get("DOMUS_OIDC_ISSUER"):
            hint = f" (the endpoints are listed in {issuer.rstrip('/')}/.well-known/openid-configuration)"
        raise OIDCConfigError(f"OpenID Connect is half configured: set {', '.join(missing)}{hint}.")
    algo = given.get("DOMUS_OIDC_SIGN_ALGO", "RS256")
    if algo.startswith("none") or algo == "":
        raise OIDCConfigError("DOMUS_OIDC_SIGN_ALGO must name a signing algorithm (RS256, ES256, HS256).")
    config: dict[str, Any] = {name: given[env] for env, name in ENDPOINTS.items()}
    config.update(
        OIDC_RP_CLIENT_ID=given["DOMUS_OIDC_CLIENT_ID"],
        OIDC_RP_CLIENT_SECRET=given["DOMUS_OIDC_CLIENT_SECRET"],
        OIDC_RP_SIGN_ALGO=algo,
        OIDC_RP_SCOPES=given.get("DOMUS_OIDC_SCOPES", "openid email profile"),
        OIDC_CREATE_USER=given.get("DOMUS_OIDC_CREATE_USERS", "1") != "0",
        OIDC_USE_PKCE=True,
        DOMUS_OIDC_ISSUER=given.get("DOMUS_OIDC_ISSUER", ""),
    )
    return config
