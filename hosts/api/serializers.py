from __future__ import annotations

from typing import Any

from rest_framework import serializers

from agent.protocol import format_fingerprint
from hosts.models import Host, Upload


class HostSerializer(serializers.ModelSerializer[Host]):
    fingerprint = serializers.SerializerMethodField()
    capabilities = serializers.SerializerMethodField()
    resources = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "url",
            "uses_tls",
            "fingerprint",
            "state",
            "state_detail",
            "maintenance",
            "maintenance_reason",
            "last_seen_at",
            "facts",
            "capabilities",
            "resources",
            "stats",
            "stats_at",
            "created_at",
        ]
        read_only_fields = fields

    def get_fingerprint(self, host: Host) -> str:
        return format_fingerprint(host.fingerprint) if host.fingerprint else ""

    def get_capabilities(self, host: Host) -> dict[str, Any] | None:
        caps = host.facts.get("capabilities")
        return dict(caps) if caps else None

    def get_resources(self, host: Host) -> dict[str, Any] | None:
        resources = host.facts.get("resources")
        return self._visible(host, dict(resources)) if resources else None

    def _visible(self, host: Host, resources: dict[str, Any]) -> dict[str, Any] | None:
        """Without the volumes of teams the caller cannot see (domains.volumes)."""
        from domains.volumes import visible_resources

        request = self.context.get("request")
        return visible_resources(getattr(request, "user", None), host, resources)

    def to_representation(self, instance: Host) -> dict[str, Any]:
        data = super().to_representation(instance)
        facts = data.get("facts")
        if isinstance(facts, dict) and isinstance(facts.get("resources"), dict):
            data["facts"] = {**facts, "resources": data.get("resources")}  # the same, filtered
        return data


class HostAddSerializer(serializers.Serializer[Any]):
    """Either a pairing code (TLS agents, the normal case) or a fixed secret (loopback agents)."""

    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", max_length=63)
    url = serializers.URLField(max_length=255)
    pairing_code = serializers.CharField(required=False, max_length=32)
    fingerprint = serializers.CharField(required=False, allow_blank=True, max_length=120)
    secret = serializers.CharField(required=False, write_only=True, min_length=16, max_length=256)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("pairing_code")) == bool(attrs.get("secret")):
            raise serializers.ValidationError(
                {
                    "pairing_code": "give the pairing code `domus-agent init` printed (or, for a "
                    "loopback agent without TLS, its fixed secret instead)"
                }
            )
        return attrs


class MaintenanceSerializer(serializers.Serializer[Any]):
    maintenance = serializers.BooleanField()
    reason = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")


class PoolSerializer(serializers.Serializer[Any]):
    """A storage pool as the host's agent last reported it, and the domains with disks in it."""

    name = serializers.CharField()
    type = serializers.CharField(help_text="dir, fs, netfs, logical, disk, iscsi, scsi, zfs, gluster ...")
    state = serializers.CharField(help_text="inactive, building, running, degraded or inaccessible")
    active = serializers.BooleanField()
    autostart = serializers.BooleanField()
    persistent = serializers.BooleanField()
    path = serializers.CharField(allow_null=True, help_text="its target: a directory, or /dev/<vg> for LVM")
    source = serializers.CharField(  # type: ignore[assignment]  # a field named as Field's attribute
        help_text="where its storage comes from, e.g. nfs1:/export"
    )
    capacity_bytes = serializers.IntegerField()
    allocation_bytes = serializers.IntegerField()
    available_bytes = serializers.IntegerField()
    volume_count = serializers.IntegerField(allow_null=True, help_text="null while inactive")
    used_by = serializers.ListField(
        child=serializers.CharField(), help_text="the domains with a disk in it (those the caller may see)"
    )
    used_by_others = serializers.IntegerField(help_text="how many more, of teams the caller cannot see")
    agents_own = serializers.BooleanField(
        help_text="the pool at the agent's --pool-path (ISOs, seeds, new disks): never stopped or deleted"
    )
    used_pct = serializers.IntegerField()


