from __future__ import annotations

from collections.abc import Iterable
from types import EllipsisType
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.access.models import Team
from console.access.policy import explain, has_perm
from console.access.selectors import team_list
from console.api import ApiPagination
from console.audit.services import origin_of
from console.errors import InvalidInput, NotFound, PermissionDenied
from console.jobs.api.serializers import JobSerializer
from console.jobs.models import Job
from console.params import id_param
from domains.api.serializers import (
    AutostartSerializer,
    ConsoleTicketRequestSerializer,
    ConsoleTicketSerializer,
    DiskAttachSerializer,
    DiskOpSerializer,
    DomainAcceptedSerializer,
    DomainCreateSerializer,
    DomainSerializer,
    JobAcceptedSerializer,
    NicAttachSerializer,
    NicChangeSerializer,
    RenameSerializer,
    ResourcesSerializer,
    RetryCreateSerializer,
    VolumeSerializer,
    VolumeUpdateSerializer,
)
from domains.consoles import console_ticket_issue
from domains.disks import domain_disk_attach, domain_disk_detach, domain_disk_resize, domain_media_change
from domains.models import Domain, Volume
from domains.nics import domain_nic_attach, domain_nic_change, domain_nic_detach
from domains.placement import host_place
from domains.selectors import (
    ORDERING_CHOICES,
    domain_filter_parse,
    domain_list,
    domain_search,
    volume_list,
)
from domains.services import (
    domain_create,
    domain_delete,
    domain_power,
    domain_rename,
    domain_retry_create,
    domain_set_autostart,
    domain_set_resources,
)
from domains.specs import parse_size_mib
from domains.volumes import require_volume_manage, teams_by_id, volume_update, volume_uses
from hosts.selectors import host_list


def _placed(request: Request, data: dict[str, Any], team: Team | None) -> int:
    """The host chosen for `"host": "auto"`: most free memory among those that fit."""
    memory = parse_size_mib(data.get("memory_mib", 256), default_unit="mib")
    vcpus = data.get("vcpus", 1)
    if not isinstance(memory, int | float) or not isinstance(vcpus, int):
        raise InvalidInput("Invalid size.", fields={"memory_mib": ["must be a number of MiB or a size"]})
    mode = data.get("mode", "hvm")
    return host_place(user=request.user, memory_mib=int(memory), vcpus=vcpus, mode=str(mode), team=team).pk


def _accepted(job: Job, **extra: Any) -> Response:
    return Response({**extra, "job": JobSerializer(job).data}, status=status.HTTP_202_ACCEPTED)


LIST_PARAMETERS = [
    OpenApiParameter(
        "ordering", str, enum=ORDERING_CHOICES, description="sort key, '-' for descending (default name)"
    ),
    OpenApiParameter("host", int, description="only domains on this host"),
    OpenApiParameter("team", int, description="only domains of this team"),
    OpenApiParameter("state", str, enum=[s.value for s in Domain.State]),
    OpenApiParameter(
        "q", str, description="only domains whose name (any case) or one of whose addresses contains this"
    ),
]


