"""Tests of the ``%%enqueue`` magic in real IPython kernels (nbclient), with real workers and Redis.

The kernel inherits ``NBQUEUE_REDIS_URL`` from the test, so ``Queue()`` inside it uses the test server.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from nbqueue import Job, JobStatus, Queue, Result

WAIT = "latest_result(timeout=30)"


@dataclass
class CellRun:
    """One executed cell: its outputs as text, and the kernel's reply."""

    stdout: str
    stderr: str
    results: list[dict]
    status: str
    ename: str | None
    evalue: str | None


def run_cells(sources: list[str], directory: Path) -> list[CellRun]:
    """Run each source as a cell, in order, in a new kernel of this Python; errors do not stop the run."""
    kernels = directory / "kernels"
    write_kernel_spec(kernels / "python3")
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    replies: dict[int, dict] = {}
    client = NotebookClient(
        notebook,
        km=kernel_manager,
        timeout=60,
        allow_errors=True,
        resources={"metadata": {"path": str(directory)}},
        on_cell_executed=lambda cell, cell_index, execute_reply: replies.__setitem__(cell_index, execute_reply),
    )
    client.execute()

    runs = []
    for index, cell in enumerate(notebook.cells):
        reply = replies[index]["content"]
        runs.append(
            CellRun(
                stdout="".join(output["text"] for output in cell.outputs if output.get("name") == "stdout"),
                stderr="".join(output["text"] for output in cell.outputs if output.get("name") == "stderr"),
                results=[output["data"] for output in cell.outputs if output["output_type"] == "execute_result"],
                status=reply["status"],
                ename=reply.get("ename"),
                evalue=reply.get("evalue"),
            )
        )
    return runs


@pytest.fixture
def kernel_directory(redis_url, monkeypatch, tmp_path) -> Path:
    """A working folder for kernels that reach the test Redis server through ``NBQUEUE_REDIS_URL``."""
    monkeypatch.setenv("NBQUEUE_REDIS_URL", redis_url)
    directory = tmp_path / "kernel"
    directory.mkdir()
    return directory


def assert_ok(run: CellRun) -> None:
    assert run.status == "ok", f"{run.ename}: {run.evalue}\n{run.stderr}"


def test_kernel_runs_test_python(kernel_directory):
    (run,) = run_cells(["import sys\nprint(sys.executable)"], kernel_directory)

    assert run.stdout == f"{sys.executable}\n"


