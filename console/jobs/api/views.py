from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import viewsets

from console.jobs.api.serializers import JobSerializer
from console.jobs.models import Job
from console.jobs.selectors import job_list


class JobViewSet(viewsets.ReadOnlyModelViewSet[Job]):
    serializer_class = JobSerializer

    def get_queryset(self) -> QuerySet[Job]:
        return job_list(user=self.request.user)
