from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from console.access.policy import explain, has_site_perm
from console.audit.services import origin_of
from console.errors import PermissionDenied
from hosts.api.serializers import HostSerializer
from hosts.models import Host
from hosts.selectors import host_list
from hosts.services import host_register


class HostViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[Host]):
    serializer_class = HostSerializer

    def get_queryset(self) -> QuerySet[Host]:
        return host_list(user=self.request.user)

    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        if not has_site_perm(request.user, "host.manage"):
            raise PermissionDenied(explain(request.user, "host.manage"))
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        host = host_register(actor=request.user, origin=origin_of(request), **serializer.validated_data)
        return Response(self.get_serializer(host).data, status=status.HTTP_201_CREATED)