class DomainViewSet(viewsets.ReadOnlyModelViewSet[Domain]):
    serializer_class = DomainSerializer
    pagination_class = ApiPagination

    @extend_schema(parameters=LIST_PARAMETERS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The domains you may see: filtered, sorted and paged by the database (what hostwatch
        recorded; no host is asked)."""
        return super().list(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Domain]:
        if self.action == "list":
            filters = domain_filter_parse(self.request.query_params)
            return domain_search(user=self.request.user, filters=filters)
        return domain_list(user=self.request.user)

    def _require(self, action_name: str, domain: Domain | None = None) -> None:
        if not has_perm(self.request.user, action_name, domain):
            raise PermissionDenied(explain(self.request.user, action_name, domain))

    @extend_schema(request=DomainCreateSerializer, responses={202: DomainAcceptedSerializer})
    def create(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise InvalidInput("The body must be a JSON object.")
        data = dict(request.data)
        host_id = data.pop("host", None)
        start = data.pop("start", False)
        team_id = data.pop("team", None)
        team = None
        if team_id is not None:
            if isinstance(team_id, int) and not isinstance(team_id, bool):
                team = team_list(user=request.user).filter(pk=team_id).first()
            if team is None:
                raise InvalidInput("Unknown team.", fields={"team": [f"no team with id {team_id!r}"]})
        if host_id == "auto":
            host_id = _placed(request, data, team)
        if not isinstance(host_id, int) or isinstance(host_id, bool):
            raise InvalidInput("Missing host.", fields={"host": ['required: the id of a host, or "auto"']})
        host = host_list(user=request.user).filter(pk=host_id).first()
        if host is None:
            raise InvalidInput("Unknown host.", fields={"host": [f"no host with id {host_id}"]})
        if not isinstance(start, bool):
            raise InvalidInput("Invalid start.", fields={"start": ["must be true or false"]})
        domain, job = domain_create(
            actor=request.user, host=host, team=team, data=data, start=start, origin=origin_of(request)
        )
        return _accepted(job, domain=DomainSerializer(domain).data)

    @extend_schema(
        parameters=[OpenApiParameter("delete_disks", bool, description="delete its volumes too")],
        responses={202: JobAcceptedSerializer},
    )
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        domain = self.get_object()
        self._require("domain.delete", domain)
        delete_disks = request.query_params.get("delete_disks", "false").lower() in (
            "1",
            "true",
            "yes",
        )
        return _accepted(
            domain_delete(
                actor=request.user, domain=domain, delete_disks=delete_disks, origin=origin_of(request)
            )
        )

    def _power(self, request: Request, name: str) -> Response:
        domain = self.get_object()
        self._require("domain.power", domain)
        return _accepted(
            domain_power(actor=request.user, domain=domain, action=name, origin=origin_of(request))
        )

    @extend_schema(request=None, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        return self._power(request, "start")

    @extend_schema(request=None, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def shutdown(self, request: Request, pk: str | None = None) -> Response:
        return self._power(request, "shutdown")

    @extend_schema(request=None, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"], url_path="force-off")
    def force_off(self, request: Request, pk: str | None = None) -> Response:
        return self._power(request, "force-off")

    @extend_schema(request=AutostartSerializer, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def autostart(self, request: Request, pk: str | None = None) -> Response:
        """Start the domain with its host, or not."""
        domain = self.get_object()
        self._require("domain.edit", domain)
        serializer = AutostartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        enabled = serializer.validated_data["enabled"]
        job = domain_set_autostart(
            actor=request.user, domain=domain, enabled=enabled, origin=origin_of(request)
        )
        return _accepted(job)

    @extend_schema(request=None, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def reboot(self, request: Request, pk: str | None = None) -> Response:
        """Ask the guest to reboot (ACPI); it keeps running throughout."""
        return self._power(request, "reboot")

    @extend_schema(request=None, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Freeze the guest's vCPUs in memory."""
        return self._power(request, "pause")

    @extend_schema(request=None, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._power(request, "resume")

    @extend_schema(request=ResourcesSerializer, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def resources(self, request: Request, pk: str | None = None) -> Response:
        """New memory and/or vCPUs: applied to the running guest where libvirt can, otherwise
        from the next boot (the job's result says which)."""
        domain = self.get_object()
        body = request.data if isinstance(request.data, dict) else {}
        unknown = set(body) - {"memory_mib", "vcpus"}
        if unknown:
            raise InvalidInput("Unknown fields.", fields={k: ["unknown field"] for k in sorted(unknown)})
        job = domain_set_resources(
            actor=request.user,
            domain=domain,
            memory_mib=body.get("memory_mib"),
            vcpus=body.get("vcpus"),
            origin=origin_of(request),
        )
        return _accepted(job)

    @extend_schema(request=DiskAttachSerializer, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def disks(self, request: Request, pk: str | None = None) -> Response:
        """Attach a new disk (`size`), an existing volume (`existing`: its path) or a CD-ROM drive
        (`device: "cdrom"`, `existing`: an ISO or nothing): hot-plugged into a running KVM guest
        where libvirt can, else from the next boot (the job's result and the domain's disks'
        `pending` say which)."""
        domain = self.get_object()
        return _accepted(
            domain_disk_attach(
                actor=request.user, domain=domain, data=request.data, origin=origin_of(request)
            )
        )

    @extend_schema(request=DiskOpSerializer, responses={202: JobAcceptedSerializer})
    @action(
        detail=True, methods=["post"], url_path=r"disks/(?P<target>[a-z]{2,5})/(?P<op>detach|media|resize)"
    )
    def disk_op(self, request: Request, pk: str | None = None, target: str = "", op: str = "") -> Response:
        """`detach` (its volume is kept), `media` (`{"path": iso}` inserts or changes a CD-ROM's
        disc, `{"path": null}` ejects it), `resize` (`{"size": "30 GiB"}`: grown, never shrunk)."""
        domain = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        origin = origin_of(request)
        if op == "detach":
            job = domain_disk_detach(actor=request.user, domain=domain, target=target, origin=origin)
        elif op == "media":
            job = domain_media_change(
                actor=request.user, domain=domain, target=target, path=data.get("path"), origin=origin
            )
        else:
            job = domain_disk_resize(
                actor=request.user, domain=domain, target=target, size=data.get("size"), origin=origin
            )
        return _accepted(job)

    @extend_schema(request=NicAttachSerializer, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def nics(self, request: Request, pk: str | None = None) -> Response:
        """Attach a network card on a virtual network or host bridge: hot-plugged into a running
        guest where libvirt can, else from the next boot (the job's result and the domain's
        `nics[].pending` say which)."""
        domain = self.get_object()
        return _accepted(
            domain_nic_attach(actor=request.user, domain=domain, data=request.data, origin=origin_of(request))
        )

    @extend_schema(request=NicChangeSerializer, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["patch"], url_path=r"nics/(?P<mac>[0-9A-Fa-f:-]{17})")
    def nic(self, request: Request, pk: str | None = None, mac: str = "") -> Response:
        """Change a card: `link` up or down (live), `source` and `name` (another network or
        bridge: live where libvirt can, else from the next boot), `mac` (only while shut off)."""
        domain = self.get_object()
        data = request.data if isinstance(request.data, dict) else None
        return _accepted(
            domain_nic_change(
                actor=request.user, domain=domain, mac=mac, data=data, origin=origin_of(request)
            )
        )

    @extend_schema(request=None, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"], url_path=r"nics/(?P<mac>[0-9A-Fa-f:-]{17})/detach")
    def nic_detach(self, request: Request, pk: str | None = None, mac: str = "") -> Response:
        """Take a card off the domain (from the running guest where it lets go, else from the
        next boot)."""
        domain = self.get_object()
        return _accepted(
            domain_nic_detach(actor=request.user, domain=domain, mac=mac, origin=origin_of(request))
        )

    @extend_schema(request=RenameSerializer, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"])
    def rename(self, request: Request, pk: str | None = None) -> Response:
        """Rename a shut-off domain."""
        domain = self.get_object()
        name = request.data.get("name") if isinstance(request.data, dict) else None
        return _accepted(
            domain_rename(actor=request.user, domain=domain, name=name, origin=origin_of(request))
        )

    @extend_schema(request=RetryCreateSerializer, responses={202: JobAcceptedSerializer})
    @action(detail=True, methods=["post"], url_path="retry-create")
    def retry_create(self, request: Request, pk: str | None = None) -> Response:
        """Try a failed create (state `failed`, its reason in `failure`) again, with the same spec."""
        domain = self.get_object()
        serializer = RetryCreateSerializer(data=request.data if isinstance(request.data, dict) else {})
        serializer.is_valid(raise_exception=True)
        start = serializer.validated_data["start"]
        return _accepted(
            domain_retry_create(actor=request.user, domain=domain, start=start, origin=origin_of(request))
        )

    @extend_schema(request=ConsoleTicketRequestSerializer, responses={201: ConsoleTicketSerializer})
    @action(detail=True, methods=["post"], url_path="console-tickets")
    def console_tickets(self, request: Request, pk: str | None = None) -> Response:
        domain = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        kind, mode = data.get("kind", "serial"), data.get("mode", "interact")
        if not isinstance(kind, str):
            raise InvalidInput("Invalid kind.", fields={"kind": ["must be a string"]})
        if not isinstance(mode, str):
            raise InvalidInput("Invalid mode.", fields={"mode": ["must be a string"]})
        ticket, key = console_ticket_issue(user=request.user, domain=domain, kind=kind, mode=mode)
        body = {
            "ticket": key,
            "url": f"/ws/console/?ticket={key}&domain={domain.pk}",
            "expires_at": ticket.expires_at,
            "mode": ticket.mode,
        }
        return Response(ConsoleTicketSerializer(body).data, status=status.HTTP_201_CREATED)

    def get_object(self) -> Domain:
        try:
            return super().get_object()
        except Http404 as exc:
            raise NotFound(f"No domain with id {self.kwargs.get('pk')}.") from exc


class VolumeViewSet(viewsets.ReadOnlyModelViewSet[Volume]):
    """Volumes and who may use them: those your teams own or are granted, the site's and its
    library on the hosts you see, and every volume of the hosts you manage (or whose every domain
    you see). Those who manage a volume's host change its owner, library flag and grants (PATCH)."""

    serializer_class = VolumeSerializer
    pagination_class = ApiPagination

    def get_queryset(self) -> QuerySet[Volume]:
        host_id = None
        if self.action == "list":
            errors: dict[str, list[str]] = {}
            host_id = id_param(self.request.query_params, "host", errors)
            if errors:
                raise InvalidInput("Invalid host.", fields=errors)
        return volume_list(user=self.request.user, host_id=host_id)

    def _data(self, volumes: Iterable[Volume], *, many: bool) -> Any:
        rows = list(volumes)
        # Which domain's disk each is: one query for the page.
        context = {**self.get_serializer_context(), "uses": volume_uses(rows, self.request.user)}
        return VolumeSerializer(rows if many else rows[0], many=many, context=context).data

    @extend_schema(parameters=[OpenApiParameter("host", int, description="only volumes of this host")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self._data(page or [], many=True))

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self._data([self.get_object()], many=False))

    @extend_schema(request=VolumeUpdateSerializer, responses={200: VolumeSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Hand the volume to another team (or to the site: null), put it in the library or take
        it out, or set the teams it is granted to. Needs host.manage on its host."""
        volume = self.get_object()
        require_volume_manage(request.user, volume)
        if not isinstance(request.data, dict):
            raise InvalidInput("The body must be a JSON object.")
        body = VolumeUpdateSerializer(data=request.data)
        unknown = sorted(set(request.data) - set(body.fields))
        if unknown:
            raise InvalidInput("Unknown fields.", fields={str(k): ["unknown field"] for k in unknown})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        team: Team | EllipsisType | None = ...
        if "team" in data:
            team = None if data["team"] is None else teams_by_id([data["team"]], field="team")[0]
        granted: list[Team] | EllipsisType = ...
        if "granted_to" in data:
            granted = teams_by_id(data["granted_to"], field="granted_to")
        volume = volume_update(
            actor=request.user,
            volume=volume,
            team=team,
            library=data.get("library", ...),
            granted_to=granted,
            origin=origin_of(request),
        )
        return Response(self._data([volume], many=False))

    def get_object(self) -> Volume:
        try:
            return super().get_object()
        except Http404 as exc:
            raise NotFound(f"No volume with id {self.kwargs.get('pk')}.") from exc
