"""What each job kind is: its handler, the permission its actor must still hold, whether a
running one may be cancelled. Apps register their kinds with `@job_handler` (domains/jobs.py).

Kept apart from the runner (which imports the agent client, audit and events) so that services
can ask about a kind without loading all of that."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from console.jobs.models import Job
    from console.jobs.runner import JobContext

Handler = Callable[["JobContext"], dict[str, Any] | None]
HANDLERS: dict[str, Handler] = {}
# The permission a job's actor must still hold on its domain when a worker picks it up (it may
# have been withdrawn while the job waited).
REQUIRED: dict[str, str] = {}
# Kinds whose handler checks `ctx.cancel_requested()` at safe points, so a running job of that
# kind may be asked to stop. The others run to the end once started.
CANCELLABLE: set[str] = set()


class JobFailed(Exception):
    """The job cannot finish; the message is shown to the person who started it."""


class JobCancelled(Exception):
    """Raised by a handler that stopped because someone cancelled the job; the message (for a
    person) says what was and was not done."""


class AttemptLost(Exception):
    """This attempt's worker stalled and another attempt owns the job now: stop, write nothing."""


# The domain action a failed job of a kind offers next (a shutdown the guest ignored: force off).
OFFER_ON_FAILURE: dict[str, str] = {}


def job_handler(
    kind: str, *, permission: str | None = None, cancellable: bool = False, offer_on_failure: str = ""
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        if offer_on_failure:
            OFFER_ON_FAILURE[kind] = offer_on_failure
        if permission is not None:
            REQUIRED[kind] = permission
        if cancellable:
            CANCELLABLE.add(kind)
        else:
            CANCELLABLE.discard(kind)
        return fn

    return register


def is_cancellable(kind: str) -> bool:
    return kind in CANCELLABLE


def can_cancel(job: Job) -> bool:
    """Whether cancelling the job now can work: it is queued, or it runs, can stop half-way and
    has not been asked to yet."""
    if job.status == "queued":
        return True
    return job.status == "running" and is_cancellable(job.kind) and not job.cancel_requested


def offer(job: Job) -> str:
    """The action to offer next to a failed job on a domain ("" for none)."""
    if job.status != "failed" or job.domain_id is None:
        return ""
    return OFFER_ON_FAILURE.get(job.kind, "")
