from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.api import ApiPagination
from console.audit.services import origin_of
from hosts.api.serializers import HostAddSerializer, HostSerializer, MaintenanceSerializer
from hosts.enrolment import host_enrol, host_remove, host_rotate_secret
from hosts.models import Host
from hosts.selectors import host_list
from hosts.services import host_refresh, host_register, host_set_maintenance, require_host_manage


class HostViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet[Host]):
    serializer_class = HostSerializer
    pagination_class = ApiPagination

    def get_queryset(self) -> QuerySet[Host]:
        return host_list(user=self.request.user)

    @extend_schema(request=HostAddSerializer, responses={201: HostSerializer})
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        """Add a host: `pairing_code` (and optionally the `fingerprint` its agent printed) for a
        TLS agent, or `secret` for a loopback agent without TLS."""
        require_host_manage(request.user)
        serializer = HostAddSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        origin = origin_of(request)
        if data.get("pairing_code"):
            host = host_enrol(
                name=data["name"],
                url=data["url"],
                pairing_code=data["pairing_code"],
                fingerprint=data.get("fingerprint", ""),
                actor=request.user,
                origin=origin,
            )
        else:
            host = host_register(
                name=data["name"], url=data["url"], secret=data["secret"], actor=request.user, origin=origin
            )
        return Response(HostSerializer(host).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("force", bool, description="remove even if the agent cannot be told")],
        responses={200: dict},
    )
    def destroy(self, request: Request, *args: object, **kwargs: object) -> Response:
        """Remove a host: its agent forgets this console's secret; the console forgets the host
        and its domain records (the domains keep running on the host)."""
        host = self.get_object()
        force = request.query_params.get("force", "").lower() in ("1", "true", "yes")
        result = host_remove(host=host, force=force, actor=request.user, origin=origin_of(request))
        return Response(result, status=status.HTTP_200_OK)

    @extend_schema(request=None, responses={200: HostSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        host = host_rotate_secret(host=self.get_object(), actor=request.user, origin=origin_of(request))
        return Response(HostSerializer(host).data)

    @extend_schema(request=MaintenanceSerializer, responses={200: HostSerializer})
    @action(detail=True, methods=["post"])
    def maintenance(self, request: Request, pk: str | None = None) -> Response:
        serializer = MaintenanceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        host = host_set_maintenance(
            host=self.get_object(),
            on=serializer.validated_data["maintenance"],
            reason=serializer.validated_data["reason"],
            actor=request.user,
            origin=origin_of(request),
        )
        return Response(HostSerializer(host).data)

    @extend_schema(request=None, responses={202: dict})
    @action(detail=True, methods=["post"])
    def refresh(self, request: Request, pk: str | None = None) -> Response:
        """Re-read the host's capabilities and resources now (a job)."""
        job = host_refresh(host=self.get_object(), actor=request.user)
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)
