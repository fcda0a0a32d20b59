from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from console.access import views as access_views
from console.access.api.views import ApiTokenViewSet, GrantViewSet, RoleViewSet, TeamViewSet, WhyView
from console.audit import views as audit_views
from console.audit.api.views import AuditEventViewSet
from console.health import healthz, livez
from console.jobs.api.views import JobViewSet
from domains import views as domain_views
from domains import wizard as domain_wizard
from domains.api.views import DomainViewSet, VolumeViewSet
from hosts import downloads as host_downloads
from hosts import views as host_views
from hosts.api.uploads import UploadFetchView, UploadsView, UploadView
from hosts.api.views import HostViewSet

handler500 = "console.outage.server_error"

router = DefaultRouter()
router.register("hosts", HostViewSet, basename="host")
router.register("domains", DomainViewSet, basename="domain")
router.register("volumes", VolumeViewSet, basename="volume")
router.register("jobs", JobViewSet, basename="job")
router.register("tokens", ApiTokenViewSet, basename="token")
router.register("teams", TeamViewSet, basename="team")
router.register("roles", RoleViewSet, basename="role")
router.register("grants", GrantViewSet, basename="grant")
router.register("audit", AuditEventViewSet, basename="audit")

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("livez", livez, name="livez"),
    path("", include("console.access.login.urls")),  # login/, login/code/, account/2fa/, oidc/
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI with its settings in a script of their own (?script), not inline: the CSP.
    path(
        "api/v1/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api_docs.html"),
        name="api-docs",
    ),
    path("api/v1/access/why/", WhyView.as_view(), name="access-why"),
    path("api/v1/uploads/", UploadsView.as_view(), name="uploads"),
    path("api/v1/uploads/fetch/", UploadFetchView.as_view(), name="upload-fetch"),
    path("api/v1/uploads/<str:upload_id>/", UploadView.as_view(), name="upload"),
    path("api/v1/", include(router.urls)),
    path("", domain_views.home, name="home"),
    path("hosts/", host_views.host_list_page, name="host-list"),
    path("hosts/add/", host_views.host_add_page, name="host-add"),
    path("hosts/<int:host_id>/", host_views.host_detail_page, name="host-detail"),
    path("hosts/<int:host_id>/pools/", host_views.host_pool_create_page, name="host-pool-create"),
    path(
        "hosts/<int:host_id>/orphans/delete/", host_views.host_orphans_delete_page, name="host-orphans-delete"
    ),
    path("hosts/<int:host_id>/pools/<str:pool>/", host_views.host_pool_page, name="host-pool"),
    path("hosts/<int:host_id>/networks/", host_views.host_network_create_page, name="host-network-create"),
    path("hosts/<int:host_id>/networks/<str:network>/", host_views.host_network_page, name="host-network"),
    path(
        "hosts/<int:host_id>/networks/<str:network>/teams/",
        host_views.host_network_teams_page,
        name="host-network-teams",
    ),
    path(
        "hosts/<int:host_id>/networks/<str:network>/<str:action>/",
        host_views.host_network_action_page,
        name="host-network-action",
    ),
    path(
        "hosts/<int:host_id>/pools/<str:pool>/volumes/",
        host_views.host_pool_volume_create_page,
        name="host-pool-volume-create",
    ),
    path(
        "hosts/<int:host_id>/pools/<str:pool>/fetch/", host_views.host_pool_fetch_page, name="host-pool-fetch"
    ),
    path(
        "hosts/<int:host_id>/pools/<str:pool>/volumes/<str:volume>/download/",
        host_downloads.volume_download,
        name="host-volume-download",
    ),
    path(
        "hosts/<int:host_id>/pools/<str:pool>/volumes/<str:volume>/<str:action>/",
        host_views.host_pool_volume_action_page,
        name="host-pool-volume-action",
    ),
    path(
        "hosts/<int:host_id>/pools/<str:pool>/<str:action>/",
        host_views.host_pool_action_page,
        name="host-pool-action",
    ),
    path("hosts/<int:host_id>/<str:action>/", host_views.host_action, name="host-action"),
    path("hosts/<int:host_id>/volumes/<int:volume_id>/", host_views.host_volume_page, name="host-volume"),
    path("teams/", access_views.team_list_page, name="team-list"),
    path("account/tokens/", access_views.token_list_page, name="token-list"),
    path("account/tokens/<int:token_id>/revoke/", access_views.token_revoke_page, name="token-revoke"),
    path("audit/", audit_views.audit_list_page, name="audit-list"),
    path("jobs/", include("console.jobs.urls")),
    path("domains/new/", domain_wizard.domain_new, name="domain-new"),
    path("domains/new/check/", domain_wizard.domain_new_check, name="domain-new-check"),
    path("domains/<int:domain_id>/", domain_views.domain_detail, name="domain-detail"),
    path("domains/<int:domain_id>/serial.log", domain_views.domain_serial_log, name="domain-serial-log"),
    path("domains/<int:domain_id>/disks/", domain_views.domain_disk_attach_page, name="domain-disks"),
    path("domains/<int:domain_id>/nics/", domain_views.domain_nic_attach_page, name="domain-nics"),
    path(
        "domains/<int:domain_id>/nics/<str:mac>/<str:op>/",
        domain_views.domain_nic_op_page,
        name="domain-nic-op",
    ),
    path(
        "domains/<int:domain_id>/disks/<str:target>/<str:op>/",
        domain_views.domain_disk_op_page,
        name="domain-disk-op",
    ),
    path("domains/<int:domain_id>/<str:action>/", domain_views.domain_action, name="domain-action"),
]