class PoolCreateSerializer(serializers.Serializer[Any]):
    """A pool to define; what each type needs is in the README (and refused by name when missing
    or not used by the type). The agent's PoolSpec validates it."""

    name = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,64}$")
    type = serializers.ChoiceField(
        choices=["dir", "fs", "netfs", "logical", "disk", "iscsi", "scsi", "zfs", "gluster"]
    )
    target_path = serializers.CharField(required=False, help_text="dir, fs, netfs: the directory")
    source_host = serializers.CharField(required=False, help_text="netfs, iscsi, gluster: the server")
    source_dir = serializers.CharField(required=False, help_text="netfs: the export; gluster: a directory")
    source_name = serializers.CharField(
        required=False, help_text="logical: the VG; zfs: the zpool; iscsi: the IQN"
    )
    source_devices = serializers.ListField(child=serializers.CharField(), required=False)
    source_format = serializers.CharField(required=False, help_text="fs/netfs: file system; disk: label")
    adapter = serializers.CharField(required=False, help_text="scsi: the host adapter, e.g. host0")
    build = serializers.BooleanField(
        required=False, help_text="make its storage (fs, logical: erases devices)"
    )
    start = serializers.BooleanField(required=False, default=True)
    autostart = serializers.BooleanField(required=False, default=True)


class PoolAutostartSerializer(serializers.Serializer[Any]):
    autostart = serializers.BooleanField()


class DhcpHostSerializer(serializers.Serializer[Any]):
    mac = serializers.CharField(help_text="52:54:00:12:34:56")
    ip = serializers.IPAddressField(protocol="IPv4")
    name = serializers.CharField(required=False, allow_null=True, help_text="a host name for DNS")


class NetworkTeamSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class NetworkTeamsSerializer(serializers.Serializer[Any]):
    teams = serializers.ListField(
        child=serializers.IntegerField(), help_text="the teams that may use it; [] for every team"
    )


class NetworkSerializer(serializers.Serializer[Any]):
    """A virtual network as the host's agent last reported it, and the domains attached."""

    name = serializers.CharField()
    mode = serializers.CharField(help_text="nat, route, open, isolated, bridge (or what virsh made)")
    mode_label = serializers.CharField()
    active = serializers.BooleanField()
    autostart = serializers.BooleanField()
    persistent = serializers.BooleanField()
    bridge = serializers.CharField(allow_null=True, help_text="its bridge (bridge mode: the host bridge)")
    ipv4 = serializers.CharField(allow_null=True, help_text="the host's address on it, 192.168.122.1/24")
    ipv6 = serializers.CharField(allow_null=True)
    forward_dev = serializers.CharField(allow_null=True, help_text="the host interface it forwards through")
    dhcp_start = serializers.CharField(allow_null=True)
    dhcp_end = serializers.CharField(allow_null=True)
    hosts = DhcpHostSerializer(many=True, help_text="static DHCP entries")
    attached = serializers.ListField(
        child=serializers.CharField(), help_text="the domains with a card on it (those the caller may see)"
    )
    attached_others = serializers.IntegerField(help_text="how many more, of teams the caller cannot see")
    running_attached = serializers.IntegerField(help_text="how many attached domains run")
    teams = NetworkTeamSerializer(many=True, help_text="kept for these teams; [] open to every team")


class NetworkDhcpSerializer(serializers.Serializer[Any]):
    """A network's DHCP range (both ends or neither) and static hosts, replacing what it has."""

    dhcp_start = serializers.IPAddressField(protocol="IPv4", required=False, allow_null=True)
    dhcp_end = serializers.IPAddressField(protocol="IPv4", required=False, allow_null=True)
    hosts = DhcpHostSerializer(many=True, required=False)


class NetworkCreateSerializer(NetworkDhcpSerializer):
    """A network to define; what each mode takes is in the README (a field a mode does not use is
    refused by name). The agent's NetworkSpec validates it."""

    name = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,64}$")
    mode = serializers.ChoiceField(choices=["nat", "route", "open", "isolated", "bridge"], default="nat")
    bridge = serializers.CharField(
        required=False, help_text="bridge mode: the host bridge to join; else the name libvirt gives its own"
    )
    ipv4 = serializers.CharField(required=False, help_text="the host's address and prefix: 192.168.150.1/24")
    ipv6 = serializers.CharField(required=False, help_text="fd00:150::1/64")
    forward_dev = serializers.CharField(required=False, help_text="nat, route: through this interface")
    start = serializers.BooleanField(required=False, default=True)
    autostart = serializers.BooleanField(required=False, default=True)


