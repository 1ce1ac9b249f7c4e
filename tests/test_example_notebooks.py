"""Tests of the example notebooks in notebooks/, each run in a real kernel against the test Redis and a real worker.

The kernel inherits ``NBQUEUE_REDIS_URL`` from the test, so ``Queue()`` in the notebooks uses the test
server. nbclient stores the final state of every widget in the notebook's metadata, which is how the tests
read the progress bars and job widgets that the notebooks display.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
EXAMPLES = ["widgets_and_progress.ipynb", "map.ipynb", "retries_and_timeouts.ipynb", "monitor.ipynb"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def execute_notebook(path: Path, directory: Path) -> nbformat.NotebookNode:
    """Run every cell of the notebook in a new kernel of this Python, failing on the first error."""
    notebook = nbformat.read(path, as_version=4)
    kernels = directory / "kernels"
    write_kernel_spec(kernels / "python3")
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    NotebookClient(
        notebook, km=kernel_manager, timeout=90, resources={"metadata": {"path": str(directory)}}
    ).execute()
    return notebook


def cell_by_id(notebook: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    (cell,) = [cell for cell in notebook.cells if cell.get("id") == cell_id]
    return cell


def stdout_of(notebook: nbformat.NotebookNode, cell_id: str) -> str:
    cell = cell_by_id(notebook, cell_id)
    return "".join(output["text"] for output in cell.outputs if output.get("name") == "stdout")


def widget_states(notebook: nbformat.NotebookNode) -> dict[str, dict]:
    """Return each widget model's final state by model id, as nbclient stored it."""
    models = notebook.metadata["widgets"][WIDGET_STATE]["state"]
    return {model_id: model["state"] for model_id, model in models.items()}


def shown_widget(notebook: nbformat.NotebookNode, cell_id: str) -> str:
    """Return the model id of the one widget that the cell shows."""
    (model_id,) = [
        output["data"][WIDGET_VIEW]["model_id"]
        for output in cell_by_id(notebook, cell_id).outputs
        if WIDGET_VIEW in output.get("data", {})
    ]
    return model_id


def children(states: dict[str, dict], model_id: str) -> list[str]:
    """Return the model ids of a box widget's children, in order."""
    return [child.removeprefix("IPY_MODEL_") for child in states[model_id]["children"]]


@pytest.fixture
def notebook_directory(redis_url, monkeypatch, tmp_path) -> Path:
    """A working folder for kernels that reach the test Redis server through ``NBQUEUE_REDIS_URL``."""
    monkeypatch.setenv("NBQUEUE_REDIS_URL", redis_url)
    return tmp_path


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_stores_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)

    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], cell.id
            assert cell.execution_count is None, cell.id


def test_widgets_and_progress_notebook(notebook_directory, start_worker):
    start_worker()

    notebook = execute_notebook(NOTEBOOKS / "widgets_and_progress.ipynb", notebook_directory)

    assert stdout_of(notebook, "train-result") == "SUCCESSFUL 0.1\n"
    assert stdout_of(notebook, "download-result") == "1000\n(1000.0, 1000.0, 'bytes')\n"

    for cell_id in ("submit-train", "submit-download"):
        (output,) = cell_by_id(notebook, cell_id).outputs
        assert output["output_type"] == "execute_result"
        assert WIDGET_VIEW in output["data"], cell_id
        assert "on queue default" in output["data"]["text/plain"], cell_id
        assert "nbqueue-job" in output["data"]["text/html"], cell_id

    states = widget_states(notebook)
    job_widget = states[shown_widget(notebook, "submit-train")]
    assert job_widget["_view_name"] == "VBoxView"
    assert "nbqueue-job-widget" in job_widget["_dom_classes"]


def test_map_notebook(notebook_directory, start_worker):
    start_worker()

    notebook = execute_notebook(NOTEBOOKS / "map.ipynb", notebook_directory)

    assert stdout_of(notebook, "map-squares") == "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n"
    assert stdout_of(notebook, "wait-jobs") == "[9, 16, 25]\n"
    assert stdout_of(notebook, "map-failure") == "[1.0, 0.5, None, 0.25]\n2 ZeroDivisionError: division by zero\n"

    # Ten jobs of 0.2 s on one worker take about 2 s, so the map shows its bar, which ends full.
    states = widget_states(notebook)
    bar_id, label_id = children(states, shown_widget(notebook, "map-squares"))
    assert states[bar_id]["description"] == "finished"
    assert states[bar_id]["value"] == 1.0
    assert states[bar_id]["bar_style"] == "success"
    assert states[label_id]["value"].startswith("10/10 done, ")
    assert states[label_id]["value"].endswith(" of 2m 00s")


def test_retries_and_timeouts_notebook(notebook_directory, start_worker):
    start_worker()

    notebook = execute_notebook(NOTEBOOKS / "retries_and_timeouts.ipynb", notebook_directory)

    assert stdout_of(notebook, "retry-flaky") == (
        "['succeeded on run 3']\n"
        "RETRIED: ConnectionError: run 1 failed\n"
        "RETRIED: ConnectionError: run 2 failed\n"
        "SUCCESSFUL: 'succeeded on run 3'\n"
    )
    assert stdout_of(notebook, "returned-retry") == "['data ready']\n['SUCCESSFUL', 'RETRIED', 'RETRIED']\n"
    assert stdout_of(notebook, "retry-limit") == (
        "FAILED: The job returned Retry(max=2, interval=0.0) after 2 retries: the retry limit was reached\n"
        "['FAILED', 'RETRIED', 'RETRIED']\n"
    )
    assert stdout_of(notebook, "cell-value") == "succeeded on run 2\n"
    assert stdout_of(notebook, "timeout") == (
        "FAILED: nbqueue.errors.JobTimeoutException: Job exceeded its timeout of 2 seconds; "
        "its work horse was killed\n"
    )


def test_monitor_notebook(notebook_directory, start_worker):
    start_worker()

    notebook = execute_notebook(NOTEBOOKS / "monitor.ipynb", notebook_directory)

    assert stdout_of(notebook, "run-jobs") == "[0, 2, 4]\n"
    assert stdout_of(notebook, "monitor-data") == (
        "{'queued': 0, 'started': 0, 'scheduled': 0, 'finished': 3, 'failed': 0, 'canceled': 0}\n"
        "['add-2', 'add-1', 'add-0']\n"
        "1\n"
    )
    assert stdout_of(notebook, "cancel-job") == (
        "{'queued': 1, 'started': 0, 'scheduled': 0, 'finished': 0, 'failed': 0, 'canceled': 0}\n"
        "{'queued': 0, 'started': 0, 'scheduled': 0, 'finished': 0, 'failed': 0, 'canceled': 1}\n"
    )

    states = widget_states(notebook)
    monitor = states[shown_widget(notebook, "show-monitor")]
    assert "nbqueue-monitor" in monitor["_dom_classes"]
