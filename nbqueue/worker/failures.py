"""Turning a failed or retry-requesting run into an Outcome, by the job's retry budget."""

from __future__ import annotations

import json
from collections.abc import Mapping

from nbqueue.results import Result
from nbqueue.retry import Retry
from nbqueue.worker.outcome import Outcome

#: Job fields that decide retries, read with one HMGET.
RETRY_FIELDS = ("retries_left", "retries_used", "retry_intervals", "returned_retries")


def failure_outcome(fields: Mapping[str, bytes | None], exc_string: str) -> Outcome:
    """Return RETRIED while the job's enqueue-level retries last, else FAILED."""
    retries_left = int(fields.get("retries_left") or 0)
    if retries_left <= 0:
        return Outcome(Result.Type.FAILED, exc_string=exc_string)
    intervals = json.loads(fields.get("retry_intervals") or b"[0]")
    used = int(fields.get("retries_used") or 0) + 1
    delay_s = intervals[min(used, len(intervals)) - 1]
    return Outcome(
        Result.Type.RETRIED,
        exc_string=exc_string,
        retry_delay_s=float(delay_s),
        job_fields=(("retries_left", str(retries_left - 1)), ("retries_used", str(used))),
    )


def returned_retry_outcome(fields: Mapping[str, bytes | None], retry: Retry) -> Outcome:
    """Return RETRIED for a job that returned ``retry``, or FAILED once it has used ``retry.max`` retries."""
    used = int(fields.get("returned_retries") or 0)
    if used >= retry.max:
        return Outcome(
            Result.Type.FAILED,
            exc_string=f"The job returned {retry!r} after {used} retries: the retry limit was reached",
        )
    return Outcome(
        Result.Type.RETRIED,
        exc_string=f"The job returned {retry!r}: retry {used + 1} of {retry.max}",
        retry_delay_s=retry.get_interval(used + 1),
        job_fields=(("returned_retries", str(used + 1)),),
    )