class NetworkAutostartSerializer(serializers.Serializer[Any]):
    autostart = serializers.BooleanField()


class PoolVolumeSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    path = serializers.CharField()
    format = serializers.CharField(help_text="qcow2, raw, iso ...")
    kind = serializers.ChoiceField(choices=["iso", "disk", "cloud-image", "other"])
    capacity_bytes = serializers.IntegerField()
    allocation_bytes = serializers.IntegerField()
    backing = serializers.CharField(allow_null=True, help_text="the image a qcow2 overlay is layered on")
    id = serializers.IntegerField(allow_null=True, help_text="its record in /api/v1/volumes/, if it has one")
    owner = serializers.CharField(allow_null=True, help_text="the team it belongs to; null: the site's")
    library = serializers.BooleanField()
    used_by = serializers.ListField(child=serializers.CharField())
    used_by_others = serializers.IntegerField()
    running_users = serializers.IntegerField()
    orphan = serializers.BooleanField(help_text="a deleted domain's disk that no domain uses")
    formerly = serializers.CharField(help_text="the domain an orphan belonged to")


class PoolVolumePageSerializer(serializers.Serializer[Any]):
    pool = serializers.CharField()
    total = serializers.IntegerField(help_text="every volume of the pool, hidden ones included")
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    results = PoolVolumeSerializer(many=True)


class VolumeCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    size = serializers.CharField(help_text='a number of GiB, or a size such as "512 MiB"')
    format = serializers.ChoiceField(choices=["qcow2", "raw"], required=False)
    allocation = serializers.ChoiceField(choices=["sparse", "preallocated"], required=False)


class VolumeActionSerializer(serializers.Serializer[Any]):
    size = serializers.CharField(required=False, help_text="resize: the new, larger size")
    name = serializers.CharField(required=False, help_text="clone: the copy's name")


class OrphanVolumeSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    path = serializers.CharField()
    formerly = serializers.CharField()


class OrphansDeleteSerializer(serializers.Serializer[Any]):
    ids = serializers.ListField(child=serializers.IntegerField(), required=False)


class UploadSerializer(serializers.ModelSerializer["Upload"]):
    host = serializers.IntegerField(source="host_id", read_only=True)
    team = serializers.CharField(source="team.name", read_only=True, default=None)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    url = serializers.SerializerMethodField(
        help_text="where to send the bytes (PATCH) and ask the offset (HEAD)"
    )

    class Meta:
        model = Upload
        fields = [
            "id",
            "url",
            "host",
            "pool",
            "name",
            "filename",
            "source",
            "source_url",
            "length",
            "offset",
            "state",
            "sha256",
            "expected_sha256",
            "path",
            "error",
            "team",
            "library",
            "created_by",
            "job",
            "created_at",
            "updated_at",
            "completed_at",
        ]
        read_only_fields = fields

    def get_url(self, upload: Upload) -> str:
        return f"/api/v1/uploads/{upload.pk.hex}/"


class UploadCreateSerializer(serializers.Serializer[Any]):
    """The JSON form of a creation; tus clients send Upload-Length and Upload-Metadata instead
    (keys host, pool, name, filename, team, library; values base64)."""

    host = serializers.IntegerField()
    pool = serializers.CharField()
    name = serializers.CharField(required=False, help_text="the volume's name (default: filename)")
    filename = serializers.CharField(required=False)
    length = serializers.IntegerField(help_text="bytes; or the Upload-Length header")
    team = serializers.IntegerField(required=False, help_text="the team the volume is for")
    library = serializers.BooleanField(required=False, help_text="the site's read-only media (host managers)")


class UploadFetchSerializer(serializers.Serializer[Any]):
    host = serializers.IntegerField()
    pool = serializers.CharField()
    url = serializers.CharField(help_text="http, https or ftp")
    name = serializers.CharField(required=False, help_text="the volume's name (default: the URL's last part)")
    sha256 = serializers.CharField(required=False, help_text="expected SHA-256: a mismatch fails the fetch")
    max_bytes = serializers.IntegerField(required=False, help_text="refuse a larger file (default 64 GiB)")
    team = serializers.IntegerField(required=False)
    library = serializers.BooleanField(required=False)
