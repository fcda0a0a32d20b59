"""The OpenID Connect authentication backend (loaded only when DOMUS_OIDC_* is configured).

Users are matched by email: the provider's `email` claim is compared, case-insensitively, with
the users' email addresses. One match signs that user in; none creates a user (unless
DOMUS_OIDC_CREATE_USERS=0) whose username is the email's local part (made unique with a number)
and who has no grants, so sees nothing until an admin grants a role; several matches refuse
the sign-in. A claim set whose `email_verified` is false is refused, so that an account at the
provider cannot claim someone else's address. A user with a TOTP device is still asked for the
code (console.access.login.middleware) after the provider signs them in.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from mozilla_django_oidc.auth import OIDCAuthenticationBackend


def _username_for(email: str) -> str:
    user_model = get_user_model()
    base = (email.split("@", 1)[0] or "user")[:140]
    candidate, n = base, 1
    while user_model._default_manager.filter(username__iexact=candidate).exists():
        n += 1
        candidate = f"{base}{n}"
    return candidate


class DomusOIDCBackend(OIDCAuthenticationBackend):  # type: ignore[misc]  # untyped library
    def verify_claims(self, claims: dict[str, Any]) -> bool:
        if not claims.get("email"):
            return False
        return str(claims.get("email_verified", True)).lower() != "false"

    def create_user(self, claims: dict[str, Any]) -> Any:
        email = str(claims["email"])
        return self.UserModel.objects.create_user(_username_for(email), email=email)
