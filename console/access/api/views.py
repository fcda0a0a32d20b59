from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.access.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
    GrantCreateSerializer,
    GrantSerializer,
    MembershipSetSerializer,
    RoleCreateSerializer,
    RoleSerializer,
    TeamCreateSerializer,
    TeamQuotasSerializer,
    TeamSerializer,
    WhySerializer,
)
from console.access.models import ApiToken, Grant, Role, Team
from console.access.permissions import PERMISSIONS
from console.access.policy import explain, has_perm, has_site_perm, restrict
from console.access.selectors import team_list
from console.access.services import (
    QUOTA_FIELDS,
    api_token_issue,
    api_token_revoke,
    grant_create,
    grant_delete,
    membership_remove,
    membership_set,
    role_create,
    team_create,
    team_set_quotas,
)
from console.api import ApiPagination
from console.audit.services import origin_of
from console.errors import InvalidInput, NotFound
from console.params import id_param, is_id
from domains.models import Domain
from domains.selectors import domain_list
from hosts.models import Host
from hosts.selectors import host_list


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[ApiToken]):
    """Your own API tokens: list, issue (the key is shown once), revoke (DELETE)."""

    serializer_class = ApiTokenSerializer
    pagination_class = ApiPagination

    def get_queryset(self) -> QuerySet[ApiToken]:
        if not self.request.user.is_authenticated:
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user).order_by("-created_at")

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request: Request) -> Response:
        """Issue a token. Asked with a token, the new one may do no more than that token, and
        expires no later: a later expiry (or none) is capped at its expiry (`expiry_capped`)."""
        body = ApiTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        asked = body.validated_data.get("expires_at")
        token, key = api_token_issue(
            user=request.user,  # type: ignore[arg-type]
            name=body.validated_data["name"],
            expires_at=asked,
            read_only=body.validated_data["read_only"],
            permissions=list(body.validated_data["permissions"]),
            parent=request.auth if isinstance(request.auth, ApiToken) else None,
            origin=origin_of(request),
        )
        data = ApiTokenCreatedSerializer(token).data
        capped = token.expires_at != asked
        return Response({**data, "key": key, "expiry_capped": capped}, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        token = api_token_revoke(token=self.get_object(), actor=request.user, origin=origin_of(request))
        return Response(ApiTokenSerializer(token).data)


def _user_named(username: Any) -> User:
    user = get_user_model().objects.filter(username=username).first() if isinstance(username, str) else None
    if user is None:
        raise InvalidInput("Unknown user.", fields={"user": [f"no user named {username!r}"]})
    return user


def _role_named(name: Any) -> Role:
    role = Role.objects.filter(name=name).first() if isinstance(name, str) else None
    if role is None:
        raise InvalidInput("Unknown role.", fields={"role": [f"no role named {name!r}"]})
    return role


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise InvalidInput("The body must be a JSON object.")
    return dict(request.data)


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise InvalidInput(f"Invalid {key}.", fields={key: ["must be a string"]})
    return value


class TeamViewSet(viewsets.ReadOnlyModelViewSet[Team]):
    """Teams you belong to or hold a role on (all, for site admins), with quotas and usage."""

    serializer_class = TeamSerializer
    pagination_class = ApiPagination

    def get_queryset(self) -> QuerySet[Team]:
        return team_list(user=self.request.user)

    @extend_schema(request=TeamCreateSerializer, responses={201: TeamSerializer})
    def create(self, request: Request) -> Response:
        body = _body(request)
        quotas = {k: body[k] for k in QUOTA_FIELDS if k in body}
        team = team_create(
            actor=request.user, name=_text(body, "name"), quotas=quotas, origin=origin_of(request)
        )
        return Response(TeamSerializer(team).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=TeamQuotasSerializer, responses={200: TeamSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        team = self.get_object()
        team_set_quotas(actor=request.user, team=team, quotas=_body(request), origin=origin_of(request))
        return Response(TeamSerializer(team).data)

    @extend_schema(request=MembershipSetSerializer, responses={201: TeamSerializer})
    @action(detail=True, methods=["post"], url_path="members")
    def add_member(self, request: Request, pk: str | None = None) -> Response:
        body = _body(request)
        team = self.get_object()
        membership_set(
            actor=request.user,
            team=team,
            user=_user_named(body.get("user")),
            role=_role_named(body.get("role")),
            origin=origin_of(request),
        )
        return Response(TeamSerializer(team).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: TeamSerializer})
    @action(detail=True, methods=["delete"], url_path=r"members/(?P<username>[^/]+)")
    def remove_member(self, request: Request, pk: str | None = None, username: str = "") -> Response:
        team = self.get_object()
        membership_remove(
            actor=request.user, team=team, user=_user_named(username), origin=origin_of(request)
        )
        return Response(TeamSerializer(team).data)


class RoleViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[Role]):
    serializer_class = RoleSerializer
    pagination_class = ApiPagination
    queryset = Role.objects.all()

    @extend_schema(request=RoleCreateSerializer, responses={201: RoleSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = _body(request)
        permissions = body.get("permissions")
        role = role_create(
            actor=request.user,
            name=_text(body, "name"),
            permissions=permissions if isinstance(permissions, list) else [],
            description=_text(body, "description"),
            origin=origin_of(request),
        )
        return Response(RoleSerializer(role).data, status=status.HTTP_201_CREATED)


class GrantViewSet(mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet[Grant]):
    """Grants: yours, plus every grant on scopes where you may manage access."""

    serializer_class = GrantSerializer
    pagination_class = ApiPagination

    def get_queryset(self) -> QuerySet[Grant]:
        user = self.request.user
        manageable = restrict(Team.objects.all(), user, "team.manage")
        qs = Grant.objects.select_related("user", "role")
        if has_site_perm(user, "team.manage"):
            return qs
        return qs.filter(Q(user_id=user.pk) | Q(team__in=manageable) | Q(domain__team__in=manageable))

    @extend_schema(request=GrantCreateSerializer, responses={201: GrantSerializer})
    def create(self, request: Request) -> Response:
        body = _body(request)
        scope = body.get("scope", "site")
        selectors: dict[str, Callable[..., QuerySet[Any]]] = {
            "team": team_list,
            "host": host_list,
            "domain": domain_list,
        }
        if not isinstance(scope, str) or (scope != "site" and scope not in selectors):
            raise InvalidInput("Unknown scope.", fields={"scope": ["one of: site, team, host, domain"]})
        target: Team | Host | Domain | None = None
        if scope != "site":
            target_id = body.get(scope)
            if is_id(target_id):
                target = selectors[scope](user=request.user).filter(pk=target_id).first()
        if scope != "site" and target is None:
            raise InvalidInput("Unknown target.", fields={scope: [f"no {scope} with id {body.get(scope)!r}"]})
        grant = grant_create(
            actor=request.user,
            user=_user_named(body.get("user")),
            role=_role_named(body.get("role")),
            scope_obj=target,
            origin=origin_of(request),
        )
        return Response(GrantSerializer(grant).data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        grant_delete(actor=request.user, grant=self.get_object(), origin=origin_of(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WhyView(APIView):
    """GET /api/v1/access/why/?action=domain.power&domain=5: may I, and if not, what is missing."""

    @extend_schema(
        parameters=[
            OpenApiParameter("action", str, required=True, enum=list(PERMISSIONS)),
            *(
                OpenApiParameter(kind, int, description=f"on this {kind}")
                for kind in ("domain", "host", "team")
            ),
        ],
        responses={200: WhySerializer},
    )
    def get(self, request: Request) -> Response:
        action_name = request.query_params.get("action", "")
        if action_name not in PERMISSIONS:
            raise InvalidInput("Unknown action.", fields={"action": [f"one of: {', '.join(PERMISSIONS)}"]})
        errors: dict[str, list[str]] = {}
        ids = {kind: id_param(request.query_params, kind, errors) for kind in ("domain", "host", "team")}
        if errors:
            raise InvalidInput(f"Invalid {', '.join(errors)}.", fields=errors)
        obj: Any = None
        for kind, selector in (("domain", domain_list), ("host", host_list), ("team", team_list)):
            if (pk := ids[kind]) is not None:
                obj = selector(user=request.user).filter(pk=pk).first()
                if obj is None:
                    raise NotFound(f"No {kind} with id {pk}.")
        allowed = has_perm(request.user, action_name, obj)
        return Response(
            {
                "action": action_name,
                "allowed": allowed,
                "reason": "" if allowed else explain(request.user, action_name, obj),
            }
        )
