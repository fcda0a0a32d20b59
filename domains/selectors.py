from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from console.access.policy import restrict
from console.errors import NotFound
from console.jobs.models import Job
from domains.models import Domain


def domain_list(*, user: Any) -> QuerySet[Domain]:
    return restrict(Domain.objects.select_related("host"), user, "domain.view")


def domain_get(*, user: Any, domain_id: int) -> Domain:
    domain = domain_list(user=user).filter(pk=domain_id).first()
    if domain is None:
        raise NotFound(f"No domain with id {domain_id}.")
    return domain


def domain_jobs(*, user: Any, domain: Domain, limit: int = 20) -> QuerySet[Job]:
    return restrict(Job.objects.filter(domain=domain), user, "domain.view")[:limit]
