"""The ``%%enqueue`` cell magic and ``%enqueue`` line magic: run notebook code as a job on a worker.

Load them with ``%load_ext nbqueue``. The code runs on the worker through :func:`nbqueue.jupyter.cell.run_cell`,
in a namespace made of the notebook values that it reads, captured when it is submitted. This is the only
nbqueue module that imports IPython.
"""

from __future__ import annotations

import ast
import keyword
import pickle
import re
import sys
from argparse import Namespace
from typing import Any

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from nbqueue.durations import parse_duration, parse_job_timeout, parse_ttl
from nbqueue.errors import InvalidOptionError, JobsFailedError, PayloadTooLargeError, SerializationError
from nbqueue.job import Job
from nbqueue.jupyter.cell import CELL_FILENAME, compile_cell, free_names, run_cell
from nbqueue.queue import Queue
from nbqueue.retry import Retry
from nbqueue.waiting import wait

#: Names IPython keeps in the notebook namespace for itself. A cell that reads one gets the builtin (or a
#: NameError) on the worker, never the notebook's value.
IPYTHON_NAMES = frozenset(
    {"In", "Out", "_", "__", "___", "_oh", "_dh", "exit", "quit", "get_ipython", "__builtins__", "__builtin__"}
)
# The input history: _i, _ii, _iii, _ih and _i<N>.
_INPUT_HISTORY_NAME = re.compile(r"_i(?:|i|ii|h|\d+)")
#: Options of the magics that take no value; every other option takes one.
FLAG_OPTIONS = frozenset({"--wait"})
# One word of a line magic's options: a quoted string, which may contain spaces, or a run of non-spaces.
_OPTION_WORD = re.compile(r"""\s*('[^']*'|"[^"]*"|\S+)""")


@magics_class
class EnqueueMagics(Magics):
    """Magics that submit notebook cells and expressions as jobs."""

    @line_cell_magic
    @magic_arguments()
    @argument("-q", "--queue", default="default", help="Name of the queue to put the job on. Default: 'default'.")
    @argument(
        "-t",
        "--timeout",
        default=None,
        help="How long the job may run: seconds, or a string like '90s', '10m' or '1h', or -1 for no limit. "
        "Default: the queue's default timeout, else 180 s.",
    )
    @argument(
        "--retry",
        metavar="N",
        type=int,
        default=None,
        help="Run the job up to N more times after it raises an exception. Each failed run that is retried "
        "records a RETRIED result. Default: no retries.",
    )
    @argument(
        "--retry-interval",
        metavar="S",
        default=None,
        help="Seconds to wait before each retry: one number, or a comma-separated list whose k-th value is "
        "the delay before the k-th retry, the last value repeating. Needs --retry. Default: 0.",
    )
    @argument(
        "--result-ttl",
        metavar="S",
        default=None,
        help="How long the finished job and its results are kept: seconds, or a string like '10m', -1 for "
        "ever, 0 not at all. Default: 500 s.",
    )
    @argument(
        "--wait",
        action="store_true",
        help="Block until the job ends, showing a progress bar, then return its value (and bind it to -o NAME) "
        "instead of the Job. A failed job raises JobsFailedError.",
    )
    @argument(
        "-o",
        "--output",
        metavar="NAME",
        default=None,
        help="Bind the Job, or its value with --wait, to NAME in the notebook namespace.",
    )
    def enqueue(self, line: str, cell: str | None = None) -> Any:
        """Run a cell, or the expression after the options of ``%enqueue``, as a job on a worker.

        ``%%enqueue [options]`` runs the cell below it; ``%enqueue [options] EXPRESSION`` runs one
        expression, such as ``%enqueue -q reports -t 10m summarize(df)``. The notebook values that the code
        reads are captured when it is submitted, so later changes do not reach the job. The value of the
        expression, or of the cell's last expression, is the job's return value. The magic returns the Job,
        which displays its status and result, or with --wait the value. Names that the code assigns exist
        only on the worker: the notebook namespace is not changed, except for the name given with -o.
        IPython syntax (%magics, !commands, ?help) is rejected because the worker runs plain Python.
        """
        magic = "%enqueue" if cell is None else "%%enqueue"
        option_text, expression = _split_line_magic(line) if cell is None else (line, "")
        options = parse_argstring(self.enqueue, option_text)
        # IPython splits magic arguments in non-POSIX mode, which keeps quotes: -q 'reports' gives "'reports'".
        for name in ("queue", "timeout", "output", "retry_interval", "result_ttl"):
            setattr(options, name, _unquote(getattr(options, name)))
        if options.output is not None and not _is_identifier(options.output):
            raise UsageError(
                f"{magic} -o {options.output!r} is invalid: NAME must be a Python identifier that is not a "
                "keyword, such as cell_job"
            )
        retry = _parse_retry(options, magic)
        _check_durations(options, magic)

        filename = self._cell_filename()
        if cell is None:
            source = description = expression
            self._check_expression(expression)
        else:
            description = _first_line(cell)
            source = self.shell.transform_cell(cell)
            self._check_source(cell, source, filename)
        captured = self._capture(source)

        try:
            queue = Queue(options.queue)
        except InvalidOptionError as exc:
            raise UsageError(f"{magic} -q {options.queue!r}: {exc}") from None

        try:
            job = queue.enqueue_call(
                run_cell,
                args=(source, captured, filename),
                job_timeout=options.timeout,
                result_ttl=options.result_ttl,
                retry=retry,
                description=description,
            )
        except InvalidOptionError as exc:
            raise UsageError(f"{magic}: {exc}") from None
        except PayloadTooLargeError as exc:
            raise UsageError(f"The {magic} job is too large, so nothing was enqueued: {exc}") from None
        except SerializationError as exc:
            raise UsageError(_describe_unpicklable(captured, exc, magic)) from None

        result: Any = job
        if options.wait:
            result = _wait_for_value(job)
        if options.output is not None:
            self.shell.user_ns[options.output] = result
        return result

    def _check_expression(self, expression: str) -> None:
        """Raise UsageError if the line magic's expression is missing, not valid Python, or needs IPython."""
        if not expression:
            raise UsageError(
                "%enqueue needs an expression to run on the worker after its options, such as %enqueue -q reports f(x)"
            )
        try:
            tree = ast.parse(expression, mode="eval")
        except SyntaxError as exc:
            raise UsageError(
                f"The %enqueue expression is not a valid Python expression ({exc.msg}): {expression}. "
                "Nothing was enqueued. Use %%enqueue to run statements."
            ) from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "get_ipython":
                raise UsageError(
                    f"The %enqueue expression needs IPython, which the worker does not run: {expression}."
                )

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
    """Register the ``%%enqueue`` and ``%enqueue`` magics. ``%load_ext nbqueue`` calls this."""
    ipython.register_magics(EnqueueMagics)


