"""Tests of notebook jobs: real workers execute notebooks in real kernels (nbclient) against the test Redis.

The worker finds its kernel through ``JUPYTER_PATH``: a private ``python3`` kernelspec that runs this
test's Python.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec

from nbqueue import Job, Queue, Result
from nbqueue.errors import InvalidOptionError
from nbqueue.jupyter.refresher import refresh_all
from nbqueue.jupyter.widgets import JobWidget

RESULT_WAIT_S = 90


@pytest.fixture
def kernel_environment(redis_url, monkeypatch, tmp_path) -> Path:
    """Point kernels started by workers at a private kernelspec and runtime folder; return a work folder."""
    jupyter = tmp_path / "jupyter"
    write_kernel_spec(jupyter / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("NBQUEUE_REDIS_URL", redis_url)
    work = tmp_path / "work"
    work.mkdir()
    return work


def write_notebook(path: Path, cells: list[tuple[str, list[str]]]) -> Path:
    """Write a notebook of code cells given as (source, tags)."""
    notebook = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        notebook.cells.append(cell)
    nbformat.write(notebook, path)
    return path


def stream_text(cell) -> str:
    return "".join(output["text"] for output in cell.outputs if output["output_type"] == "stream")


def test_notebook_parameters_injected_after_tagged_cell(kernel_environment, connection, start_worker):
    path = write_notebook(
        kernel_environment / "report.ipynb",
        [
            ("x = 1\nlabel = 'default'", ["parameters"]),
            ("z = x * 10\nprint(z, label)", []),
            ("z + 2", []),
        ],
    )
    start_worker()

    job = Queue(connection=connection).enqueue_notebook(path, parameters={"x": 4, "label": "run"})
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    notebook = result.return_value
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert [cell.metadata.get("tags") for cell in notebook.cells] == [["parameters"], ["injected-parameters"], None, None]
    assert notebook.cells[1].source == "# Parameters\nx = 4\nlabel = 'run'\n"
    assert stream_text(notebook.cells[2]) == "40 run\n"
    assert notebook.cells[3].outputs[0]["data"]["text/plain"] == "42"
    for cell in notebook.cells:
        assert isinstance(cell.metadata["nbqueue"]["duration_s"], float)
        assert cell.metadata["nbqueue"]["duration_s"] >= 0
    assert job.description == "notebook report.ipynb (x=4, label='run')"
    assert job.is_notebook_job
    job.refresh()
    assert job.progress == (4.0, 4.0, "cell 3: z + 2")
    assert job.executed_notebook() == notebook
    summary = job._repr_html_()
    assert "Download the executed notebook</a>" in summary
    assert '<td style="text-align:right">2</td><td><code>z = x * 10</code></td>' in summary
    assert "<td><code>40 run</code></td>" in summary
    assert "<td><code>42</code></td>" in summary


def test_notebook_parameters_at_top_without_tag(kernel_environment, connection, start_worker):
    path = write_notebook(kernel_environment / "plain.ipynb", [("print(greeting * times)", [])])
    start_worker()

    job = Queue(connection=connection).enqueue_notebook(path, parameters={"greeting": "hi ", "times": 3})
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    cells = result.return_value.cells
    assert cells[0].source == "# Parameters\ngreeting = 'hi '\ntimes = 3\n"
    assert cells[0].metadata["tags"] == ["injected-parameters"]
    assert stream_text(cells[1]) == "hi hi hi \n"


def test_notebook_runs_in_its_folder(kernel_environment, connection, start_worker):
    (kernel_environment / "data.txt").write_text("from the notebook's folder")
    path = write_notebook(kernel_environment / "reader.ipynb", [("print(open('data.txt').read())", [])])
    start_worker()

    result = Queue(connection=connection).enqueue_notebook(path).latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    assert stream_text(result.return_value.cells[0]) == "from the notebook's folder\n"


def test_failing_cell_records_index_and_keeps_notebook(kernel_environment, connection, start_worker):
    path = write_notebook(
        kernel_environment / "broken.ipynb",
        [("a = 1", []), ("print('before')\nraise ValueError('boom ' + str(a))", []), ("never = 1", [])],
    )
    start_worker()

    job = Queue(connection=connection).enqueue_notebook(path)
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.FAILED
    first_line, blank, *traceback = result.exc_string.splitlines()
    assert first_line == "nbqueue.notebooks.NotebookCellError: Cell 1 failed: print('before')"
    assert blank == ""
    assert traceback[-1] == "ValueError: boom 1"
    assert "\x1b[" not in result.exc_string
    notebook = job.executed_notebook()
    assert stream_text(notebook.cells[1]) == "before\n"
    assert [output["output_type"] for output in notebook.cells[1].outputs] == ["stream", "error"]
    assert notebook.cells[2].outputs == []
    assert notebook.cells[2].execution_count is None
    widget = JobWidget(job)
    refresh_all()
    assert widget.status == "failed"
    assert '<td style="text-align:right">1</td><td><code>print(&#x27;before&#x27;)</code></td>' in widget.notebook_html.value
    assert "<td><code>ValueError: boom 1</code></td>" in widget.notebook_html.value
    widget.close()


def test_notebook_timeout_kills_kernel_and_children(kernel_environment, connection, start_worker):
    pid_file = kernel_environment / "pids.txt"
    path = write_notebook(
        kernel_environment / "slow.ipynb",
        [
            (
                "import os, subprocess, sys\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')",
                [],
            ),
            ("import time\ntime.sleep(600)", []),
        ],
    )
    start_worker()

    job = Queue(connection=connection).enqueue_notebook(path, job_timeout=10)
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.FAILED
    assert "JobTimeoutException" in result.exc_string
    kernel_pid, child_pid = (int(text) for text in pid_file.read_text().split())
    for pid in (kernel_pid, child_pid):
        assert wait_for_exit(pid, 10), f"process {pid} still runs after the job timed out"


def test_enqueue_notebook_rejects_bad_parameters(kernel_environment, connection):
    path = write_notebook(kernel_environment / "p.ipynb", [("1", [])])
    queue = Queue(connection=connection)

    with pytest.raises(InvalidOptionError, match="Parameter value=<object object"):
        queue.enqueue_notebook(path, parameters={"value": object()})
    with pytest.raises(InvalidOptionError, match="Parameter name 'not valid' is invalid"):
        queue.enqueue_notebook(path, parameters={"not valid": 1})
    with pytest.raises(InvalidOptionError, match="Cannot read notebook"):
        queue.enqueue_notebook(kernel_environment / "missing.ipynb")
    assert connection.keys("nbqueue:job:*") == []


def test_submit_and_fetch_commands(kernel_environment, redis_url, start_worker, tmp_path):
    path = write_notebook(kernel_environment / "cli.ipynb", [("n = 1", ["parameters"]), ("print(n * 2, name)", [])])
    start_worker()

    submitted = run_cli("submit", str(path), "-p", "n=21", "-p", "name=cli run", "-t", "60", "--url", redis_url)
    job_id = submitted.stdout.strip()
    out = tmp_path / "out.ipynb"
    fetched = run_cli("fetch", job_id, "-o", str(out), "--wait", str(RESULT_WAIT_S), "--url", redis_url)

    assert fetched.stdout == f"Wrote the executed notebook of job {job_id} to {out}\n"
    notebook = nbformat.read(out, as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[1].source == "# Parameters\nn = 21\nname = 'cli run'\n"
    assert stream_text(notebook.cells[2]) == "42 cli run\n"
    assert Job.fetch(job_id, redis_url).timeout == 60.0


def test_fetch_failed_notebook_writes_partial_and_exits_1(kernel_environment, redis_url, start_worker, tmp_path):
    path = write_notebook(kernel_environment / "bad.ipynb", [("print('ran')", []), ("1 / 0", [])])
    start_worker()
    job_id = run_cli("submit", str(path), "--url", redis_url).stdout.strip()
    out = tmp_path / "partial.ipynb"

    fetched = run_cli("fetch", job_id, "-o", str(out), "--wait", str(RESULT_WAIT_S), "--url", redis_url, check=False)

    assert fetched.returncode == 1
    assert fetched.stderr.splitlines() == [
        f"Job {job_id} failed; wrote the notebook as far as it ran to {out}",
        "nbqueue.notebooks.NotebookCellError: Cell 1 failed: 1 / 0",
    ]
    notebook = json.loads(out.read_text())
    assert notebook["cells"][0]["outputs"][0]["text"] == "ran\n"
    assert notebook["cells"][1]["outputs"][0]["ename"] == "ZeroDivisionError"


def test_fetch_rejects_function_job(redis_url, connection):
    job = Queue(connection=connection).enqueue(print, 1)

    fetched = run_cli("fetch", job.id, "--url", redis_url, check=False)

    assert fetched.returncode == 1
    assert fetched.stderr == f"Error: Job {job.id} is not a notebook job: its function is print\n"


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-m", "nbqueue", *args], capture_output=True, text=True, timeout=RESULT_WAIT_S + 20
    )
    if check:
        assert completed.returncode == 0, completed.stderr
    return completed


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Wait until process ``pid`` has exited (a zombie counts as exited); return False on timeout."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # poll(), unlike select(), accepts descriptor numbers above 1023, which a long test run reaches.
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(descriptor)
