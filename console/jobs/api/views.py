from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.audit.services import origin_of
from console.jobs.api.serializers import JobSerializer
from console.jobs.models import Job
from console.jobs.selectors import job_list
from console.jobs.services import job_cancel


class JobViewSet(viewsets.ReadOnlyModelViewSet[Job]):
    serializer_class = JobSerializer

    def get_queryset(self) -> QuerySet[Job]:
        return job_list(user=self.request.user)

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a job that has not started yet (409 once it runs)."""
        job = job_cancel(job=self.get_object(), actor=request.user, origin=origin_of(request))
        return Response(JobSerializer(job).data)
