from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.api import ApiPagination
from console.audit.services import origin_of
from console.jobs.api.serializers import JobSerializer
from console.jobs.filters import job_filter_parse
from console.jobs.models import Job
from console.jobs.selectors import job_list
from console.jobs.services import job_cancel


class JobViewSet(viewsets.ReadOnlyModelViewSet[Job]):
    serializer_class = JobSerializer
    pagination_class = ApiPagination

    @extend_schema(
        parameters=[
            OpenApiParameter("domain", int, description="only this domain's jobs"),
            OpenApiParameter("host", int, description="only jobs on this host"),
            OpenApiParameter("actor", str, description="only jobs started by this username"),
            OpenApiParameter("status", str, enum=[s.value for s in Job.Status]),
        ]
    )
    def list(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().list(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Job]:
        if self.action != "list":
            return job_list(user=self.request.user)
        return job_list(user=self.request.user, filters=job_filter_parse(self.request.query_params))

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a job that has not started yet, or ask a running one to stop when its kind can
        stop half-way (`cancellable`; it then ends as cancelled). 409 for any other running job."""
        job = job_cancel(job=self.get_object(), actor=request.user, origin=origin_of(request))
        return Response(JobSerializer(job).data)
