"""Parsing of timeouts and TTLs given as seconds or as strings like ``"90s"``, ``"10m"`` or ``"1h"``."""

from __future__ import annotations

import math
import re

from nbqueue.errors import TimeoutFormatError

#: Timeout of a job whose job and queue set none, in seconds.
DEFAULT_JOB_TIMEOUT_S = 180
#: How long a finished job and its results are kept, in seconds.
DEFAULT_RESULT_TTL_S = 500
#: How long a failed job and its results are kept, in seconds (one year).
DEFAULT_FAILURE_TTL_S = 365 * 24 * 3600
#: The value that means "no limit" for timeouts and "never expires" for TTLs.
NO_LIMIT = -1
#: Largest timeout or TTL accepted, in seconds (100 years); Redis rejects expiry times far beyond it.
MAX_DURATION_S = 100 * 365 * 24 * 3600

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(value: object, option: str) -> float:
    """Convert ``value`` (seconds as a number, or a string like ``"90s"``) to seconds; -1 stays -1.

    Raises :class:`TimeoutFormatError` naming ``option`` for anything else, negative numbers but -1
    included.
    """
    if isinstance(value, bool):
        raise TimeoutFormatError(f"{option}={value!r} is invalid: give seconds as a number or a string like '90s'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        if value.strip() == "-1":
            return NO_LIMIT
        match = _DURATION.match(value)
        if not match:
            raise TimeoutFormatError(
                f"{option}={value!r} is invalid: give seconds as a number or a string like '90s', '10m', '1h' or '1d'"
            )
        seconds = float(match.group(1)) * _UNITS_S[(match.group(2) or "s").lower()]
    else:
        raise TimeoutFormatError(
            f"{option}={value!r} is invalid: give seconds as a number or a string like '90s', got {type(value).__name__}"
        )
    if seconds == NO_LIMIT:
        return NO_LIMIT
    if seconds < 0 or not math.isfinite(seconds):
        raise TimeoutFormatError(f"{option}={value!r} is invalid: use a positive number of seconds, or -1 for no limit")
    if seconds > MAX_DURATION_S:
        raise TimeoutFormatError(
            f"{option}={value!r} is too large: the maximum is {MAX_DURATION_S:,} seconds (100 years); use -1 for no limit"
        )
    return seconds


def parse_job_timeout(value: object, option: str = "job_timeout") -> float | None:
    """Parse a job or queue timeout: None stays None (use the next default), 0 is rejected."""
    if value is None:
        return None
    seconds = parse_duration(value, option)
    if seconds == 0:
        raise TimeoutFormatError(f"{option}={value!r} is invalid: a timeout of 0 is not allowed; use -1 for no timeout")
    return seconds


def parse_ttl(value: object, option: str, *, allow_zero: bool = True) -> int | None:
    """Parse a TTL in whole seconds: None stays None, -1 means never expires."""
    if value is None:
        return None
    seconds = parse_duration(value, option)
    if seconds == NO_LIMIT:
        return NO_LIMIT
    if seconds == 0 and not allow_zero:
        raise TimeoutFormatError(f"{option}={value!r} is invalid: use a positive number of seconds, or -1 for no limit")
    if seconds != int(seconds):
        # Redis key expiry works in whole seconds here; round up so that nothing expires early.
        seconds = math.ceil(seconds)
    return int(seconds)
