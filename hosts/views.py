from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from hosts.selectors import host_list


@login_required
def host_list_page(request: HttpRequest) -> HttpResponse:
    return render(request, "hosts/list.html", {"hosts": host_list(user=request.user)})
