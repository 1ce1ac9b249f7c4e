"""Progress reported from inside a job, shown by the job's widget and progress bars in the notebook.

Progress lives in the job hash: ``progress_done``, ``progress_total`` (absent when unknown),
``progress_message`` and ``progress_at``. Writes are throttled to one every ``MIN_INTERVAL_S``, except the
one that completes the total, so a tight loop costs few Redis commands. Outside a job both functions do
nothing, so the same code runs in the notebook.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from nbqueue import keys
from nbqueue.context import get_current_job

T = TypeVar("T")

MIN_INTERVAL_S = 0.2

_last_write: dict[str, float] = {}


def set_progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report that ``done`` of ``total`` units of the running job are complete."""
    job = get_current_job()
    if job is None:
        return
    now = time.monotonic()
    finished = total is not None and done >= total
    if not finished and now - _last_write.get(job.id, 0.0) < MIN_INTERVAL_S:
        return
    _last_write[job.id] = now
    fields = {"progress_done": repr(float(done)), "progress_at": repr(time.time())}
    if message is not None:
        fields["progress_message"] = str(message)[:500]
    pipe = job.connection.pipeline(transaction=False)
    pipe.hset(keys.job(job.id), mapping=fields)
    if total is None:
        pipe.hdel(keys.job(job.id), "progress_total")
    else:
        pipe.hset(keys.job(job.id), "progress_total", repr(float(total)))
    pipe.execute()


def progress(iterable: Iterable[T], total: int | None = None, message: str | None = None) -> Iterator[T]:
    """Yield the items of ``iterable``, reporting how many were done (``total`` defaults to ``len()``)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    done = 0
    set_progress(0, total, message)
    for item in iterable:
        yield item
        done += 1
        set_progress(done, total, message)
    if total is None:
        _last_write.pop(getattr(get_current_job(), "id", ""), None)
        set_progress(done, done, message)
