from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from console.access.policy import restrict
from console.jobs.filters import JobFilter
from console.jobs.models import Job


def job_list(*, user: Any, filters: JobFilter | None = None) -> QuerySet[Job]:
    """The jobs `user` may see (those on domains they may view, and their own), newest first."""
    jobs = restrict(Job.objects.select_related("actor"), user, "domain.view")
    return filters.apply(jobs) if filters is not None else jobs


def job_filter_choices(*, user: Any) -> dict[str, list[tuple[Any, str]]]:
    """What the jobs page offers to filter by: the domains, hosts and users found among the
    jobs `user` may see (so nothing they may not see is named)."""
    jobs = job_list(user=user).order_by()
    domains = jobs.filter(domain__isnull=False).values_list("domain_id", "domain__name").distinct()
    hosts = jobs.filter(host__isnull=False).values_list("host_id", "host__name").distinct()
    actors = jobs.filter(actor__isnull=False).values_list("actor__username", flat=True).distinct()
    return {
        "domains": sorted(domains, key=lambda pair: pair[1]),
        "hosts": sorted(hosts, key=lambda pair: pair[1]),
        "actors": [(name, name) for name in sorted(actors)],
    }
