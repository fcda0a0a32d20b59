from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.access.policy import has_perm
from console.audit.filters import AuditFilter, audit_filter_parse
from console.audit.models import AuditEvent
from console.audit.selectors import audit_event_list
from console.errors import InvalidInput, PermissionDenied

PAGE_SIZE = 100


@login_required
def audit_list_page(request: HttpRequest) -> HttpResponse:
    if not has_perm(request.user, "audit.view"):
        raise PermissionDenied("You may not read the audit trail (audit.view).")
    errors: dict[str, list[str]] = {}
    try:
        filters = audit_filter_parse(request.GET)
    except InvalidInput as exc:
        errors, filters = exc.fields, AuditFilter()
    page = Paginator(audit_event_list(user=request.user, filters=filters), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    query = urlencode(filters.as_params())
    return render(
        request,
        "audit/list.html",
        {
            "page": page,
            "form": request.GET,
            "errors": errors,
            "query": query,
            "outcomes": AuditEvent.Outcome.choices,
        },
    )
