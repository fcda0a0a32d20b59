"""Pages: your API tokens, and the teams you can see (members, quotas and what they use)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from console.access.models import ApiToken
from console.access.permissions import PERMISSIONS
from console.access.quotas import team_usage
from console.access.selectors import team_list
from console.access.services import api_token_issue, api_token_revoke
from console.audit.services import origin_of
from console.errors import DomusError, InvalidInput
from console.params import whole_number

# The longest lifetime the page offers (about 100 years); for longer, leave the expiry empty.
MAX_TOKEN_DAYS = 36500


@login_required
def token_list_page(request: HttpRequest) -> HttpResponse:
    new_key, refused = None, False
    if request.method == "POST":
        days = request.POST.get("expires_days", "").strip()
        try:
            lifetime = whole_number(days, least=1, most=MAX_TOKEN_DAYS) if days else None
            if days and lifetime is None:
                why = f"a whole number of days from 1 to {MAX_TOKEN_DAYS}, or empty for never"
                raise InvalidInput("Invalid expiry.", fields={"expires_days": [why]})
            expires_at = timezone.now() + timedelta(days=lifetime) if lifetime else None
            _, new_key = api_token_issue(
                user=request.user,  # type: ignore[arg-type]
                name=request.POST.get("name", "").strip(),
                expires_at=expires_at,
                read_only=request.POST.get("read_only") == "on",
                permissions=request.POST.getlist("permissions"),
                origin=origin_of(request),
            )
        except DomusError as exc:
            refused = True
            messages.error(
                request, "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.fields.items()) or exc.detail
            )
    tokens = ApiToken.objects.filter(user_id=int(request.user.pk or 0)).order_by("-created_at")
    context = {"tokens": tokens, "new_key": new_key, "permissions": PERMISSIONS, "max_days": MAX_TOKEN_DAYS}
    return render(request, "access/tokens.html", context, status=400 if refused else 200)


@login_required
@require_POST
def token_revoke_page(request: HttpRequest, token_id: int) -> HttpResponse:
    token = ApiToken.objects.filter(user_id=int(request.user.pk or 0), pk=token_id).first()
    if token is not None:
        api_token_revoke(token=token, actor=request.user, origin=origin_of(request))
        messages.success(request, f"Token {token.name} ({token.prefix}…) revoked.")
    return redirect("token-list")


@login_required
def team_list_page(request: HttpRequest) -> HttpResponse:
    teams = [
        {
            "team": team,
            "usage": team_usage(team),
            "members": team.memberships.select_related("user", "role").order_by("user__username"),
        }
        for team in team_list(user=request.user)
    ]
    return render(request, "access/teams.html", {"teams": teams})
