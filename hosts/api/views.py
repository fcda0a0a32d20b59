from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.api import ApiPagination
from console.audit.services import origin_of
from hosts.api.serializers import (
    HostAddSerializer,
    HostSerializer,
    MaintenanceSerializer,
    NetworkAutostartSerializer,
    NetworkCreateSerializer,
    NetworkDhcpSerializer,
    NetworkSerializer,
    NetworkTeamsSerializer,
    OrphansDeleteSerializer,
    OrphanVolumeSerializer,
    PoolAutostartSerializer,
    PoolCreateSerializer,
    PoolSerializer,
    PoolVolumePageSerializer,
    VolumeActionSerializer,
    VolumeCreateSerializer,
)
from hosts.enrolment import host_enrol, host_remove, host_rotate_secret
from hosts.models import Host
from hosts.networks import (
    network_action,
    network_create,
    network_dhcp_update,
    network_rows,
    network_teams_set,
)
from hosts.pool_volumes import orphans, orphans_delete, volume_action, volume_create, volume_rows
from hosts.pools import pool_action, pool_create, pool_rows
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

    @extend_schema(methods=["GET"], responses={200: PoolSerializer(many=True)})
    @extend_schema(methods=["POST"], request=PoolCreateSerializer, responses={202: dict})
    @action(detail=True, methods=["get", "post"], pagination_class=None)  # a host has few pools
    def pools(self, request: Request, pk: str | None = None) -> Response:
        """GET: the host's storage pools. POST: define one (and, unless told not to, start it
        and mark it autostart): a job, for `host.manage` holders."""
        host = self.get_object()
        if request.method == "GET":
            return Response(pool_rows(request.user, host))
        job = pool_create(actor=request.user, host=host, data=request.data, origin=origin_of(request))
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(methods=["GET"], responses={200: PoolSerializer})
    @extend_schema(
        methods=["DELETE"],
        parameters=[
            OpenApiParameter(
                "delete_storage",
                bool,
                description="also remove what the pool's build made (an empty directory, a volume group)",
            )
        ],
        responses={202: dict},
    )
    @action(detail=True, methods=["get", "delete"], url_path=r"pools/(?P<pool>[A-Za-z0-9_.-]{1,64})")
    def pool(self, request: Request, pk: str | None = None, pool: str = "") -> Response:
        """GET: one pool. DELETE: stop and remove it (refused while a domain has a disk in it)."""
        host = self.get_object()
        if request.method == "GET":
            for row in pool_rows(request.user, host):
                if row["name"] == pool:
                    return Response(row)
            return Response({"detail": f"{host.name} has no storage pool {pool!r}."}, status=404)
        flag = request.query_params.get("delete_storage", "").lower()
        if flag not in ("", "0", "1", "true", "false", "yes", "no"):
            return Response({"detail": "delete_storage must be true or false."}, status=400)
        job = pool_action(
            actor=request.user,
            host=host,
            name=pool,
            action="delete",
            delete_storage=flag in ("1", "true", "yes"),
            origin=origin_of(request),
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=PoolAutostartSerializer, responses={202: dict})
    @action(
        detail=True,
        methods=["post"],
        url_path=r"pools/(?P<pool>[A-Za-z0-9_.-]{1,64})/(?P<op>start|stop|refresh|autostart)",
    )
    def pool_op(self, request: Request, pk: str | None = None, pool: str = "", op: str = "") -> Response:
        """start, stop (refused while a running domain uses it), refresh (re-read its volumes),
        or autostart (`{"autostart": true|false}`): a job."""
        host = self.get_object()
        job = pool_action(
            actor=request.user,
            host=host,
            name=pool,
            action=op,
            autostart=request.data.get("autostart") if isinstance(request.data, dict) else None,
            origin=origin_of(request),
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(methods=["GET"], responses={200: NetworkSerializer(many=True)})
    @extend_schema(methods=["POST"], request=NetworkCreateSerializer, responses={202: dict})
    @action(detail=True, methods=["get", "post"], pagination_class=None)  # a host has few networks
    def networks(self, request: Request, pk: str | None = None) -> Response:
        """GET: the host's virtual networks, with the domains attached. POST: define one (and,
        unless told not to, start it and mark it autostart): a job, for `host.manage` holders."""
        host = self.get_object()
        if request.method == "GET":
            return Response(network_rows(request.user, host))
        job = network_create(actor=request.user, host=host, data=request.data, origin=origin_of(request))
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(methods=["GET"], responses={200: NetworkSerializer})
    @extend_schema(methods=["DELETE"], responses={202: dict})
    @action(detail=True, methods=["get", "delete"], url_path=r"networks/(?P<network>[A-Za-z0-9_.-]{1,64})")
    def network(self, request: Request, pk: str | None = None, network: str = "") -> Response:
        """GET: one network. DELETE: stop and remove it (refused while a running domain is
        attached to it)."""
        host = self.get_object()
        if request.method == "GET":
            for row in network_rows(request.user, host):
                if row["name"] == network:
                    return Response(row)
            return Response({"detail": f"{host.name} has no virtual network {network!r}."}, status=404)
        job = network_action(
            actor=request.user, host=host, name=network, action="delete", origin=origin_of(request)
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=NetworkAutostartSerializer, responses={202: dict})
    @action(
        detail=True,
        methods=["post"],
        url_path=r"networks/(?P<network>[A-Za-z0-9_.-]{1,64})/(?P<op>start|stop|autostart)",
    )
    def network_op(
        self, request: Request, pk: str | None = None, network: str = "", op: str = ""
    ) -> Response:
        """start, stop (refused while a running domain is attached) or autostart
        (`{"autostart": true|false}`): a job."""
        host = self.get_object()
        job = network_action(
            actor=request.user,
            host=host,
            name=network,
            action=op,
            autostart=request.data.get("autostart") if isinstance(request.data, dict) else None,
            origin=origin_of(request),
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=NetworkTeamsSerializer, responses={200: NetworkTeamsSerializer})
    @action(detail=True, methods=["put"], url_path=r"networks/(?P<network>[A-Za-z0-9_.-]{1,64})/teams")
    def network_teams(self, request: Request, pk: str | None = None, network: str = "") -> Response:
        """Keep the network for these teams (`{"teams": [3, 5]}`): only their domains (and the
        host's managers) may put cards on it; `[]` opens it to every team that may use the host."""
        host = self.get_object()
        teams = request.data.get("teams") if isinstance(request.data, dict) else None
        kept = network_teams_set(
            actor=request.user, host=host, name=network, team_ids=teams, origin=origin_of(request)
        )
        return Response({"teams": kept})

    @extend_schema(request=NetworkDhcpSerializer, responses={202: dict})
    @action(detail=True, methods=["put"], url_path=r"networks/(?P<network>[A-Za-z0-9_.-]{1,64})/dhcp")
    def network_dhcp(self, request: Request, pk: str | None = None, network: str = "") -> Response:
        """Replace the network's DHCP range and static hosts (MAC -> IP, name): a job, applied to
        the running network as well as to its definition."""
        host = self.get_object()
        job = network_dhcp_update(
            actor=request.user, host=host, name=network, data=request.data, origin=origin_of(request)
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        methods=["GET"],
        parameters=[OpenApiParameter("limit", int), OpenApiParameter("offset", int)],
        responses={200: PoolVolumePageSerializer},
    )
    @extend_schema(methods=["POST"], request=VolumeCreateSerializer, responses={202: dict})
    @action(detail=True, methods=["get", "post"], url_path=r"pools/(?P<pool>[A-Za-z0-9_.-]{1,64})/volumes")
    def volumes(self, request: Request, pk: str | None = None, pool: str = "") -> Response:
        """GET: the pool's volumes now (asked of the host's agent), each with its format, size,
        kind, owner and the domains using it; orphans (a deleted domain's kept disks) say so.
        POST: a new empty volume (`name`, `size` such as "20 GiB", `format` qcow2|raw,
        `allocation` sparse|preallocated): a job, for those who manage the host."""
        host = self.get_object()
        if request.method == "GET":
            params = request.query_params
            page = volume_rows(
                user=request.user,
                host=host,
                pool=pool,
                limit=params.get("limit"),
                offset=params.get("offset"),
            )
            return Response(page)
        job = volume_create(
            actor=request.user, host=host, pool=pool, data=request.data, origin=origin_of(request)
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: dict})
    @action(
        detail=True,
        methods=["delete"],
        url_path=r"pools/(?P<pool>[A-Za-z0-9_.-]{1,64})/volumes/(?P<volume>[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254})",
    )
    def volume(self, request: Request, pk: str | None = None, pool: str = "", volume: str = "") -> Response:
        """Delete a volume: refused while any domain uses it (naming them)."""
        job = volume_action(
            actor=request.user,
            host=self.get_object(),
            pool=pool,
            name=volume,
            action="delete",
            origin=origin_of(request),
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=VolumeActionSerializer, responses={202: dict})
    @action(
        detail=True,
        methods=["post"],
        url_path=(
            r"pools/(?P<pool>[A-Za-z0-9_.-]{1,64})/volumes/"
            r"(?P<volume>[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254})/(?P<op>resize|clone)"
        ),
    )
    def volume_op(
        self, request: Request, pk: str | None = None, pool: str = "", volume: str = "", op: str = ""
    ) -> Response:
        """resize (grow to `size`; live through the running domain that uses it, else from its
        next boot) or clone (a full copy named `name` in the same pool; not while a running
        domain writes it): a job."""
        job = volume_action(
            actor=request.user,
            host=self.get_object(),
            pool=pool,
            name=volume,
            action=op,
            data=request.data,
            origin=origin_of(request),
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(methods=["GET"], responses={200: OrphanVolumeSerializer(many=True)})
    @extend_schema(methods=["POST"], request=OrphansDeleteSerializer, responses={202: dict})
    @action(detail=True, methods=["get", "post"], pagination_class=None)  # at most MAX_ORPHANS
    def orphans(self, request: Request, pk: str | None = None) -> Response:
        """GET: volumes that outlived the domains that had them (their deletes kept the disks)
        and that no domain uses now. POST: remove them, all (`{}`) or some (`{"ids": [...]}`),
        in one job."""
        host = self.get_object()
        if request.method == "GET":
            rows = orphans(user=request.user, host=host)
            return Response([{"id": v.pk, "path": v.path, "formerly": v.domain_name} for v in rows])
        ids = request.data.get("ids") if isinstance(request.data, dict) else None
        job = orphans_delete(actor=request.user, host=host, ids=ids, origin=origin_of(request))
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)
