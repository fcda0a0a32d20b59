from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from console.access.policy import restrict
from console.jobs.models import Job


def job_list(*, user: Any) -> QuerySet[Job]:
    return restrict(Job.objects.select_related("actor"), user, "domain.view")
