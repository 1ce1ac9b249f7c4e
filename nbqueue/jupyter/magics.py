"""The ``%%enqueue`` cell magic: run a notebook cell as a job on a worker.

Load it with ``%load_ext nbqueue``. The cell runs on the worker through :func:`nbqueue.jupyter.cell.run_cell`,
in a namespace made of the notebook values that the cell reads, captured when the cell is submitted. This is
the only nbqueue module that imports IPython.
"""

from __future__ import annotations

import ast
import keyword
import pickle
import re

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from nbqueue.errors import InvalidOptionError, PayloadTooLargeError, SerializationError
from nbqueue.job import Job
from nbqueue.jupyter.cell import CELL_FILENAME, compile_cell, free_names, run_cell
from nbqueue.queue import Queue

#: Names IPython keeps in the notebook namespace for itself. A cell that reads one gets the builtin (or a
#: NameError) on the worker, never the notebook's value.
IPYTHON_NAMES = frozenset(
    {"In", "Out", "_", "__", "___", "_oh", "_dh", "exit", "quit", "get_ipython", "__builtins__", "__builtin__"}
)
# The input history: _i, _ii, _iii, _ih and _i<N>.
_INPUT_HISTORY_NAME = re.compile(r"_i(?:|i|ii|h|\d+)")


@magics_class
class EnqueueMagics(Magics):
    """Magics that submit notebook cells as jobs."""

    @cell_magic
    @magic_arguments()
    @argument("-q", "--queue", default="default", help="Name of the queue to put the job on. Default: 'default'.")
    @argument(
        "-t",
        "--timeout",
        default=None,
        help="How long the job may run: seconds, or a string like '90s', '10m' or '1h', or -1 for no limit. "
        "Default: the queue's default timeout, else 180 s.",
    )
    @argument("-o", "--output", metavar="NAME", default=None, help="Bind the Job to NAME in the notebook namespace.")
    def enqueue(self, line: str, cell: str) -> Job:
        """Run the cell as a job on a worker and return its Job, which displays its status and result.

        The notebook values that the cell reads are captured when the cell is submitted, so later changes
        do not reach the job. The value of the cell's last expression is the job's return value. Names
        that the cell assigns exist only on the worker: the notebook namespace is not changed, except for
        the name given with -o. IPython syntax (%magics, !commands, ?help) is rejected because the worker
        runs plain Python.
        """
        options = parse_argstring(self.enqueue, line)
        # IPython splits magic arguments in non-POSIX mode, which keeps quotes: -q 'reports' gives "'reports'".
        options.queue = _unquote(options.queue)
        options.timeout = _unquote(options.timeout)
        options.output = _unquote(options.output)
        if options.output is not None and not _is_identifier(options.output):
            raise UsageError(
                f"%%enqueue -o {options.output!r} is invalid: NAME must be a Python identifier that is not a "
                "keyword, such as cell_job"
            )

        description = _first_line(cell)
        source = self.shell.transform_cell(cell)
        filename = self._cell_filename()
        self._check_source(cell, source, filename)
        captured = self._capture(source)

        try:
            queue = Queue(options.queue)
        except InvalidOptionError as exc:
            raise UsageError(f"%%enqueue -q {options.queue!r}: {exc}") from None

        try:
            job = queue.enqueue_call(
                run_cell,
                args=(source, captured, filename),
                job_timeout=options.timeout,
                description=description,
            )
        except InvalidOptionError as exc:
            raise UsageError(f"%%enqueue -t {options.timeout!r}: {exc}") from None
        except PayloadTooLargeError as exc:
            raise UsageError(f"The %%enqueue job is too large, so nothing was enqueued: {exc}") from None
        except SerializationError as exc:
            raise UsageError(_describe_unpicklable(captured, exc)) from None

        if options.output is not None:
            self.shell.user_ns[options.output] = job
        return job

    def _cell_filename(self) -> str:
        """Return the file name that the job's tracebacks show, with the cell's number as the notebook shows it."""
        # IPython stores a cell's input before running it, so the last entry of the input history is this
        # cell. shell.execution_count is not used because IPython 9.18 increments it before running the cell
        # (InteractiveShell.run_cell_async), so during the cell it is one more than the number shown.
        history = getattr(self.shell.history_manager, "input_hist_parsed", None)
        if not history:
            return CELL_FILENAME
        return f"<cell In[{len(history) - 1}] enqueued from notebook>"

    def _check_source(self, cell: str, source: str, filename: str) -> None:
        """Raise UsageError if the transformed cell is empty, not valid Python, or needs IPython to run."""
        if not cell.strip():
            raise UsageError("The %%enqueue cell is empty: write the code to run on the worker below the %%enqueue line")

        try:
            tree = ast.parse(source, filename=filename)
            compile_cell(source, filename)
        except SyntaxError as exc:
            line_number, text = self._find_original_line(cell, source, exc.lineno or 1)
            raise UsageError(
                f"Line {line_number} of the %%enqueue cell is not valid Python ({exc.msg}): {text}. "
                "Nothing was enqueued."
            ) from None

        # IPython turns %magics, !commands and ?help into get_ipython() calls, which fail on a worker.
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "get_ipython":
                line_number, text = self._find_original_line(cell, source, node.lineno)
                raise UsageError(
                    f"Line {line_number} of the %%enqueue cell needs IPython, which the worker does not run: "
                    f"{text}. Run it in a cell of its own, or write it in plain Python."
                )

    def _find_original_line(self, cell: str, source: str, transformed_line_number: int) -> tuple[int, str]:
        """Find the cell line that IPython turned into line ``transformed_line_number`` of ``source``.

        Line numbers differ because IPython drops leading blank lines and joins continued lines.
        """
        transformed_lines = source.splitlines()
        if not 1 <= transformed_line_number <= len(transformed_lines):
            return transformed_line_number, "(end of the cell)"

        transformed = transformed_lines[transformed_line_number - 1].strip()
        for index, original in enumerate(cell.splitlines(), start=1):
            if original.strip() and self.shell.transform_cell(original.strip()).strip() == transformed:
                return index, original.strip()
        # A line continued with backslashes becomes one line, which matches no single cell line.
        return transformed_line_number, transformed

    def _capture(self, source: str) -> dict[str, object]:
        """Return the notebook values of the names the cell reads, for those the notebook defines."""
        user_ns = self.shell.user_ns
        return {
            name: user_ns[name]
            for name in sorted(free_names(source))
            if name in user_ns and not _is_ipython_name(name)
        }


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register the ``%%enqueue`` magic. ``%load_ext nbqueue`` calls this."""
    ipython.register_magics(EnqueueMagics)


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _is_ipython_name(name: str) -> bool:
    return name in IPYTHON_NAMES or _INPUT_HISTORY_NAME.fullmatch(name) is not None


def _unquote(value: str | None) -> str | None:
    """Remove one pair of matching quotes around ``value``."""
    if value is not None and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _first_line(cell: str) -> str:
    """Return the first non-blank line of the cell, which describes the job."""
    for line in cell.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _describe_unpicklable(captured: dict[str, object], error: SerializationError) -> str:
    """Return a message naming the first captured notebook value that cannot be pickled, else the core's message."""
    for name, value in captured.items():
        try:
            cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any exception from pickling means this value is the cause
            return (
                f"The %%enqueue cell reads the notebook name {name!r}, whose value ({type(value).__name__}) cannot "
                f"be pickled: {type(exc).__name__}: {exc}. Nothing was enqueued. Create the value inside the cell, "
                "or stop reading it there."
            )
    return f"The %%enqueue job cannot be pickled, so nothing was enqueued: {error}"
