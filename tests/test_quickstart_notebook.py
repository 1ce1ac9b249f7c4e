"""Tests of notebooks/quickstart.ipynb, run in a real kernel against a real worker."""

from __future__ import annotations

from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def execute_notebook(path: Path, directory: Path) -> nbformat.NotebookNode:
    """Run every cell of the notebook in a new kernel of this Python, failing on the first error."""
    notebook = nbformat.read(path, as_version=4)
    kernels = directory / "kernels"
    write_kernel_spec(kernels / "python3")
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    NotebookClient(
        notebook, km=kernel_manager, timeout=60, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    return notebook


def cell_by_id(notebook: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    (cell,) = [cell for cell in notebook.cells if cell.get("id") == cell_id]
    return cell


def stdout_of(cell: nbformat.NotebookNode) -> str:
    return "".join(output["text"] for output in cell.outputs if output.get("name") == "stdout")


def test_quickstart_stores_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)

    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], cell.id
            assert cell.execution_count is None, cell.id


def test_quickstart_runs_and_prints_results(redis_url, monkeypatch, start_worker, tmp_path):
    monkeypatch.setenv("NBQUEUE_REDIS_URL", redis_url)
    start_worker()

    notebook = execute_notebook(NOTEBOOK, tmp_path)

    assert stdout_of(cell_by_id(notebook, "enqueue-function")) == "5\n"
    assert stdout_of(cell_by_id(notebook, "enqueue-lambda")) == "49\n"
    assert stdout_of(cell_by_id(notebook, "enqueue-method")) == "Hello, nbqueue!\n"
    assert stdout_of(cell_by_id(notebook, "cell-result")) == "200\n"

    (display,) = cell_by_id(notebook, "display-job").outputs
    assert display["output_type"] == "execute_result"
    assert display["data"]["text/plain"].startswith("Job ")
    html = display["data"]["text/html"]
    assert ">finished<" in html
    assert "total = sum(add(n, n) for n in numbers)" in html
    assert '<pre style="margin:2px 0">200</pre>' in html
