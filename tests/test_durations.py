"""Tests of parsing timeouts and TTLs given as seconds or as strings like ``"90s"``."""

from __future__ import annotations

import math

import pytest

from nbqueue.durations import (
    DEFAULT_FAILURE_TTL_S,
    DEFAULT_JOB_TIMEOUT_S,
    DEFAULT_RESULT_TTL_S,
    NO_LIMIT,
    parse_duration,
    parse_job_timeout,
    parse_ttl,
)
from nbqueue.errors import InvalidOptionError, TimeoutFormatError


def test_duration_defaults():
    assert DEFAULT_JOB_TIMEOUT_S == 180
    assert DEFAULT_RESULT_TTL_S == 500
    assert DEFAULT_FAILURE_TTL_S == 31536000
    assert NO_LIMIT == -1


@pytest.mark.parametrize(
    "value, expected_s",
    [
        (90, 90),
        (1.5, 1.5),
        (0, 0),
        ("45", 45),
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        ("1d", 86400),
        ("1.5m", 90),
        ("10M", 600),
        ("2H", 7200),
        (" 30 s ", 30),
        ("0s", 0),
        (-1, -1),
        (-1.0, -1),
        ("-1", -1),
        (" -1 ", -1),
    ],
)
def test_parse_duration_valid(value, expected_s):
    assert parse_duration(value, "job_timeout") == expected_s


@pytest.mark.parametrize(
    "value",
    ["abc", "", " ", "10x", "1h30m", "s", "-5", "-1s", "+5", "1e3", -5, -0.5, math.inf, math.nan, True, False, None, [90]],
)
def test_parse_duration_invalid(value):
    with pytest.raises(TimeoutFormatError) as excinfo:
        parse_duration(value, "job_timeout")

    assert f"job_timeout={value!r}" in str(excinfo.value)


def test_timeout_format_error_is_invalid_option():
    assert issubclass(TimeoutFormatError, InvalidOptionError)
    assert issubclass(TimeoutFormatError, ValueError)


@pytest.mark.parametrize(
    "value, expected_s",
    [
        (None, None),
        (30, 30),
        (0.5, 0.5),
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        (-1, -1),
        ("-1", -1),
    ],
)
def test_parse_job_timeout_valid(value, expected_s):
    assert parse_job_timeout(value) == expected_s


@pytest.mark.parametrize("value", [0, 0.0, "0", "0s", "0m", "abc", -2, "1w"])
def test_parse_job_timeout_invalid(value):
    with pytest.raises(TimeoutFormatError) as excinfo:
        parse_job_timeout(value, "default_timeout")

    assert f"default_timeout={value!r}" in str(excinfo.value)


def test_parse_job_timeout_zero_names_alternative():
    with pytest.raises(TimeoutFormatError) as excinfo:
        parse_job_timeout(0)

    assert "use -1 for no timeout" in str(excinfo.value)


@pytest.mark.parametrize(
    "value, expected_s",
    [
        (None, None),
        (0, 0),
        ("0", 0),
        (500, 500),
        ("10m", 600),
        ("1d", 86400),
        (1.2, 2),
        ("0.5s", 1),
        (-1, -1),
        ("-1", -1),
    ],
)
def test_parse_ttl_valid(value, expected_s):
    parsed = parse_ttl(value, "result_ttl")

    assert parsed == expected_s
    assert parsed is None or type(parsed) is int


@pytest.mark.parametrize("value", ["abc", -2, "-3m", math.inf, True])
def test_parse_ttl_invalid(value):
    with pytest.raises(TimeoutFormatError) as excinfo:
        parse_ttl(value, "failure_ttl")

    assert f"failure_ttl={value!r}" in str(excinfo.value)


@pytest.mark.parametrize("value", [0, "0", "0s"])
def test_parse_ttl_zero_rejected_when_disallowed(value):
    with pytest.raises(TimeoutFormatError) as excinfo:
        parse_ttl(value, "ttl", allow_zero=False)

    assert f"ttl={value!r}" in str(excinfo.value)


def test_parse_ttl_no_limit_when_zero_disallowed():
    assert parse_ttl(-1, "ttl", allow_zero=False) == -1
    assert parse_ttl("5s", "ttl", allow_zero=False) == 5


@pytest.mark.parametrize("option", ["ttl", "result_ttl", "failure_ttl", "job_timeout"])
def test_huge_duration_rejected_before_writing(connection, option):
    from nbqueue import Queue

    queue = Queue("hugeq", connection=connection)
    size_before = connection.dbsize()

    with pytest.raises(TimeoutFormatError) as excinfo:
        queue.enqueue("operator.add", 1, 2, **{option: 10**17})

    assert f"{option}=100000000000000000 is too large" in str(excinfo.value)
    assert "use -1 for no limit" in str(excinfo.value)
    assert connection.dbsize() == size_before


def test_retry_interval_not_finite_rejected():
    from nbqueue import Retry

    with pytest.raises(InvalidOptionError):
        Retry(max=2, interval=float("nan"))
    with pytest.raises(InvalidOptionError):
        Retry(max=2, interval=[1, float("inf")])
