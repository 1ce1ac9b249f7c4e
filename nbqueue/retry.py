"""Retry: how often and after what delays a failing job runs again."""

from __future__ import annotations

from collections.abc import Sequence

from nbqueue.errors import InvalidOptionError


class Retry:
    """Run a job again after a failure, up to ``max`` more times.

    ``interval`` is seconds or a list of seconds: the k-th retry waits ``interval[k-1]``, and the last value
    repeats for retries past the end of the list. Pass it to ``enqueue(..., retry=...)`` for exceptions, or
    return it from the job to ask for another run.
    """

    def __init__(self, max: int, interval: float | Sequence[float] = 0):
        if isinstance(max, bool) or not isinstance(max, int) or max < 1:
            raise InvalidOptionError(f"Retry(max={max!r}) is invalid: max must be a whole number >= 1")
        intervals = list(interval) if isinstance(interval, Sequence) and not isinstance(interval, str) else [interval]
        if not intervals:
            raise InvalidOptionError("Retry(interval=[]) is invalid: give at least one interval, or a number")
        for value in intervals:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise InvalidOptionError(
                    f"Retry(interval={interval!r}) is invalid: intervals must be numbers of seconds >= 0"
                )
        self.max = max
        self.intervals: list[float] = [float(value) for value in intervals]

    def get_interval(self, retry_number: int) -> float:
        """Return the delay in seconds before retry number ``retry_number`` (1 for the first retry)."""
        index = min(max(retry_number, 1), len(self.intervals)) - 1
        return self.intervals[index]

    def __repr__(self) -> str:
        interval = self.intervals[0] if len(self.intervals) == 1 else self.intervals
        return f"Retry(max={self.max}, interval={interval!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retry) and (self.max, self.intervals) == (other.max, other.intervals)
