from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from console.access.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
)
from console.access.models import ApiToken
from console.access.services import api_token_issue, api_token_revoke
from console.audit.services import origin_of
from console.errors import PermissionDenied


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[ApiToken]):
    """Your own API tokens: list, issue (the key is shown once), revoke (DELETE)."""

    serializer_class = ApiTokenSerializer

    def get_queryset(self) -> QuerySet[ApiToken]:
        if not self.request.user.is_authenticated:
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user).order_by("-created_at")

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request: Request) -> Response:
        body = ApiTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        permissions = list(body.validated_data["permissions"])
        using = request.auth
        # A token may only mint tokens that can do no more than itself.
        if isinstance(using, ApiToken):
            if using.permissions and not (permissions and set(permissions) <= set(using.permissions)):
                raise PermissionDenied(
                    "A token limited to some permissions can only issue tokens limited to them."
                )
            if using.expires_at and not body.validated_data.get("expires_at"):
                raise PermissionDenied("A token that expires can only issue tokens that expire.")
        token, key = api_token_issue(
            user=request.user,  # type: ignore[arg-type]
            name=body.validated_data["name"],
            expires_at=body.validated_data.get("expires_at"),
            read_only=body.validated_data["read_only"],
            permissions=permissions,
            origin=origin_of(request),
        )
        data = ApiTokenCreatedSerializer(token).data
        return Response({**data, "key": key}, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        token = api_token_revoke(token=self.get_object(), actor=request.user, origin=origin_of(request))
        return Response(ApiTokenSerializer(token).data)
