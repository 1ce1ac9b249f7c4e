"""Tests of ``nbqueue.wait`` and of the progress bar shown while a caller blocks on jobs.

Everything is real: the test Redis server, ``nbqueue worker`` subprocesses, a pseudo-terminal for the text
bar, and IPython kernels driven by nbclient for the widget bar and Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
import redis
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from polling import wait_until

from nbqueue import Job, Queue, Result, Retry
from nbqueue.errors import InvalidOptionError, JobsFailedError, WaitTimeoutError
from nbqueue.feedback import BarState, format_text_bar
from nbqueue.waiting import wait


def return_item(item: object) -> object:
    return item


def sleep_seconds(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def always_fail(message: str) -> None:
    raise RuntimeError(message)


def blocked_result_readers(connection: redis.Redis) -> int:
    """Count the clients blocked in XREAD, that is, waiting for results."""
    clients = connection.client_list()
    return sum(1 for client in clients if client.get("cmd") == "xread" and "b" in client.get("flags", ""))


# wait(): values, failures, timeouts, vanished jobs


def test_wait_returns_values_in_input_order(connection, start_worker):
    start_worker("--concurrency", "2")
    queue = Queue(connection=connection)
    jobs = queue.enqueue_many([Queue.prepare_data(sleep_seconds, (seconds,)) for seconds in (0.6, 0.0, 0.3)])

    assert wait(jobs, timeout=30) == [0.6, 0.0, 0.3]


def test_wait_returns_at_once_for_ended_jobs(connection, start_worker):
    queue = Queue(connection=connection)
    jobs = [queue.enqueue(return_item, item) for item in ("a", "b")]
    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.log()

    started = time.monotonic()
    values = wait(jobs, timeout=0)

    assert values == ["a", "b"]
    assert time.monotonic() - started < 0.5


def test_wait_accepts_same_job_twice(connection, start_worker):
    start_worker()
    job = Queue(connection=connection).enqueue(return_item, 7)

    assert wait([job, job], timeout=30) == [7, 7]


def test_wait_of_no_jobs_returns_empty_list():
    assert wait([], timeout=None) == []


@pytest.mark.parametrize("timeout", [-1, "10", True])
def test_wait_rejects_invalid_timeout(connection, timeout):
    job = Queue(connection=connection).enqueue(return_item, 1)

    with pytest.raises(InvalidOptionError, match="timeout="):
        wait([job], timeout=timeout)


def test_wait_rejects_non_job(connection):
    with pytest.raises(InvalidOptionError, match=r"jobs\[0\] is a str, not a Job"):
        wait(["some-id"], timeout=1)


def test_wait_raises_after_every_job_ended(connection, start_worker):
    start_worker()
    queue = Queue(connection=connection)
    failing = queue.enqueue(always_fail, "no such file")
    slow = queue.enqueue(sleep_seconds, 0.5)

    with pytest.raises(JobsFailedError) as excinfo:
        wait([failing, slow], timeout=30)

    error = excinfo.value
    assert error.values == [None, 0.5]
    assert list(error.failures) == [0]
    assert error.failures[0].type == Result.Type.FAILED
    assert error.jobs == [failing, slow]
    assert str(error) == "1 of 2 jobs failed:\n  [0] RuntimeError: no such file"


def test_wait_skips_retried_results(connection, start_worker):
    start_worker()
    job = Queue(connection=connection).enqueue(always_fail, "again", retry=Retry(max=2))

    with pytest.raises(JobsFailedError) as excinfo:
        wait([job], timeout=30)

    assert [result.type for result in job.results()] == [Result.Type.FAILED, Result.Type.RETRIED, Result.Type.RETRIED]
    assert excinfo.value.failures[0] == job.results()[0]


def test_wait_counts_stopped_job_as_failed(connection, start_worker):
    start_worker()
    job = Queue(connection=connection).enqueue(sleep_seconds, 30)
    wait_until(lambda: job.is_started, 20, "the job to start")
    job.stop()

    with pytest.raises(JobsFailedError) as excinfo:
        wait([job], timeout=30)

    assert excinfo.value.failures[0].type == Result.Type.STOPPED


def test_wait_timeout_counts_done_jobs(connection, start_worker):
    start_worker()
    queue = Queue(connection=connection)
    jobs = [queue.enqueue(return_item, 1), queue.enqueue(always_fail, "boom"), queue.enqueue(sleep_seconds, 30)]

    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as excinfo:
        wait(jobs, timeout=1.5)
    elapsed_s = time.monotonic() - started

    error = excinfo.value
    assert isinstance(error, TimeoutError)
    assert str(error).startswith("Timed out after 1.5s: 2 of 3 jobs are done (1 failed).")
    assert error.values == [1, None, None]
    assert list(error.failures) == [1]
    assert error.jobs == jobs
    assert 1.5 <= elapsed_s < 3.0
    jobs[2].stop()


def test_wait_counts_deleted_job_as_none(connection):
    queue = Queue(connection=connection)
    job = queue.enqueue(return_item, 1)
    outcome: dict[str, object] = {}

    def wait_in_thread() -> None:
        outcome["values"] = wait([job], timeout=20)

    thread = threading.Thread(target=wait_in_thread)
    thread.start()
    wait_until(lambda: blocked_result_readers(connection) == 1, 10, "the wait to block")
    job.delete()
    started = time.monotonic()
    thread.join(10)

    assert not thread.is_alive()
    assert outcome["values"] == [None]
    assert time.monotonic() - started < 2.5


def test_wait_counts_result_ttl_zero_as_none(connection, start_worker):
    start_worker()
    queue = Queue(connection=connection)
    jobs = [queue.enqueue(sleep_seconds, 0.3, result_ttl=0), queue.enqueue(return_item, "kept")]

    assert wait(jobs, timeout=30) == [None, "kept"]


def test_wait_counts_canceled_job_as_none(connection):
    queue = Queue(connection=connection)
    job = queue.enqueue(return_item, 1)
    job.cancel()

    assert wait([job], timeout=5) == [None]


# The text bar, in a pseudo-terminal


@dataclass
class TerminalRun:
    """A script run with stderr on a pseudo-terminal."""

    returncode: int
    stderr: str
    stdout: str
    #: Seconds from SIGINT to the script's exit, when it was interrupted.
    exit_after_interrupt_s: float | None = None


def run_in_terminal(
    script: str, redis_url: str, *, interrupt_when: str | None = None, stderr_is_terminal: bool = True
) -> TerminalRun:
    """Run ``script`` with stderr on a new pseudo-terminal; send SIGINT once stderr contains ``interrupt_when``."""
    env = {**os.environ, "NBQUEUE_REDIS_URL": redis_url}
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave if stderr_is_terminal else subprocess.STDOUT,
        env=env,
    )
    os.close(slave)
    output = b""
    interrupted_at = None
    poller = select.poll()
    poller.register(master, select.POLLIN)
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            # poll(), unlike select(), accepts descriptor numbers above 1023, which a long test run reaches.
            if poller.poll(100):
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every process holding the terminal closed it
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
            if interrupt_when and interrupted_at is None and interrupt_when.encode() in output:
                process.send_signal(signal.SIGINT)
                interrupted_at = time.monotonic()
        stdout, _ = process.communicate(timeout=10)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    exited_after = None if interrupted_at is None else time.monotonic() - interrupted_at
    return TerminalRun(process.returncode, output.decode(errors="replace"), stdout.decode(), exited_after)


TERMINAL_PRELUDE = """
import time
import nbqueue
from nbqueue import Queue

