"""The jobs list's filters, parsed from query parameters (shared by the API and the jobs page):
domain and host (ids), actor (a username) and status. The database does the filtering."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from django.db.models import QuerySet

from console.errors import InvalidInput
from console.jobs.models import Job
from console.params import id_param


@dataclass(frozen=True)
class JobFilter:
    domain: int | None = None
    host: int | None = None
    actor: str = ""
    status: str = ""

    def apply(self, jobs: QuerySet[Job]) -> QuerySet[Job]:
        if self.domain is not None:
            jobs = jobs.filter(domain_id=self.domain)
        if self.host is not None:
            jobs = jobs.filter(host_id=self.host)
        if self.actor:
            jobs = jobs.filter(actor__username=self.actor)
        if self.status:
            jobs = jobs.filter(status=self.status)
        return jobs

    def as_params(self) -> dict[str, str]:
        """Query parameters that reproduce this filter (for pagination links)."""
        params = {"domain": self.domain, "host": self.host, "actor": self.actor, "status": self.status}
        return {name: str(value) for name, value in params.items() if value not in (None, "")}


def job_filter_parse(params: Mapping[str, str]) -> JobFilter:
    errors: dict[str, list[str]] = {}
    ids = {name: id_param(params, name, errors) for name in ("domain", "host")}
    status = (params.get("status") or "").strip()
    if status and status not in Job.Status.values:
        errors["status"] = [f"one of {', '.join(Job.Status.values)}"]
    if errors:
        raise InvalidInput(f"Invalid {', '.join(errors)}.", fields=errors)
    actor = (params.get("actor") or "").strip()
    return JobFilter(domain=ids["domain"], host=ids["host"], actor=actor, status=status)
