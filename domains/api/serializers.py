from __future__ import annotations

import posixpath
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from console.access.models import Team
from console.jobs.api.serializers import JobSerializer
from console.params import MAX_ID
from domains.models import Domain, Volume
from domains.volumes import VolumeUse


class DomainSerializer(serializers.ModelSerializer[Domain]):
    state_label = serializers.CharField(source="get_state_display", read_only=True)
    # The list sorts by host name (?ordering=host): say it, not only the host's id.
    host_name = serializers.CharField(source="host.name", read_only=True)

    class Meta:
        model = Domain
        fields = [
            "id",
            "uuid",
            "name",
            "host",
            "host_name",
            "team",
            "vcpus",
            "memory_mib",
            "state",
            "state_label",
            "failure",
            "autostart",
            "disks",
            "nics",
            "addresses",
            "spec",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class DiskInputSerializer(serializers.Serializer[Any]):
    size_gib = serializers.CharField(required=False, help_text="GiB, or a size such as '512 MiB'")
    format = serializers.ChoiceField(choices=["qcow2", "raw"], required=False)
    pool = serializers.CharField(required=False, help_text="a storage pool of the host (default: default)")
    allocation = serializers.ChoiceField(choices=["sparse", "preallocated"], required=False)
    bus = serializers.ChoiceField(choices=["virtio", "sata", "scsi", "ide", "xen"], required=False)
    existing = serializers.CharField(required=False, help_text="use this volume as is")
    backing = serializers.CharField(required=False, help_text="a new qcow2 disk on this base image")


class NicInputSerializer(serializers.Serializer[Any]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `source` is also an attribute of every DRF field: declare it here, not as a class attribute.
        self.fields["source"] = serializers.ChoiceField(choices=["network", "bridge"], required=False)

    name = serializers.CharField(required=False, help_text="the virtual network or host bridge")
    model = serializers.ChoiceField(
        choices=["virtio", "e1000", "e1000e", "rtl8139", "netfront"], required=False
    )
    mac = serializers.CharField(required=False, help_text="generated when absent")


class BootInputSerializer(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(choices=["iso", "cdrom", "url", "pxe", "kernel", "disk", "bootloader"])
    iso = serializers.CharField(required=False)
    device = serializers.CharField(required=False, help_text="cdrom: the host's drive, e.g. /dev/sr0")
    url = serializers.CharField(required=False, help_text="url: the installer tree")
    kernel = serializers.CharField(required=False)
    initrd = serializers.CharField(required=False)
    cmdline = serializers.CharField(required=False)
    cloud_init = serializers.DictField(
        required=False, help_text="disk: hostname, user, password, ssh_authorized_keys"
    )


class DomainCreateSerializer(serializers.Serializer[Any]):
    """Documents the create body; the spec itself is validated by `agent.protocol.DomainSpec`
    and checked against the host by `domains.specs.build_spec`."""

    name = serializers.CharField()
    host = serializers.CharField(help_text='the id of a host, or "auto"')
    team = serializers.IntegerField(required=False, help_text="Defaults to your only team")
    mode = serializers.ChoiceField(choices=["hvm", "pv", "pvh"], required=False)
    os = serializers.CharField(required=False, help_text="an id of the OS catalog, e.g. debian12, win11")
    vcpus = serializers.IntegerField(required=False)
    memory_mib = serializers.CharField(required=False, help_text="MiB, or a size such as '2 GiB'")
    disks = DiskInputSerializer(many=True, required=False)
    nics = NicInputSerializer(many=True, required=False)
    boot = BootInputSerializer()
    graphics = serializers.BooleanField(required=False)
    serial = serializers.BooleanField(required=False)
    clock = serializers.ChoiceField(choices=["utc", "localtime"], required=False)
    autostart = serializers.BooleanField(required=False)
    start = serializers.BooleanField(required=False, default=False)


class ConsoleTicketRequestSerializer(serializers.Serializer[Any]):
    kind = serializers.CharField(default="serial")
    mode = serializers.ChoiceField(
        choices=["view", "interact"], default="interact", help_text="view: watch only; interact: type too"
    )


class ConsoleTicketSerializer(serializers.Serializer[Any]):
    ticket = serializers.CharField()
    mode = serializers.CharField()
    url = serializers.CharField()
    expires_at = serializers.DateTimeField()


class AutostartSerializer(serializers.Serializer[Any]):
    enabled = serializers.BooleanField()


class ResourcesSerializer(serializers.Serializer[Any]):
    memory_mib = serializers.CharField(required=False, help_text="MiB, or a size such as '2 GiB'")
    vcpus = serializers.IntegerField(required=False, min_value=1)


class RenameSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=63)


class RetryCreateSerializer(serializers.Serializer[Any]):
    start = serializers.BooleanField(default=False, help_text="start the domain once it is defined")


class JobAcceptedSerializer(serializers.Serializer[Any]):
    """202: the job that will do it (follow it at /api/v1/jobs/{id}/ or by its events)."""

    job = JobSerializer()


class DomainAcceptedSerializer(JobAcceptedSerializer):
    """202: the domain as recorded (state `new`), and the job that defines it on its host."""

    domain = DomainSerializer()


class TeamRefSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class DomainRefSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


def _team_ref(team: Team) -> dict[str, Any]:
    return {"id": team.pk, "name": team.name}


class VolumeSerializer(serializers.ModelSerializer[Volume]):
    """A volume and who may use it. `domain` is the domain whose disk it is, when you may see
    that domain; `in_use` says whether some domain's disk it is at all (one you may not see, too)."""

    # Each volume's use comes in the context (`uses`: domains.volumes.volume_uses), found for a
    # whole page at once.

    host_name = serializers.CharField(source="host.name", read_only=True)
    name = serializers.SerializerMethodField()
    team = serializers.SerializerMethodField()
    granted_to = serializers.SerializerMethodField()
    domain = serializers.SerializerMethodField()
    in_use = serializers.SerializerMethodField()

    class Meta:
        model = Volume
        fields = [
            "id",
            "host",
            "host_name",
            "path",
            "name",
            "team",
            "library",
            "granted_to",
            "domain",
            "in_use",
            "created_at",
        ]
        read_only_fields = fields

    def get_name(self, volume: Volume) -> str:
        return posixpath.basename(volume.path)

    @extend_schema_field(TeamRefSerializer(allow_null=True, help_text="its owner; null: the site's"))
    def get_team(self, volume: Volume) -> dict[str, Any] | None:
        return _team_ref(volume.team) if volume.team is not None else None

    @extend_schema_field(TeamRefSerializer(many=True))
    def get_granted_to(self, volume: Volume) -> list[dict[str, Any]]:
        return [_team_ref(t) for t in sorted(volume.granted_to.all(), key=lambda t: t.name)]

    def _use(self, volume: Volume) -> VolumeUse:
        return (self.context.get("uses") or {}).get(volume.pk) or VolumeUse()

    @extend_schema_field(DomainRefSerializer(allow_null=True, help_text="the domain whose disk it is"))
    def get_domain(self, volume: Volume) -> dict[str, Any] | None:
        domain = self._use(volume).domain
        return {"id": domain.pk, "name": domain.name} if domain is not None else None

    def get_in_use(self, volume: Volume) -> bool:
        return self._use(volume).in_use


class VolumeUpdateSerializer(serializers.Serializer[Any]):
    """Any of the three; what is left out stays as it is."""

    team = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_ID,
        help_text="its owner; null: the site's",
    )
    library = serializers.BooleanField(
        required=False, help_text="in the site's library: read-only media for every team"
    )
    granted_to = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        required=False,
        max_length=1000,
        help_text="the teams that use it as its owner does, besides its owner (replaces the list)",
    )