def sleep_seconds(seconds):
    time.sleep(seconds)
    return seconds

def count_with_progress(steps, step_s):
    for _ in nbqueue.progress(range(steps), message="counting"):
        time.sleep(step_s)
    return steps
"""


def test_text_bar_shows_progress_and_final_state(redis_url, start_worker):
    start_worker()

    run = run_in_terminal(
        TERMINAL_PRELUDE + "print(Queue().map(sleep_seconds, [1.0, 1.5], timeout=30))", redis_url
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout == "[1.0, 1.5]\n"
    assert "running      [" in run.stderr
    assert "of 30s" in run.stderr
    # The terminal turns the final newline into \r\n, so the final state is the last line but one.
    final_line = run.stderr.split("\r")[-2]
    assert run.stderr.endswith("\r\n")
    assert final_line.startswith("finished     [########################] 100% 2/2 done, "), run.stderr


def test_text_bar_shows_job_progress(redis_url, start_worker):
    start_worker()

    run = run_in_terminal(
        TERMINAL_PRELUDE + "job = Queue().enqueue(count_with_progress, 6, 0.3)\n"
        "print(job.latest_result(timeout=30).return_value)",
        redis_url,
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout == "6\n"
    assert "running      [" in run.stderr
    assert "/6, counting, " in run.stderr
    assert "finished     [########################] 100% 6/6, counting, " in run.stderr


def test_text_bar_absent_for_quick_job(redis_url, start_worker):
    start_worker()

    run = run_in_terminal(
        TERMINAL_PRELUDE + "print(Queue().enqueue(sleep_seconds, 0.1).latest_result(timeout=30).return_value)",
        redis_url,
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout == "0.1\n"
    assert run.stderr == ""


def test_text_bar_absent_when_stderr_is_not_terminal(redis_url, start_worker):
    start_worker()

    run = run_in_terminal(
        TERMINAL_PRELUDE + "print(Queue().enqueue(sleep_seconds, 1.5).latest_result(timeout=30).return_value)",
        redis_url,
        stderr_is_terminal=False,
    )

    assert run.returncode == 0, run.stdout
    assert run.stdout == "1.5\n"


def test_text_bar_shows_interrupted_on_ctrl_c(redis_url, start_worker, connection):
    start_worker()
    script = TERMINAL_PRELUDE + """
