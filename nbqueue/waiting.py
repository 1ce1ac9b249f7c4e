"""Waiting on many jobs at once with :func:`wait`, which returns their values in input order.

While it blocks, :func:`nbqueue.feedback.wait_feedback` shows one aggregate progress bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from nbqueue import keys
from nbqueue.connection import blocking_client
from nbqueue.errors import InvalidOptionError, JobsFailedError, WaitTimeoutError
from nbqueue.job import WAIT_CHUNK_S, WAIT_GRACE_S, Job
from nbqueue.feedback import _ENDED_STATUSES, WaitTally, _text, wait_feedback
from nbqueue.results import DISCARDED_MARKER, Result, decode_entries

log = logging.getLogger(__name__)

#: Maximum number of failed items that the message of :class:`JobsFailedError` lists one by one.
MAX_LISTED_FAILURES = 20

# Type codes of the results that end a job, as stored in its results stream. RETRIED is not one of them.
_FINAL_TYPES = frozenset(
    str(result_type.value).encode() for result_type in (Result.Type.SUCCESSFUL, Result.Type.FAILED, Result.Type.STOPPED)
)



# Waiting for many jobs


def wait(jobs: Iterable[Job], timeout: float | None = None) -> list[Any]:
    """Wait until every job has ended, and return their return values in input order.

    ``timeout`` is in seconds; None waits without a limit. A job that no longer exists (run with
    ``result_ttl=0``, deleted or expired) or that was canceled counts as done with the value None. A job whose
    final result is FAILED or STOPPED makes the wait raise :class:`JobsFailedError` once every job has ended.
    When the timeout passes first, :class:`WaitTimeoutError` is raised and the jobs keep running. Both carry
    ``values``, ``failures`` and ``jobs``. All jobs must live on the same Redis server.

    The wait reads the result streams of all pending jobs with one ``XREAD BLOCK`` of at most a second at a
    time. So a result is seen as soon as it is written, and Ctrl-C ends the wait within about a second. Each
    second of waiting costs one round trip, whatever the number of jobs.
    """
    jobs = list(jobs)
    for index, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise InvalidOptionError(
                f"jobs[{index}] is a {type(job).__name__}, not a Job: pass the jobs that enqueue returned"
            )
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise InvalidOptionError(f"timeout={timeout!r} is invalid: give a number of seconds >= 0, or None for no limit")
    if not jobs:
        return []

    tally = WaitTally(len(jobs))
    with wait_feedback(jobs, None if timeout is None else float(timeout), tally=tally):
        outcomes = _wait_for_outcomes(jobs, timeout, tally)

    values: list[Any] = [None] * len(jobs)
    failures: dict[int, Result] = {}
    for index, job in enumerate(jobs):
        result = outcomes.get(job.id)
        if result is None:
            continue
        if result.type == Result.Type.SUCCESSFUL:
            values[index] = result.return_value
        else:
            failures[index] = result

    if len(outcomes) < len({job.id for job in jobs}):
        done = sum(1 for job in jobs if job.id in outcomes)
        raise WaitTimeoutError(
            f"Timed out after {timeout:g}s: {done} of {len(jobs)} jobs are done ({len(failures)} failed). "
            "The others are still queued or running, and they keep running: wait for them again with "
            "nbqueue.wait(error.jobs, timeout=...), or pass a longer timeout",
            values=values, failures=failures, jobs=jobs,
        )
    if failures:
        raise JobsFailedError(_describe_failures(failures, len(jobs)), values=values, failures=failures, jobs=jobs)
    return values


def _wait_for_outcomes(jobs: Sequence[Job], timeout_s: float | None, tally: WaitTally) -> dict[str, Result | None]:
    """Wait for the final result of each job; return it by job id, None for jobs that are gone or canceled.

    Jobs missing from the returned dict were still pending when the timeout passed.
    """
    indexes: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        indexes.setdefault(job.id, []).append(index)
    # Reading each stream from 0-0 first returns the results that already exist, so jobs that ended before the
    # wait began are found by the first read.
    last_ids: dict[str, bytes | str] = {job_id: "0-0" for job_id in indexes}
    outcomes: dict[str, Result | None] = {}
    waiter = blocking_client(jobs[0].connection, WAIT_CHUNK_S + WAIT_GRACE_S)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    first_read = True

    while len(outcomes) < len(indexes):
        remaining_s = WAIT_CHUNK_S if deadline is None else deadline - time.monotonic()
        if remaining_s <= 0 and not first_read:
            break
        first_read = False
        # XREAD without BLOCK does not wait; BLOCK 0 would wait forever.
        block_ms = max(1, int(min(WAIT_CHUNK_S, remaining_s) * 1000)) if remaining_s > 0 else None

        pending = [job_id for job_id in indexes if job_id not in outcomes]
        pipe = waiter.pipeline(transaction=False)
        for job_id in pending:
            pipe.hget(keys.job(job_id), "status")
        pipe.xread({keys.results(job_id): last_ids[job_id] for job_id in pending}, block=block_ms)
        *statuses, streams = pipe.execute()

        new_entries = {_text(key): entries for key, entries in _stream_items(streams)}
        for job_id, status in zip(pending, statuses):
            entries = new_entries.get(keys.results(job_id))
            if entries:
                last_ids[job_id] = entries[-1][0]
                found, result = _final_result(job_id, entries)
                if found:
                    outcomes[job_id] = result
                    tally.mark(indexes[job_id], failed=result is not None and result.type != Result.Type.SUCCESSFUL)
                    continue
            # The status was read before the stream, and a worker writes both at once, so an ended job whose
            # final result was not in the stream has lost its results: it was deleted or has expired.
            if status is None or status in _ENDED_STATUSES:
                outcomes[job_id] = None
                tally.mark(indexes[job_id], failed=False)
    return outcomes


def _stream_items(streams: Any) -> Iterable[tuple[Any, list]]:
    """Return XREAD's reply as (key, entries) pairs; RESP2 gives a list of pairs, RESP3 a dict."""
    if not streams:
        return []
    if isinstance(streams, dict):
        return [(key, value[0] if value and isinstance(value[0], list) else value) for key, value in streams.items()]
    return [(key, entries) for key, entries in streams]


def _final_result(job_id: str, entries: list) -> tuple[bool, Result | None]:
    """Find the newest final entry: (True, its Result), (True, None) for a discarded outcome, else (False, None).

    A RETRIED result is not final, because the job runs again.
    """
    for entry in reversed(entries):
        type_code = entry[1].get(b"type")
        if type_code == DISCARDED_MARKER:
            return True, None
        if type_code in _FINAL_TYPES:
            return True, decode_entries(job_id, [entry])[0]
    return False, None


def _describe_failures(failures: dict[int, Result], total: int) -> str:
    lines = [f"{len(failures)} of {total} jobs failed:"]
    for index in sorted(failures)[:MAX_LISTED_FAILURES]:
        lines.append(f"  [{index}] {_last_error_line(failures[index])}")
    if len(failures) > MAX_LISTED_FAILURES:
        lines.append(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more; see the error's .failures")
    return "\n".join(lines)


def _last_error_line(result: Result) -> str:
    lines = [line.strip() for line in (result.exc_string or "").splitlines() if line.strip()]
    if lines:
        return lines[-1]
    return "stopped" if result.type == Result.Type.STOPPED else result.type.name
