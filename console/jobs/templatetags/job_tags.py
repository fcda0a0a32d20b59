"""Template helpers for job tables."""

from __future__ import annotations

from django import template

from console.jobs.models import Job
from console.jobs.registry import can_cancel as _can_cancel
from console.jobs.registry import offer as _offer

register = template.Library()


@register.filter
def can_cancel(job: Job) -> bool:
    """Whether a Cancel button makes sense for `job` now (as the live events say)."""
    return _can_cancel(job)


@register.filter
def job_offer(job: Job) -> str:
    """The domain action a failed job offers next ("" for none)."""
    return _offer(job)