job = Queue().enqueue(sleep_seconds, 4)
print(job.id, flush=True)
try:
    job.latest_result(timeout=30)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""

    run = run_in_terminal(script, redis_url, interrupt_when="running")

    assert run.returncode == 0, run.stderr
    job_id, caught = run.stdout.split()
    assert caught == "KeyboardInterrupt"
    assert run.exit_after_interrupt_s is not None
    assert run.exit_after_interrupt_s < 1.5
    assert "interrupted  [" in run.stderr
    assert run.stderr.rstrip().endswith("the job keeps running")
    result = Job(job_id, connection=connection).latest_result(timeout=30)
    assert result.type == Result.Type.SUCCESSFUL


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (BarState("running", 0.5, "1/2 done, 3s"), "running      [######------]  50% 1/2 done, 3s"),
        (BarState("queued", None, "3s"), "queued       [            ]  --  3s"),
        (BarState("finished", 1.0, "1s"), "finished     [############] 100% 1s"),
    ],
)
def test_format_text_bar(state, expected):
    assert format_text_bar(state, 12) == expected


# The widget bar, in a real kernel


@dataclass
class KernelSession:
    """An nbclient client on a running kernel, with each executed cell's reply."""

    client: NotebookClient
    replies: dict[int, dict] = field(default_factory=dict)

    async def run(self, source: str) -> nbformat.NotebookNode:
        """Run ``source`` as the next cell and return the cell; its reply is in ``replies``."""
        cell = nbformat.v4.new_code_cell(source)
        self.client.nb.cells.append(cell)
        index = len(self.client.nb.cells) - 1
        await self.client.async_execute_cell(cell, index)
        return cell

    def reply(self, cell_index: int) -> dict:
        return self.replies[cell_index]["content"]

    def progress_bars(self) -> list[dict]:
        """Return the state of every FloatProgress widget the kernel created."""
        self.client.set_widgets_metadata()
        widgets = self.client.nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        return [
            model["state"] for model in widgets.get("state", {}).values() if model["model_name"] == "FloatProgressModel"
        ]

    def labels(self) -> list[str]:
        self.client.set_widgets_metadata()
        widgets = self.client.nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        models = widgets.get("state", {}).values()
        return [model["state"]["value"] for model in models if model["model_name"] == "LabelModel"]


