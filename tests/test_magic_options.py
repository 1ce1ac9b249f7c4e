"""Tests of the ``%%enqueue`` options --retry, --retry-interval, --result-ttl and --wait, and of the
``%enqueue`` line magic, in real IPython kernels (nbclient) with real workers and Redis.
"""

from __future__ import annotations

import json

import pytest
from test_magics import assert_ok, kernel_directory, run_cells  # noqa: F401 - kernel_directory is a fixture

from nbqueue import Job, Queue, Result

PRELUDE = "def add_one(value):\n    return value + 1"


def job_id_of(stdout: str) -> str:
    return stdout.strip()


# Options of %%enqueue


def test_retry_records_retried_results(kernel_directory, start_worker, connection):
    start_worker()

    runs = run_cells(
        ["%load_ext nbqueue", "%%enqueue --retry 2 -o job\nraise ValueError('always')", "print(job.id)"],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    job = Job(job_id_of(runs[2].stdout), connection=connection)
    results = []
    while not results or results[0].type == Result.Type.RETRIED:
        assert job.latest_result(timeout=30) is not None
        results = job.results()
    assert [result.type for result in results] == [Result.Type.FAILED, Result.Type.RETRIED, Result.Type.RETRIED]
    assert "ValueError: always" in results[2].exc_string


def test_retry_interval_list_stored(kernel_directory, connection):
    runs = run_cells(
        ["%load_ext nbqueue", "%%enqueue --retry 3 --retry-interval 5,1m -o job\n1", "print(job.id)"],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    job_key = f"nbqueue:job:{job_id_of(runs[2].stdout)}"
    assert connection.hget(job_key, "retries_left") == b"3"
    assert json.loads(connection.hget(job_key, "retry_intervals")) == [5.0, 60.0]


def test_result_ttl_stored(kernel_directory, start_worker, connection):
    start_worker()

    runs = run_cells(
        ["%load_ext nbqueue", "%%enqueue --result-ttl 90s -o job\n'kept'", "print(job.id)"], kernel_directory
    )

    for run in runs:
        assert_ok(run)
    job = Job.fetch(job_id_of(runs[2].stdout), connection=connection)
    assert job.result_ttl == 90
    assert job.latest_result(timeout=30).return_value == "kept"
    assert 0 < connection.ttl(f"nbqueue:job:{job.id}") <= 90


def test_wait_binds_value_to_output_name(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(
        [
            "%load_ext nbqueue",
            "factor = 6",
            "%%enqueue --wait -o answer\nfactor * 7",
            "print(type(answer).__name__, answer)",
        ],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    assert runs[2].results[0]["text/plain"] == "42"
    assert runs[3].stdout == "int 42\n"


def test_wait_without_output_returns_value(kernel_directory, start_worker, connection):
    start_worker()

    runs = run_cells(["%load_ext nbqueue", "%%enqueue --wait\n'a' * 3"], kernel_directory)

    for run in runs:
        assert_ok(run)
    assert runs[1].results[0]["text/plain"] == "'aaa'"
    assert Queue(connection=connection).count == 0


def test_wait_failure_raises_with_worker_traceback(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(["%load_ext nbqueue", "%%enqueue --wait -o value\nnumerator = 1\nnumerator / 0", "value"],
                     kernel_directory)

    assert runs[1].ename == "JobsFailedError"
    assert runs[1].evalue == "1 of 1 jobs failed:\n  [0] ZeroDivisionError: division by zero"
    assert "The job failed on worker " in runs[1].stderr
    assert "numerator / 0" in runs[1].stderr
    assert runs[2].ename == "NameError"


# The %enqueue line magic


def test_line_magic_captures_names_at_submit_time(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(
        [
            "%load_ext nbqueue",
            PRELUDE + "\nx = 41",
            "%enqueue -o job add_one(x)",
            "x = 0",
            "print(job.latest_result(timeout=30).return_value, job.description)",
        ],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    assert runs[4].stdout == "42 add_one(x)\n"


def test_line_magic_takes_queue_and_timeout(kernel_directory, connection):
    runs = run_cells(
        ["%load_ext nbqueue", PRELUDE + "\nx = 1", "%enqueue -q 'reports' -t 10 --result-ttl -1 add_one(x)"],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    (job_id,) = Queue("reports", connection=connection).job_ids
    job = Job.fetch(job_id, connection=connection)
    assert job.origin == "reports"
    assert job.timeout == 10
    assert job.result_ttl == -1
    assert job.func_name == "nbqueue.jupyter.cell.run_cell"


def test_line_magic_wait_returns_value(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(
        ["%load_ext nbqueue", PRELUDE, "%enqueue --wait -t30 'a  b'.split('  ') + [add_one(-2)]"],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    assert runs[2].results[0]["text/plain"] == "['a', 'b', -1]"


def test_line_magic_returns_job(kernel_directory, connection):
    runs = run_cells(["%load_ext nbqueue", "job = %enqueue 1 + 1\nprint(type(job).__name__, job.description)"],
                     kernel_directory)

    for run in runs:
        assert_ok(run)
    assert runs[1].stdout == "Job 1 + 1\n"
    assert Queue(connection=connection).count == 1


# Invalid options


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--retry x", "argument --retry: invalid int value: 'x'"),
        ("--retry 0", "%%enqueue --retry 0: Retry(max=0) is invalid"),
        ("--retry-interval 5", "%%enqueue --retry-interval needs --retry N"),
        (
            "--retry 2 --retry-interval 1,soon",
            "%%enqueue --retry-interval '1,soon': --retry-interval='soon' is invalid",
        ),
        ("--retry 2 --retry-interval 1,-1", "%%enqueue --retry-interval '1,-1': intervals must be >= 0 seconds"),
        ("--result-ttl soon", "%%enqueue --result-ttl 'soon': result_ttl='soon' is invalid"),
        ("--result-ttl", "argument --result-ttl: expected one argument"),
        ("--wait=yes", "argument --wait: ignored explicit argument 'yes'"),
        ("-o 1value --wait", "%%enqueue -o '1value' is invalid"),
    ],
)
def test_cell_magic_rejects_invalid_option(kernel_directory, connection, line, expected):
    runs = run_cells(["%load_ext nbqueue", f"%%enqueue {line}\n1"], kernel_directory)

    assert runs[1].ename == "UsageError"
    assert expected in runs[1].evalue
    assert Queue(connection=connection).count == 0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "%enqueue needs an expression to run on the worker after its options"),
        ("-q reports", "%enqueue needs an expression to run on the worker after its options"),
        ("-t 0 add_one(1)", "%enqueue -t '0': job_timeout='0' is invalid"),
        ("--retries 3 add_one(1)", "unrecognized arguments: --retries 3"),
        ("--retry 0 add_one(1)", "%enqueue --retry 0: Retry(max=0) is invalid"),
        ("--result-ttl x add_one(1)", "%enqueue --result-ttl 'x': result_ttl='x' is invalid"),
        ("value = add_one(1)", "The %enqueue expression is not a valid Python expression"),
        ("get_ipython().run_line_magic('time', '1')", "The %enqueue expression needs IPython"),
    ],
)
def test_line_magic_rejects_invalid_input(kernel_directory, connection, line, expected):
    runs = run_cells(["%load_ext nbqueue", PRELUDE, f"%enqueue {line}"], kernel_directory)

    assert runs[2].ename == "UsageError"
    assert expected in runs[2].evalue
    assert Queue(connection=connection).count == 0
    assert Queue("reports", connection=connection).count == 0


def test_line_magic_rejects_unpicklable_name(kernel_directory, connection):
    runs = run_cells(
        ["%load_ext nbqueue", "import threading\nlock = threading.Lock()", "%enqueue lock.locked()"],
        kernel_directory,
    )

    assert runs[2].ename == "UsageError"
    expected = "The %enqueue expression reads the notebook name 'lock', whose value (lock) cannot be pickled"
    assert expected in runs[2].evalue
    assert Queue(connection=connection).count == 0
