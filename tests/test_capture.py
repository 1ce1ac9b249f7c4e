"""Output captured from jobs on the worker (stdout, stderr, warnings, displayed objects), and async waits."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from nbqueue import Job, Queue, Result, keys


def chatty_job() -> str:
    import sys
    import warnings

    from IPython.display import HTML, Image, display

    print("hello from the worker")
    print("to stderr", file=sys.stderr)
    warnings.warn("mind the gap", UserWarning)
    display(HTML("<b>bold</b>"))
    display(Image(data=PNG_PIXEL))
    return "done"


def figure_job() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from IPython.display import display

    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    display(figure)


# A 1x1 PNG image.
PNG_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def output_entries(connection, job_id: str) -> list[dict[str, str]]:
    return [
        {name.decode(): value.decode() for name, value in fields.items()}
        for _, fields in connection.xrange(keys.output(job_id))
    ]


def test_output_streams_and_displays_captured(start_worker, connection):
    queue = Queue("captureq", connection=connection)
    job = queue.enqueue(chatty_job)
    start_worker("captureq")

    result = job.latest_result(timeout=30)
    entries = output_entries(connection, job.id)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL
    streams = [(entry["name"], entry["text"]) for entry in entries if entry["kind"] == "stream"]
    stdout = "".join(text for name, text in streams if name == "stdout")
    stderr = "".join(text for name, text in streams if name == "stderr")
    assert stdout == "hello from the worker\n"
    assert stderr.startswith("to stderr\n")
    assert "UserWarning: mind the gap" in stderr
    displays = [json.loads(entry["data"]) for entry in entries if entry["kind"] == "display"]
    assert len(displays) == 2
    assert displays[0]["text/html"] == "<b>bold</b>"
    assert base64.b64decode(displays[1]["image/png"]) == PNG_PIXEL


def test_output_expires_with_job(start_worker, connection):
    queue = Queue("captureq", connection=connection)
    job = queue.enqueue(chatty_job, result_ttl=100)
    start_worker("captureq")

    assert job.latest_result(timeout=30) is not None
    assert 90 <= connection.ttl(keys.output(job.id)) <= 100


def test_matplotlib_figure_displayed_as_png(start_worker, connection):
    pytest.importorskip("matplotlib")
    queue = Queue("captureq", connection=connection)
    job = queue.enqueue(figure_job)
    start_worker("captureq")

    result = job.latest_result(timeout=60)
    displays = [json.loads(entry["data"]) for entry in output_entries(connection, job.id) if entry["kind"] == "display"]

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    assert len(displays) == 1
    assert base64.b64decode(displays[0]["image/png"]).startswith(b"\x89PNG\r\n")
    assert displays[0]["text/plain"].startswith("<Figure size")


def test_job_without_output_writes_no_stream(start_worker, connection):
    queue = Queue("captureq", connection=connection)
    job = queue.enqueue("operator.add", 1, 2)
    start_worker("captureq")

    assert job.latest_result(timeout=30).return_value == 3
    assert not connection.exists(keys.output(job.id))


def test_await_job_returns_result(start_worker, connection):
    queue = Queue("asyncq", connection=connection)
    job = queue.enqueue("operator.mul", 6, 7)
    start_worker("asyncq")

    async def main() -> Result | None:
        return await job

    result = asyncio.run(asyncio.wait_for(main(), 30))

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value == 42


def test_wait_async_times_out_without_blocking_loop(connection):
    queue = Queue("asyncq", connection=connection)
    job = queue.enqueue("operator.mul", 6, 7)

    async def main() -> tuple[Result | None, int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        result = await job.wait_async(1.0)
        elapsed_s = time.monotonic() - started
        ticking.cancel()
        return result, ticks, elapsed_s

    result, ticks, elapsed_s = asyncio.run(main())

    assert result is None
    assert 1.0 <= elapsed_s < 2.5
    assert ticks >= 10


def test_wait_async_cancelled_promptly(connection):
    queue = Queue("asyncq", connection=connection)
    job = Job.fetch(queue.enqueue("operator.mul", 6, 7).id, connection)

    async def main() -> float:
        task = asyncio.create_task(job.wait_async(None))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.5