def run_in_kernel(directory: Path, scenario: Callable[[KernelSession], object]) -> object:
    """Start a kernel of this Python in ``directory``, run the async ``scenario`` on it, and shut it down."""
    kernels = directory / "kernels"
    write_kernel_spec(kernels / "python3")

    async def main() -> object:
        kernel_manager = AsyncKernelManager(
            kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
        )
        session = KernelSession(client=None)  # type: ignore[arg-type]
        session.client = NotebookClient(
            nbformat.v4.new_notebook(),
            km=kernel_manager,
            timeout=60,
            allow_errors=True,
            store_widget_state=True,
            resources={"metadata": {"path": str(directory)}},
            on_cell_executed=lambda cell, cell_index, execute_reply: session.replies.__setitem__(
                cell_index, execute_reply
            ),
        )
        async with session.client.async_setup_kernel():
            return await scenario(session)

    return asyncio.run(main())


KERNEL_PRELUDE = TERMINAL_PRELUDE + """
def fail(message):
    raise ValueError(message)
"""


@pytest.fixture
def kernel_directory(redis_url, monkeypatch, tmp_path) -> Path:
    """A working folder for kernels that reach the test Redis server through ``NBQUEUE_REDIS_URL``."""
    monkeypatch.setenv("NBQUEUE_REDIS_URL", redis_url)
    directory = tmp_path / "kernel"
    directory.mkdir()
    return directory


def assert_cell_ok(session: KernelSession, index: int) -> None:
    reply = session.reply(index)
    assert reply["status"] == "ok", f"{reply.get('ename')}: {reply.get('evalue')}"


