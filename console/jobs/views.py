"""The jobs page: every job the user may see, filtered by domain, host, user and status."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.errors import InvalidInput
from console.jobs.filters import JobFilter, job_filter_parse
from console.jobs.models import Job
from console.jobs.registry import can_cancel
from console.jobs.selectors import job_filter_choices, job_list

PAGE_SIZE = 50


@login_required
def job_list_page(request: HttpRequest) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    try:
        filters = job_filter_parse(request.GET)
    except InvalidInput as exc:
        errors, filters = exc.fields, JobFilter()
    jobs = job_list(user=request.user, filters=filters).select_related("domain", "host")
    page = Paginator(jobs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "jobs/list.html",
        {
            "page": page,
            # (job, whether Cancel can work now; live.js follows its events' `cancellable` after)
            "rows": [(job, can_cancel(job)) for job in page],
            "filters": filters,
            "errors": errors,
            "query": urlencode(filters.as_params()),
            "choices": job_filter_choices(user=request.user),
            "statuses": Job.Status.choices,
        },
    )
