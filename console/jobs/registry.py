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

# How to tell, after a job lost its footing half-way (an unexpected error, a connection that
# broke), whether what it was asked to do happened anyway: the verifier reads the real state and
# returns the job's result if the goal was reached, None if it cannot tell, or raises JobFailed
# saying what the state really is.
Verifier = Callable[["JobContext"], dict[str, Any] | None]
VERIFY: dict[str, Verifier] = {}
# Called (with the job, inside job_finish's transaction) when a job of the kind ends without
# having done its work (failed, or cancelled once running), so that what it was making does not
# stay "in progress" forever.
NotDoneHook = Callable[["Job"], None]
ON_NOT_DONE: dict[str, NotDoneHook] = {}


def job_handler(
    kind: str,
    *,
    permission: str | None = None,
    cancellable: bool = False,
    offer_on_failure: str = "",
    verify: Verifier | None = None,
    on_not_done: NotDoneHook | None = None,
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        if verify is not None:
            VERIFY[kind] = verify
        if on_not_done is not None:
            ON_NOT_DONE[kind] = on_not_done
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
