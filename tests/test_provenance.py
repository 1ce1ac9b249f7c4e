"""Tests of job provenance: fields recorded by a real kernel's enqueue, and shown by ``nbqueue info JOB_ID``.

nbclient sends no cell id, so the test sends its execute request itself, with the ``cellId`` metadata that
JupyterLab sends.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from nbqueue import Job, Queue
from nbqueue.jupyter.refresher import refresh_all
from nbqueue.jupyter.widgets import JobWidget
from nbqueue.provenance import collect_provenance, source_hash
from nbqueue.settings import load_settings

CELL_CODE = "from nbqueue import Queue\njob = Queue().enqueue(print, 'hi')\nprint(job.id)"


@pytest.fixture
def kernel(redis_url, monkeypatch, tmp_path):
    """A running kernel of this Python whose notebook path is work/analysis.ipynb; yields its client."""
    monkeypatch.setenv("NBQUEUE_REDIS_URL", redis_url)
    monkeypatch.setenv("JPY_SESSION_NAME", "work/analysis.ipynb")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    write_kernel_spec(tmp_path / "kernels" / "python3")
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    manager.start_kernel(cwd=str(tmp_path))
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def execute_with_cell_id(client, code: str, cell_id: str) -> str:
    """Run ``code`` as the cell ``cell_id``; return its stdout."""
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
    message = client.session.msg("execute_request", content, metadata={"cellId": cell_id})
    client.shell_channel.send(message)
    stdout = []
    while True:
        reply = client.get_iopub_msg(timeout=30)
        if reply["parent_header"].get("msg_id") != message["header"]["msg_id"]:
            continue
        if reply["msg_type"] == "stream" and reply["content"]["name"] == "stdout":
            stdout.append(reply["content"]["text"])
        elif reply["msg_type"] == "error":
            pytest.fail("\n".join(reply["content"]["traceback"]))
        elif reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
            return "".join(stdout)


def test_kernel_job_records_provenance(kernel, connection):
    job_id = execute_with_cell_id(kernel, CELL_CODE, "cell-7f3a").strip()

    job = Job.fetch(job_id, connection)

    assert job.notebook_path == "work/analysis.ipynb"
    assert job.cell_id == "cell-7f3a"
    assert job.cell_source_hash == "sha256:" + hashlib.sha256(CELL_CODE.encode()).hexdigest()


def test_widget_and_html_show_provenance(kernel, connection):
    job = Job.fetch(execute_with_cell_id(kernel, CELL_CODE, "cell-7f3a").strip(), connection)
    short_hash = job.cell_source_hash[: len("sha256:") + 12]

    widget = JobWidget(job)
    refresh_all()
    summary = job._repr_html_()

    assert "notebook <code>work/analysis.ipynb</code>" in widget.details_html.value
    assert "cell id <code>cell-7f3a</code>" in widget.details_html.value
    assert f"cell source <code>{short_hash}</code>" in widget.details_html.value
    assert '<th style="text-align:left;padding-right:1em">Cell id</th><td style="text-align:left">cell-7f3a</td>' in summary
    widget.close()


def test_info_shows_provenance(kernel, redis_url):
    job_id = execute_with_cell_id(kernel, CELL_CODE, "cell-7f3a").strip()

    shown = subprocess.run(
        [sys.executable, "-m", "nbqueue", "info", job_id, "--url", redis_url],
        capture_output=True, text=True, timeout=30,
    )

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"job:         {job_id}" in lines
    assert "status:      queued" in lines
    assert "notebook:    work/analysis.ipynb" in lines
    assert "cell id:     cell-7f3a" in lines
    assert f"cell source: {source_hash(CELL_CODE)}" in lines


def test_outside_kernel_records_only_session(connection, monkeypatch):
    monkeypatch.setenv("JPY_SESSION_NAME", "other.ipynb")

    job = Queue(connection=connection).enqueue(print, 1)

    assert collect_provenance(load_settings()) == {"notebook_path": "other.ipynb"}
    assert (job.notebook_path, job.cell_id, job.cell_source_hash) == ("other.ipynb", None, None)


def test_plain_process_records_nothing(connection):
    job = Queue(connection=connection).enqueue(print, 1)

    assert Job.fetch(job.id, connection).notebook_path is None
    assert connection.hget(f"nbqueue:job:{job.id}", "cell_source_hash") is None
