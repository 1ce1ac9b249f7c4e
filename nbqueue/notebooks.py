"""Running a whole notebook as a job.

The client reads the notebook as JSON and sends it in the job's payload, so the worker needs no access to
the client's files. On the worker, :func:`run_notebook` injects the parameters, executes every code cell
with nbclient and returns the executed notebook (nbformat v4, validated), with each cell's run time in
seconds in ``cell.metadata.nbqueue.duration_s``. nbclient and nbformat are imported only there, so neither
the client nor a worker that runs no notebook needs them.

The kernel is started through a small guard process (:data:`_KERNEL_GUARD`). jupyter_client starts
kernels in a new session, out of reach of the supervisor's kill of the work horse's process group. So the
guard requests a signal from Linux when the work horse dies (``PR_SET_PDEATHSIG``), and then kills the
kernel's process group, which contains the kernel and the processes it started.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbqueue import keys
from nbqueue.context import get_current_job
from nbqueue.errors import InvalidOptionError, NbqueueError
from nbqueue.progress import set_progress

#: Job hash field that keeps the partial executed notebook (JSON) of a notebook job whose cell failed.
EXECUTED_NOTEBOOK_FIELD = "executed_notebook"
#: Qualified name of :func:`run_notebook`, the ``func`` field of every notebook job.
RUN_NOTEBOOK_FUNC = "nbqueue.notebooks.run_notebook"
#: Tag of the cell whose variables the parameters override (papermill's convention).
PARAMETERS_TAG = "parameters"
#: Tag of the cell that contains the injected parameters.
INJECTED_PARAMETERS_TAG = "injected-parameters"

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Run as `python -c _KERNEL_GUARD WORK_HORSE_PID KERNEL_ARGV...`. It forks the kernel into a process group
# of its own and forwards SIGINT (jupyter_client's interrupt) to that group. It kills the group with
# SIGKILL when the kernel exits, on SIGTERM or SIGHUP (jupyter_client's terminate), and when the work
# horse dies. NOTE: processes that the kernel's code moves to another session or process group escape it.
_KERNEL_GUARD = """\
import ctypes, os, signal, sys
kernel_pid = 0
def stop(signum, frame):
    if kernel_pid:
        try:
            os.killpg(kernel_pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(128 + signum)
def interrupt(signum, frame):
    if kernel_pid:
        try:
            os.killpg(kernel_pid, signal.SIGINT)
        except OSError:
            pass
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, stop)
signal.signal(signal.SIGINT, interrupt)
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the work horse dies
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the work horse died before prctl took effect
argv = sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    os.environ["JPY_PARENT_PID"] = str(os.getppid())  # ipykernel exits when this pid stops being its parent
    os.execvp(argv[0], argv)
try:
    os.setpgid(pid, pid)
except OSError:
    pass  # the child has already set it, or exec'd
kernel_pid = pid
_, status = os.waitpid(pid, 0)
try:
    os.killpg(pid, signal.SIGKILL)
except OSError:
    pass
sys.exit(os.waitstatus_to_exitcode(status))
"""


class NotebookCellError(NbqueueError):
    """Raised in a notebook job when a cell raises. The message names the cell's index in the executed
    notebook (counting from 0, the injected parameters cell included) and its source's first line, then
    gives the kernel's traceback. The partial executed notebook is kept with the job."""