def _split_line_magic(line: str) -> tuple[str, str]:
    """Split the text of ``%enqueue`` into its options and the expression that follows them.

    The expression is returned as written, because splitting it into words would change its spaces. It
    starts at the first word that is neither an option nor an option's value. A word made of ``-`` and a
    digit is a number, not an option. An option written with its value (``-t10``, ``--queue=reports``)
    takes no further word.
    """
    position = 0
    expects_value = False
    while True:
        match = _OPTION_WORD.match(line, position)
        if match is None:
            return line, ""
        word = match.group(1)
        is_option = word.startswith("-") and len(word) > 1 and not word[1].isdigit() and word[1] != "."
        if not expects_value and not is_option:
            return line[: match.start(1)], line[match.start(1) :].strip()
        has_value = "=" in word or (not word.startswith("--") and len(word) > 2)
        expects_value = not expects_value and word not in FLAG_OPTIONS and not has_value
        position = match.end()


def _parse_retry(options: Namespace, magic: str) -> Retry | None:
    """Return the Retry that --retry and --retry-interval give, or None; raise UsageError naming a bad option."""
    if options.retry is None:
        if options.retry_interval is not None:
            raise UsageError(
                f"{magic} --retry-interval needs --retry N, the number of retries, "
                "such as --retry 3 --retry-interval 10"
            )
        return None

    intervals: list[float] = []
    for part in (options.retry_interval or "0").split(","):
        try:
            seconds = parse_duration(part.strip(), "--retry-interval")
        except InvalidOptionError as exc:
            raise UsageError(
                f"{magic} --retry-interval {options.retry_interval!r}: {exc}. Give seconds, or a comma-separated "
                "list such as 10,30,60"
            ) from None
        if seconds < 0:
            raise UsageError(f"{magic} --retry-interval {options.retry_interval!r}: intervals must be >= 0 seconds")
        intervals.append(seconds)

    try:
        return Retry(max=options.retry, interval=intervals)
    except InvalidOptionError as exc:
        raise UsageError(f"{magic} --retry {options.retry}: {exc}") from None


def _check_durations(options: Namespace, magic: str) -> None:
    """Raise UsageError naming -t or --result-ttl when its value is not a valid duration."""
    try:
        parse_job_timeout(options.timeout, "job_timeout")
    except InvalidOptionError as exc:
        raise UsageError(f"{magic} -t {options.timeout!r}: {exc}") from None
    try:
        parse_ttl(options.result_ttl, "result_ttl")
    except InvalidOptionError as exc:
        raise UsageError(f"{magic} --result-ttl {options.result_ttl!r}: {exc}") from None


def _wait_for_value(job: Job) -> Any:
    """Wait for ``job`` with a progress bar and return its value; print the worker's traceback if it failed."""
    try:
        (value,) = wait([job])
    except JobsFailedError as exc:
        failure = exc.failures[0]
        if failure.exc_string:
            print(f"The job failed on worker {failure.worker_name}:\n{failure.exc_string}", file=sys.stderr)
        raise
    return value


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


def _describe_unpicklable(captured: dict[str, object], error: SerializationError, magic: str) -> str:
    """Return a message naming the first captured notebook value that cannot be pickled, else the core's message."""
    code = "cell" if magic == "%%enqueue" else "expression"
    for name, value in captured.items():
        try:
            cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any exception from pickling means this value is the cause
            return (
                f"The {magic} {code} reads the notebook name {name!r}, whose value ({type(value).__name__}) cannot "
                f"be pickled: {type(exc).__name__}: {exc}. Nothing was enqueued. Create the value inside the {code}, "
                "or stop reading it there."
            )
    return f"The {magic} job cannot be pickled, so nothing was enqueued: {error}"