class DiskAttachSerializer(serializers.Serializer[Any]):
    size = serializers.CharField(required=False, help_text='a new disk: a number of GiB, or e.g. "512 MiB"')
    pool = serializers.CharField(
        required=False, help_text="where a new disk goes (default: the host's default)"
    )
    format = serializers.ChoiceField(choices=["qcow2", "raw"], required=False)
    allocation = serializers.ChoiceField(choices=["sparse", "preallocated"], required=False)
    bus = serializers.ChoiceField(choices=["virtio", "sata", "scsi", "ide", "xen"], required=False)
    existing = serializers.CharField(
        required=False, help_text="an existing volume's path (or an ISO for a cdrom)"
    )
    device = serializers.ChoiceField(choices=["disk", "cdrom"], required=False)


class NicAttachSerializer(serializers.Serializer[Any]):
    source = serializers.ChoiceField(  # type: ignore[assignment]  # a field named as Field's attribute
        choices=["network", "bridge"], default="network"
    )
    name = serializers.CharField(help_text="the host's virtual network or bridge")
    model = serializers.ChoiceField(
        choices=["virtio", "e1000e", "e1000", "rtl8139", "netfront"], required=False
    )
    mac = serializers.CharField(required=False, help_text="52:54:00:12:34:56; a new one when left out")


class NicChangeSerializer(serializers.Serializer[Any]):
    link = serializers.ChoiceField(choices=["up", "down"], required=False)
    source = serializers.ChoiceField(  # type: ignore[assignment]  # a field named as Field's attribute
        choices=["network", "bridge"], required=False, help_text="with name"
    )
    name = serializers.CharField(required=False, help_text="another network or bridge to join")
    mac = serializers.CharField(required=False, help_text="a new MAC (only while shut off)")


class DiskOpSerializer(serializers.Serializer[Any]):
    path = serializers.CharField(required=False, allow_null=True, help_text="media: the ISO; null ejects")
    size = serializers.CharField(required=False, help_text="resize: the new, larger size")