def widget_views(cell: nbformat.NotebookNode) -> list[str]:
    return [
        output["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for output in cell.outputs
        if output["output_type"] == "display_data" and "application/vnd.jupyter.widget-view+json" in output["data"]
    ]


def test_kernel_long_wait_shows_finished_widget(kernel_directory, start_worker):
    start_worker()

    async def scenario(session: KernelSession) -> None:
        await session.run(KERNEL_PRELUDE)
        cell = await session.run(
            "result = Queue().enqueue(sleep_seconds, 2).latest_result(timeout=30)\nresult.type.name"
        )
        assert_cell_ok(session, 1)
        assert cell.outputs[-1]["data"]["text/plain"] == "'SUCCESSFUL'"
        assert len(widget_views(cell)) == 1
        (bar,) = session.progress_bars()
        assert bar["description"] == "finished"
        assert bar["value"] == 1.0
        assert bar["bar_style"] == "success"

    run_in_kernel(kernel_directory, scenario)


def test_kernel_quick_wait_shows_no_widget(kernel_directory, start_worker):
    start_worker()

    async def scenario(session: KernelSession) -> None:
        await session.run(KERNEL_PRELUDE)
        cell = await session.run("Queue().enqueue(sleep_seconds, 0.1).latest_result(timeout=30).return_value")
        assert_cell_ok(session, 1)
        assert cell.outputs[-1]["data"]["text/plain"] == "0.1"
        assert widget_views(cell) == []
        assert session.progress_bars() == []

    run_in_kernel(kernel_directory, scenario)


def test_kernel_job_progress_fills_bar(kernel_directory, start_worker):
    start_worker()

    async def scenario(session: KernelSession) -> None:
        await session.run(KERNEL_PRELUDE)
        await session.run("Queue().enqueue(count_with_progress, 8, 0.25).latest_result(timeout=30).return_value")
        assert_cell_ok(session, 1)
        (bar,) = session.progress_bars()
        assert bar["description"] == "finished"
        assert bar["value"] == 1.0
        (label,) = session.labels()
        assert label.startswith("8/8, counting, ")

    run_in_kernel(kernel_directory, scenario)


def test_kernel_map_shows_one_aggregate_bar(kernel_directory, start_worker):
    start_worker("--concurrency", "2")

    async def scenario(session: KernelSession) -> None:
        await session.run(KERNEL_PRELUDE)
        cell = await session.run("Queue().map(sleep_seconds, [1.5, 1.5, 0.1], timeout=30)")
        assert_cell_ok(session, 1)
        assert cell.outputs[-1]["data"]["text/plain"] == "[1.5, 1.5, 0.1]"
        assert len(widget_views(cell)) == 1
        (bar,) = session.progress_bars()
        assert bar["description"] == "finished"
        (label,) = session.labels()
        assert label.startswith("3/3 done, ")

    run_in_kernel(kernel_directory, scenario)


def test_kernel_map_failure_shows_failed_bar(kernel_directory, start_worker):
    start_worker()

    async def scenario(session: KernelSession) -> None:
        await session.run(KERNEL_PRELUDE)
        await session.run(
            "jobs = [Queue().enqueue(sleep_seconds, 1.5), Queue().enqueue(fail, 'bad')]\n"
            "nbqueue.waiting.wait(jobs, 30)"
        )
        reply = session.reply(1)
        assert reply["ename"] == "JobsFailedError"
        assert reply["evalue"] == "1 of 2 jobs failed:\n  [1] ValueError: bad"
        (bar,) = session.progress_bars()
        assert bar["description"] == "failed"
        assert bar["bar_style"] == "danger"
        (label,) = session.labels()
        assert label.startswith("2/2 done, 1 failed, ")

    run_in_kernel(kernel_directory, scenario)


@pytest.mark.parametrize("wait_call", ["job.latest_result(timeout=30)", "nbqueue.waiting.wait([job], 30)"])
def test_kernel_interrupt_ends_wait_within_a_second(kernel_directory, start_worker, connection, wait_call):
    start_worker()

    async def scenario(session: KernelSession) -> None:
        await session.run(KERNEL_PRELUDE + "job = Queue().enqueue(sleep_seconds, 4)\nprint(job.id)")
        job_id = session.client.nb.cells[0].outputs[0]["text"].strip()
        waiting = asyncio.create_task(session.run(wait_call))

        # The bar appears after about a second, while the job still runs.
        deadline = time.monotonic() + 10
        while not session.client.widget_state and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert session.progress_bars(), "no progress bar appeared"
        interrupted_at = time.monotonic()
        await session.client.km.interrupt_kernel()
        cell = await waiting
        elapsed_s = time.monotonic() - interrupted_at

        reply = session.reply(1)
        assert reply["status"] == "error"
        assert reply["ename"] == "KeyboardInterrupt"
        assert elapsed_s < 1.5
        assert len(widget_views(cell)) == 1
        (bar,) = session.progress_bars()
        assert bar["description"] == "interrupted"
        assert bar["bar_style"] == "warning"
        (label,) = session.labels()
        assert label.endswith("the job keeps running")

        result = Job(job_id, connection=connection).latest_result(timeout=30)
        assert result.type == Result.Type.SUCCESSFUL
        assert Job(job_id, connection=connection).results() == [result]
        # The kernel's connections still work after the interrupted read.
        cell = await session.run("job.latest_result(timeout=30).return_value")
        assert_cell_ok(session, 2)
        assert cell.outputs[-1]["data"]["text/plain"] == "4"

    run_in_kernel(kernel_directory, scenario)