def read_notebook(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a notebook file as JSON; raise :class:`InvalidOptionError` if it is missing or not a notebook."""
    try:
        with open(path, encoding="utf-8") as file:
            notebook = json.load(file)
    except OSError as exc:
        raise InvalidOptionError(f"Cannot read notebook {os.fspath(path)!r}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InvalidOptionError(f"Notebook {os.fspath(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise InvalidOptionError(
            f"Notebook {os.fspath(path)!r} is invalid: it has no list of cells (only nbformat 4 notebooks can run)"
        )
    return notebook


def validate_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the parameters as a dict; raise :class:`InvalidOptionError` for one that cannot be injected.

    A parameter is injected as ``name = repr(value)``, so its name must be an identifier and its value a
    literal that :func:`ast.literal_eval` reads back as an equal value (numbers, strs, bools, None, and
    lists, tuples, dicts and sets of them).
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise InvalidOptionError(f"parameters={parameters!r} is invalid: pass a dict of names to values")
    checked = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidOptionError(f"Parameter name {name!r} is invalid: use a Python identifier")
        try:
            round_trips = ast.literal_eval(repr(value)) == value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            round_trips = False
        if not round_trips:
            raise InvalidOptionError(
                f"Parameter {name}={value!r} is invalid: its repr is not a Python literal; pass a number, str, "
                f"bool, None, or a list, tuple, dict or set of those"
            )
        checked[name] = value
    return checked


def parse_parameter(text: str) -> tuple[str, Any]:
    """Parse ``NAME=VALUE`` from the command line: VALUE is a Python literal if it reads as one, else a str."""
    name, separator, raw = text.partition("=")
    if not separator or not name.strip():
        raise InvalidOptionError(f"Parameter {text!r} is invalid: write it as NAME=VALUE")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    return name.strip(), value


def inject_parameters(notebook: Any, parameters: Mapping[str, Any], new_code_cell: Any) -> None:
    """Insert a cell that assigns the parameters after the cell tagged ``parameters``, or at the top.

    A cell injected by an earlier run (tagged ``injected-parameters``) is replaced.
    """
    cells = notebook["cells"]
    cells[:] = [cell for cell in cells if INJECTED_PARAMETERS_TAG not in _tags(cell)]
    if not parameters:
        return
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    cell = new_code_cell(source)
    cell["metadata"]["tags"] = [INJECTED_PARAMETERS_TAG]
    position = next((index + 1 for index, old in enumerate(cells) if PARAMETERS_TAG in _tags(old)), 0)
    cells.insert(position, cell)


def run_notebook(
    notebook: dict[str, Any],
    parameters: dict[str, Any] | None = None,
    kernel_name: str | None = None,
    cwd: str | None = None,
) -> Any:
    """Execute ``notebook`` (its JSON as a dict) and return the executed notebook as an nbformat NotebookNode.

    This is the function of every notebook job. ``kernel_name`` defaults to the notebook's kernelspec,
    else ``python3``. The kernel runs in ``cwd`` when that folder exists on the worker, else in the work
    horse's working folder. A failing cell raises :class:`NotebookCellError`.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # reads() joins the line lists of the file format and upgrades older notebooks to version 4.
    node = nbformat.reads(json.dumps(notebook), as_version=4)
    inject_parameters(node, validate_parameters(parameters), nbformat.v4.new_code_cell)
    name = kernel_name or node.get("metadata", {}).get("kernelspec", {}).get("name") or "python3"
    tracker = _CellTracker(node)
    client = NotebookClient(
        node,
        km=_guarded_kernel_manager(name),
        timeout=None,
        resources={"metadata": {"path": cwd if cwd and os.path.isdir(cwd) else os.getcwd()}},
        on_cell_execute=tracker.on_cell_execute,
        on_cell_executed=tracker.on_cell_executed,
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        _keep_partial_notebook(node)
        raise NotebookCellError(tracker.failure_message(exc)) from None
    nbformat.validate(node)
    return node


class _CellTracker:
    """The nbclient hooks of one run: progress, cell run times and the index of the running cell."""

    def __init__(self, notebook: Any):
        self.total = sum(1 for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip())
        self.done = 0
        self.index = -1
        self.cell: Any = None
        self.started_at = 0.0
        set_progress(0, self.total)

    def on_cell_execute(self, cell: Any, cell_index: int) -> None:
        self.index, self.cell, self.started_at = cell_index, cell, time.monotonic()
        _report_running_cell(self.done, self.total, f"cell {cell_index}: {_first_line(cell.source)}")

    def on_cell_executed(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        cell.metadata["nbqueue"] = {"duration_s": round(time.monotonic() - self.started_at, 6)}
        self.done += 1
        set_progress(self.done, self.total, f"cell {cell_index}: {_first_line(cell.source)}")
        # Forward the cell's printed text, so that the job's output stream shows it while the notebook runs.
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                stream = sys.stderr if output.get("name") == "stderr" else sys.stdout
                stream.write(output.get("text", ""))

    def failure_message(self, error: Any) -> str:
        source = self.cell.source if self.cell is not None else ""
        traceback_lines: list[str] = []
        for output in self.cell.get("outputs", []) if self.cell is not None else []:
            if output.get("output_type") == "error":
                traceback_lines = list(output.get("traceback", []))
        traceback = "\n".join(traceback_lines) or f"{error.ename}: {error.evalue}"
        return f"Cell {self.index} failed: {_first_line(source)}\n\n{_ANSI_ESCAPE.sub('', traceback)}"


def _report_running_cell(done: int, total: int, message: str) -> None:
    """Write the running cell as the progress message at once.

    :func:`set_progress` drops writes that come within its throttle interval, which would leave a slow
    cell that starts right after a quick one shown under the quick one's name.
    """
    job = get_current_job()
    if job is None:
        return
    job.connection.hset(
        keys.job(job.id),
        mapping={
            "progress_done": repr(float(done)),
            "progress_total": repr(float(total)),
            "progress_message": message[:500],
            "progress_at": repr(time.time()),
        },
    )


def _keep_partial_notebook(notebook: Any) -> None:
    """Store the notebook as far as it ran in the job's hash, so it expires and is deleted with the job."""
    job = get_current_job()
    if job is None:
        return
    job.connection.hset(keys.job(job.id), EXECUTED_NOTEBOOK_FIELD, json.dumps(notebook))


def _guarded_kernel_manager(kernel_name: str) -> Any:
    """Return a kernel manager whose kernel dies with the work horse (see :data:`_KERNEL_GUARD`)."""
    from jupyter_client.manager import AsyncKernelManager

    class GuardedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            command = super().format_kernel_cmd(extra_arguments)
            return [sys.executable, "-c", _KERNEL_GUARD, str(os.getpid()), *command]

    return GuardedKernelManager(kernel_name=kernel_name)


def _tags(cell: Mapping[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def notebook_description(path: str | os.PathLike[str], parameters: Mapping[str, Any]) -> str:
    """Return the job description of a notebook run: its file name and parameters."""
    arguments = ", ".join(f"{name}={value!r}" for name, value in parameters.items())
    text = f"notebook {Path(path).name}" + (f" ({arguments})" if arguments else "")
    return text if len(text) <= 200 else text[:197] + "..."
