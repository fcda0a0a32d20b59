from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from console.access.policy import restrict
from hosts.models import Host


def host_list(*, user: Any) -> QuerySet[Host]:
    return restrict(Host.objects.all(), user, "host.view")
