from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import permissions, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from console.access.policy import has_perm
from console.api import ApiPagination
from console.audit.api.serializers import AuditEventSerializer
from console.audit.export import audit_csv_lines, audit_json_chunks
from console.audit.filters import audit_filter_parse
from console.audit.models import AuditEvent
from console.audit.selectors import audit_event_list
from console.errors import InvalidInput

FILTER_PARAMETERS = [
    OpenApiParameter("actor", OpenApiTypes.STR, description="username"),
    OpenApiParameter("action", OpenApiTypes.STR, description="exact action, e.g. domain.create"),
    OpenApiParameter("action__startswith", OpenApiTypes.STR, description="action prefix, e.g. domain."),
    OpenApiParameter("object_type", OpenApiTypes.STR),
    OpenApiParameter("object_id", OpenApiTypes.STR),
    OpenApiParameter("outcome", OpenApiTypes.STR, enum=AuditEvent.Outcome.values),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="inclusive; naive means UTC"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="exclusive; naive means UTC"),
]


class CanViewAudit(permissions.BasePermission):
    message = "You may not read the audit trail (audit.view)."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return has_perm(request.user, "audit.view")


@extend_schema_view(list=extend_schema(parameters=FILTER_PARAMETERS))
class AuditEventViewSet(viewsets.ReadOnlyModelViewSet[AuditEvent]):
    """The audit trail, newest first. Read-only: events are appended by the services."""

    serializer_class = AuditEventSerializer
    pagination_class = ApiPagination
    permission_classes = [permissions.IsAuthenticated, CanViewAudit]
    lookup_field = "seq"

    def get_queryset(self) -> QuerySet[AuditEvent]:
        filters = audit_filter_parse(self.request.query_params) if self.action != "retrieve" else None
        return audit_event_list(user=self.request.user, filters=filters)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        # `?format=csv` names the export's format, not a DRF renderer; errors are JSON.
        if getattr(self, "action", None) == "export":
            return JSONRenderer(), JSONRenderer.media_type
        return super().perform_content_negotiation(request, force)

    @extend_schema(
        parameters=[OpenApiParameter("format", OpenApiTypes.STR, enum=["csv", "json"]), *FILTER_PARAMETERS],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/json"): AuditEventSerializer(many=True),
        },
    )
    @action(detail=False, methods=["get"], pagination_class=None)
    def export(self, request: Request, *args: Any, **kwargs: Any) -> StreamingHttpResponse:
        """All matching events (no pagination) as CSV with a header row or as a JSON array."""
        kind = request.query_params.get("format", "csv")
        if kind not in ("csv", "json"):
            raise InvalidInput("Unknown export format.", fields={"format": ["expected csv or json"]})
        events = self.get_queryset()
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        if kind == "csv":
            response = StreamingHttpResponse(audit_csv_lines(events), content_type="text/csv; charset=utf-8")
        else:
            response = StreamingHttpResponse(audit_json_chunks(events), content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{kind}"'
        return response
