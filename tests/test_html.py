"""Tests of the HTML and text summaries of jobs, against a real Redis server and real workers."""

from __future__ import annotations

import html
import subprocess
import sys

import redis

from nbqueue import Job, Queue, keys
from nbqueue.jupyter.html import MAX_HTML_VALUE_CHARS, job_html, job_text

SCRIPT = "<script>alert('owned')</script>"


def return_script() -> str:
    return SCRIPT


def return_long_text() -> str:
    return "x" * 5000


def raise_value_error() -> None:
    raise ValueError("bad <input>")


def add(a: int, b: int) -> int:
    return a + b


def run_jobs_in_burst(start_worker) -> None:
    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.log()


def test_job_html_escapes_return_value(connection, start_worker):
    job = Queue(connection=connection).enqueue(return_script)
    run_jobs_in_burst(start_worker)

    text = job_html(job)

    assert "<script>" not in text
    assert html.escape(repr(SCRIPT)) in text
    assert ">finished<" in text


def test_job_html_truncates_long_value(connection, start_worker):
    job = Queue(connection=connection).enqueue(return_long_text)
    run_jobs_in_burst(start_worker)

    text = job_html(job)

    value_repr = repr("x" * 5000)
    assert html.escape(value_repr[:MAX_HTML_VALUE_CHARS]) + "…" in text
    assert html.escape(value_repr[: MAX_HTML_VALUE_CHARS + 1]) not in text
    assert f"({len(value_repr) - MAX_HTML_VALUE_CHARS} more characters)" in text


def test_job_html_shows_failed_traceback(connection, start_worker):
    job = Queue(connection=connection).enqueue(raise_value_error)
    run_jobs_in_burst(start_worker)

    text = job_html(job)

    assert ">failed<" in text
    assert "Failed: <code>ValueError: bad &lt;input&gt;</code>" in text
    assert "<details><summary>Traceback</summary>" in text
    assert "in raise_value_error" in text
    assert "bad <input>" not in text


def test_job_html_shows_times_and_worker(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 2, 3, job_timeout="90s")
    run_jobs_in_burst(start_worker)

    text = job_html(job)

    for label in ("Function", "Description", "Enqueued", "Started", "Ended", "Worker", "Timeout"):
        assert f">{label}</th>" in text
    assert "test_html.add" in text
    assert "90 s" in text
    assert "<pre style=\"margin:2px 0\">5</pre>" in text


def test_job_html_escapes_id_queue_and_description(connection):
    job = Queue("<q>", connection=connection).enqueue(
        add, 1, 2, job_id="<b>id</b>", description="<img src=x onerror=alert(1)>"
    )

    text = job_html(job)

    assert "<b>" not in text
    assert "<img" not in text
    assert "<q>" not in text
    assert "&lt;b&gt;id&lt;/b&gt;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert ">queued<" in text
    assert "No result yet." in text


def test_job_html_of_missing_job(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2)
    connection.delete(keys.job(job.id), keys.results(job.id))

    text = job_html(job)

    assert ">missing<" in text
    assert "The job is not in Redis: it was deleted or it expired." in text
    assert job_text(job) == (
        f"Job {job.id} [missing] on queue default: The job is not in Redis: it was deleted or it expired."
    )


def test_job_html_when_redis_unreachable(tmp_path):
    unreachable = redis.Redis(unix_socket_path=str(tmp_path / "no-server.sock"))
    job = Job("some-job", connection=unreachable)

    text = job_html(job)

    assert ">unknown<" in text
    assert "Redis could not be reached" in text
    assert job_text(job).startswith("Job some-job [unknown] on queue (unknown): Redis could not be reached")


def test_job_text_summaries(connection, start_worker):
    queue = Queue(connection=connection)
    finished = queue.enqueue(add, 2, 3)
    failed = queue.enqueue(raise_value_error)
    assert job_text(finished) == f"Job {finished.id} [queued] on queue default: no result yet"

    run_jobs_in_burst(start_worker)

    assert job_text(finished) == f"Job {finished.id} [finished] on queue default: returned 5"
    assert job_text(failed) == f"Job {failed.id} [failed] on queue default: failed: ValueError: bad <input>"


def test_html_module_imports_no_ipython():
    check = "import sys, nbqueue.jupyter.html; print(sorted(m for m in sys.modules if m.startswith('IPython')))"

    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "[]\n"


def test_job_repr_html_uses_job_html(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2)

    assert job._repr_html_() == job_html(job)