def test_enqueue_returns_last_expression_value(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(
        [
            "%load_ext nbqueue",
            "a = 6\nb = 7",
            "%%enqueue -o job\nproduct = a * b\nproduct + 0",
            f"print(repr(job.{WAIT}.return_value))",
            "print(type(job).__name__, job.description, job.origin)",
        ],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    assert runs[3].stdout == "42\n"
    assert runs[4].stdout == "Job product = a * b default\n"


def test_enqueue_returns_job_for_display(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(["%load_ext nbqueue", "%%enqueue\n1 + 1", f"_.{WAIT}.return_value"], kernel_directory)

    for run in runs:
        assert_ok(run)
    (bundle,) = runs[1].results
    assert bundle["text/plain"].startswith("Job ")
    assert "nbqueue-job" in bundle["text/html"]
    assert runs[2].results[0]["text/plain"] == "2"


def test_enqueue_binds_only_output_name(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(
        [
            "%load_ext nbqueue",
            "x = 1\nnames_before = {name for name in globals() if not name.startswith('_')}",
            "%%enqueue -o cell_job\ny = x + 1\nx = 100\ny",
            f"value = cell_job.{WAIT}.return_value",
            "print(sorted({name for name in globals() if not name.startswith('_')} - names_before))",
            "print(x, value)",
        ],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    assert runs[4].stdout == "['cell_job', 'names_before', 'value']\n"
    assert runs[5].stdout == "1 2\n"


def test_enqueue_captures_values_at_submit_time(kernel_directory, start_worker, connection):
    runs = run_cells(
        [
            "%load_ext nbqueue",
            "x = 1\nitems = [1, 2]",
            "%%enqueue -o job\n(x, list(items))",
            "x = 2\nitems.append(3)",
            "print(job.id)",
        ],
        kernel_directory,
    )
    for run in runs:
        assert_ok(run)
    job_id = runs[4].stdout.strip()

    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.log()

    job = Job.fetch(job_id, connection=connection)
    assert job.get_status() == JobStatus.FINISHED
    assert job.latest_result().return_value == (1, [1, 2])


def test_enqueue_queue_and_timeout_options(kernel_directory, connection):
    runs = run_cells(
        ["%load_ext nbqueue", "%%enqueue -q 'reports' -t \"90s\" -o job\n1", "print(job.id)"], kernel_directory
    )

    for run in runs:
        assert_ok(run)
    job = Job.fetch(runs[2].stdout.strip(), connection=connection)
    assert job.origin == "reports"
    assert job.timeout == 90
    assert job.func_name == "nbqueue.jupyter.cell.run_cell"
    assert Queue("reports", connection=connection).count == 1


def test_enqueue_failure_traceback_names_cell(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(
        [
            "%load_ext nbqueue",
            "%%enqueue -o job\nnumerator = 1\nnumerator / 0",
            f"result = job.{WAIT}\nprint(result.type.name)\nprint(result.exc_string)",
        ],
        kernel_directory,
    )

    for run in runs:
        assert_ok(run)
    output = runs[2].stdout
    assert output.startswith("FAILED\n")
    assert 'File "<cell In[2] enqueued from notebook>", line 2' in output
    assert "numerator / 0" in output
    assert "ZeroDivisionError: division by zero" in output


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("-t soon", "%%enqueue -t 'soon': job_timeout='soon' is invalid"),
        ("-t 0", "%%enqueue -t '0': job_timeout='0' is invalid: a timeout of 0 is not allowed"),
        ("-q ''", "%%enqueue -q '': Queue name '' is invalid"),
        ("-o 1job", "%%enqueue -o '1job' is invalid: NAME must be a Python identifier"),
        ("-o class", "%%enqueue -o 'class' is invalid: NAME must be a Python identifier"),
        ("--retries 3", "unrecognized arguments: --retries 3"),
    ],
)
def test_enqueue_rejects_invalid_options(kernel_directory, connection, line, expected):
    runs = run_cells(["%load_ext nbqueue", f"%%enqueue {line}\n1"], kernel_directory)

    assert runs[1].status == "error"
    assert runs[1].ename == "UsageError"
    assert expected in runs[1].evalue
    assert Queue(connection=connection).count == 0


def test_enqueue_rejects_unpicklable_name(kernel_directory, connection):
    runs = run_cells(
        ["%load_ext nbqueue", "import threading\nlock = threading.Lock()", "%%enqueue\nlock.locked()"],
        kernel_directory,
    )

    assert runs[2].ename == "UsageError"
    assert "reads the notebook name 'lock', whose value (lock) cannot be pickled" in runs[2].evalue
    assert "Create the value inside the cell" in runs[2].evalue
    assert Queue(connection=connection).count == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("x = 1\n%time x + 1", "Line 2 of the %%enqueue cell needs IPython, which the worker does not run: %time x + 1."),
        ("!echo hello", "Line 1 of the %%enqueue cell needs IPython, which the worker does not run: !echo hello."),
        ("files = !ls\nfiles", "Line 1 of the %%enqueue cell needs IPython, which the worker does not run: files = !ls."),
        ("get_ipython()", "Line 1 of the %%enqueue cell needs IPython, which the worker does not run: get_ipython()."),
    ],
)
def test_enqueue_rejects_ipython_syntax(kernel_directory, connection, body, expected):
    runs = run_cells(["%load_ext nbqueue", f"%%enqueue\n{body}"], kernel_directory)

    assert runs[1].ename == "UsageError"
    assert runs[1].evalue.startswith(expected)
    assert Queue(connection=connection).count == 0


def test_enqueue_rejects_invalid_syntax(kernel_directory, connection):
    runs = run_cells(["%load_ext nbqueue", "%%enqueue\n\ntotal = (1 +\n"], kernel_directory)

    assert runs[1].ename == "UsageError"
    assert runs[1].evalue == (
        "Line 2 of the %%enqueue cell is not valid Python ('(' was never closed): total = (1 +. Nothing was enqueued."
    )
    assert Queue(connection=connection).count == 0


def test_enqueue_rejects_empty_cell(kernel_directory, connection):
    runs = run_cells(["%load_ext nbqueue", "%%enqueue -o job\n\n"], kernel_directory)

    assert runs[1].ename == "UsageError"
    assert runs[1].evalue.startswith("The %%enqueue cell is empty")
    assert Queue(connection=connection).count == 0


def test_enqueue_result_type_is_successful(kernel_directory, start_worker):
    start_worker()

    runs = run_cells(
        ["%load_ext nbqueue", "%%enqueue -o job\n'done'", f"print(job.{WAIT}.type.name)"], kernel_directory
    )

    for run in runs:
        assert_ok(run)
    assert runs[2].stdout == f"{Result.Type.SUCCESSFUL.name}\n"
