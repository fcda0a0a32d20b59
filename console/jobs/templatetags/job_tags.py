"""Template helpers for job tables."""

from __future__ import annotations

from django import template

from console.jobs.models import Job
from console.jobs.registry import can_cancel as _can_cancel

register = template.Library()


@register.filter
def can_cancel(job: Job) -> bool:
    """Whether a Cancel button makes sense for `job` now (as the live events say)."""
    return _can_cancel(job)
