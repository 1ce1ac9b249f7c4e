"""The progress bar shown while a caller blocks on jobs.

A wait that lasts longer than ``SHOW_AFTER_S`` shows a bar: an ipywidgets bar in a Jupyter kernel, a one-line
text bar on stderr in a terminal, and nothing elsewhere. This module imports IPython and ipywidgets only
inside functions, and only when a kernel already runs, so the core and the worker do not need them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

from nbqueue import keys
from nbqueue.job import Job

log = logging.getLogger(__name__)

#: Seconds a wait runs before its progress bar appears, so that quick waits show nothing.
SHOW_AFTER_S = 1.0
#: Seconds between two updates of a shown progress bar.
REFRESH_INTERVAL_S = 0.3
#: Maximum number of pending jobs whose progress one update of an aggregate bar reads. The others count
#: only once they end.
MAX_PROGRESS_READS = 1000
_ENDED_STATUSES = frozenset({b"finished", b"failed", b"stopped", b"canceled"})
_FAILED_STATUSES = frozenset({b"failed", b"stopped"})
_PROGRESS_FIELDS = ("status", "progress_done", "progress_total", "progress_message")
_STATE_WORDS = {b"queued": "queued", b"scheduled": "scheduled", b"started": "running"}


@dataclass(frozen=True)
class BarState:
    """The content of a progress bar at one moment."""

    #: One word or two: queued, running, finished, failed, interrupted, timed out, not finished.
    state: str
    #: Filled part of the bar, from 0 to 1; None when nothing measures the progress.
    fraction: float | None
    #: Counts, the job's progress message and the elapsed time.
    detail: str


class WaitTally:
    """The indexes of the jobs of a wait that have ended; :func:`wait` updates it and its bar reads it."""

    def __init__(self, total: int):
        self.total = total
        self._lock = threading.Lock()
        self._failed_by_index: dict[int, bool] = {}

    def mark(self, indexes: Iterable[int], *, failed: bool) -> None:
        with self._lock:
            for index in indexes:
                self._failed_by_index[index] = failed

    def snapshot(self) -> tuple[set[int], int]:
        """Return the ended indexes and how many of them failed."""
        with self._lock:
            return set(self._failed_by_index), sum(self._failed_by_index.values())


class ProgressDisplay(Protocol):
    """A shown progress bar: a widget in a kernel, a line of text in a terminal."""

    def update(self, state: BarState) -> None: ...

    def close(self, state: BarState) -> None: ...


@contextlib.contextmanager
def wait_feedback(jobs: Sequence[Job], timeout_s: float | None, *, tally: WaitTally | None = None) -> Iterator[None]:
    """Show a progress bar of ``jobs`` if the body blocks longer than ``SHOW_AFTER_S``.

    A background thread reads the jobs' status and progress in one pipelined round trip per update. When the
    body ends, the bar shows a final state: finished, failed, timed out, or interrupted for a
    KeyboardInterrupt, which propagates. Only a wait on the main thread shows a bar. ``tally``, given by
    :func:`wait`, records which jobs ended, so that ended jobs are not read again.
    """
    feedback = _Feedback(list(jobs), timeout_s, tally)
    feedback.start()
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        feedback.finish(interrupted=interrupted)


class _Feedback:
    """The thread that shows and updates the bar of one wait."""

    def __init__(self, jobs: list[Job], timeout_s: float | None, tally: WaitTally | None):
        self.jobs = jobs
        self.timeout_s = timeout_s
        self.tally = tally
        self.started_at = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._display: ProgressDisplay | None = None
        self._last_state: BarState | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.jobs or threading.current_thread() is not threading.main_thread():
            return
        if self.timeout_s is not None and self.timeout_s <= SHOW_AFTER_S:
            return
        kind = _display_kind()
        if kind is None:
            return
        # The copied context carries the kernel's parent message, so the widget lands in the waiting cell.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run, kind), name="nbqueue-wait-bar", daemon=True
        )
        self._thread.start()

    def _run(self, kind: str) -> None:
        if self._stop.wait(SHOW_AFTER_S):
            return
        try:
            while True:
                state = self._read_state()
                with self._lock:
                    if self._stop.is_set():
                        return
                    if self._display is None:
                        self._display = _open_display(kind)
                        if self._display is None:
                            return
                    self._display.update(state)
                    self._last_state = state
                if self._stop.wait(REFRESH_INTERVAL_S):
                    return
        except Exception:  # noqa: BLE001 - a failing bar must not break the wait it decorates
            log.warning("The wait's progress bar stopped updating", exc_info=True)

    def finish(self, *, interrupted: bool) -> None:
        """Stop the thread and show the final state on a bar that was shown."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(REFRESH_INTERVAL_S + 2.0)
        with self._lock:
            if self._display is None:
                return
            try:
                self._display.close(self._final_state(interrupted))
            except Exception:  # noqa: BLE001 - the wait's own outcome or exception matters more
                log.warning("Cannot show the final state of the wait's progress bar", exc_info=True)

    def _final_state(self, interrupted: bool) -> BarState:
        last = self._last_state or BarState("waiting", None, "")
        if interrupted:
            keeps_running = "the job keeps running" if len(self.jobs) == 1 else "the jobs keep running"
            return BarState("interrupted", last.fraction, f"{self._elapsed_text()}, {keeps_running}")

        rows = self._read_rows(self.jobs) if self.tally is None or len(self.jobs) == 1 else []
        if self.tally is not None:
            ended, failed = self.tally.snapshot()
            all_ended = len(ended) == self.tally.total
        else:
            all_ended = all(row[0] is None or row[0] in _ENDED_STATUSES for row in rows)
            failed = sum(1 for row in rows if row[0] in _FAILED_STATUSES)
        if not all_ended:
            timed_out = self.timeout_s is not None and time.monotonic() - self.started_at >= self.timeout_s
            return BarState("timed out" if timed_out else "not finished", last.fraction, last.detail)

        state = "failed" if failed else "finished"
        if len(self.jobs) == 1:
            return BarState(state, 1.0, self._single_job_state(rows[0]).detail)
        return BarState(state, 1.0, f"{self._counts_text(len(self.jobs), failed)}, {self._elapsed_text()}")

    def _read_rows(self, jobs: Sequence[Job]) -> list[list[bytes | None]]:
        pipe = self.jobs[0].connection.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(keys.job(job.id), _PROGRESS_FIELDS)
        return pipe.execute()

    def _read_state(self) -> BarState:
        if len(self.jobs) == 1:
            return self._single_job_state(self._read_rows(self.jobs)[0])

        if self.tally is not None:
            ended, failed = self.tally.snapshot()
            pending = [job for index, job in enumerate(self.jobs) if index not in ended][:MAX_PROGRESS_READS]
            rows = self._read_rows(pending)
            ended_count = len(ended)
        else:
            rows = self._read_rows(self.jobs)
            ended_count = sum(1 for row in rows if row[0] is None or row[0] in _ENDED_STATUSES)
            failed = sum(1 for row in rows if row[0] in _FAILED_STATUSES)
        # Running jobs that report progress fill part of their share of the bar.
        partial = sum(_progress_fraction(row) or 0.0 for row in rows if row[0] in (b"started", b"queued"))
        fraction = min(1.0, (ended_count + partial) / len(self.jobs))
        return BarState("running", fraction, f"{self._counts_text(ended_count, failed)}, {self._elapsed_text()}")

    def _single_job_state(self, row: list[bytes | None]) -> BarState:
        status, done, total, message = row
        state = _STATE_WORDS.get(status or b"", _text(status) if status else "gone")
        if status == b"queued" and done is not None:
            # A worker may leave a job it runs as queued in the job hash for a moment; progress shows it runs.
            state = "running"
        parts = []
        fraction = _progress_fraction(row)
        if done is not None:
            count = _format_number(float(done))
            parts.append(f"{count}/{_format_number(float(total))}" if total is not None else f"{count} done")
        if message:
            parts.append(message.decode(errors="replace"))
        parts.append(self._elapsed_text())
        if fraction is None:
            fraction = self._time_fraction()
        return BarState(state, fraction, ", ".join(parts))

    def _counts_text(self, ended: int, failed: int) -> str:
        text = f"{ended}/{len(self.jobs)} done"
        return f"{text}, {failed} failed" if failed else text

    def _elapsed_text(self) -> str:
        elapsed = _format_seconds(time.monotonic() - self.started_at)
        return elapsed if self.timeout_s is None else f"{elapsed} of {_format_seconds(self.timeout_s)}"

    def _time_fraction(self) -> float | None:
        if not self.timeout_s:
            return None
        return min(1.0, (time.monotonic() - self.started_at) / self.timeout_s)


def _progress_fraction(row: list[bytes | None]) -> float | None:
    done, total = row[1], row[2]
    if done is None or total is None or float(total) <= 0:
        return None
    return max(0.0, min(1.0, float(done) / float(total)))


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"


# Where the bar is shown


def _display_kind() -> str | None:
    """Return "widget" in a Jupyter kernel, "text" when stderr is a terminal, else None."""
    if _in_kernel():
        return "widget"
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return "text"
    except (AttributeError, ValueError):  # a replaced or closed stderr
        pass
    return None


def _in_kernel() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython  # ipykernel imports IPython, so this imports nothing new

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _open_display(kind: str) -> ProgressDisplay | None:
    if kind == "text":
        return TextBar(sys.stderr)
    try:
        from nbqueue.jupyter.progressbar import ProgressBar
    except ImportError:
        # NOTE: without ipywidgets a wait in a kernel shows no bar; install ipywidgets to get one.
        log.debug("ipywidgets is not installed, so the wait shows no progress bar")
        return None
    return ProgressBar()


class TextBar:
    """A one-line progress bar redrawn in place on a terminal stream."""

    BAR_WIDTH = 24

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._drawn_line = ""

    def update(self, state: BarState) -> None:
        self._draw(state, end="")

    def close(self, state: BarState) -> None:
        self._draw(state, end="\n")

    def _draw(self, state: BarState, end: str) -> None:
        line = format_text_bar(state, self.BAR_WIDTH)
        # A line longer than the terminal wraps, and then the carriage return redraws only its last part.
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        # A terminal whose size was never set, such as a new pseudo-terminal, reports 0 columns.
        columns = columns or 80
        line = line[: max(20, columns - 1)]
        if line == self._drawn_line and not end:
            return
        padding = " " * max(0, len(self._drawn_line) - len(line))
        self.stream.write(f"\r{line}{padding}{end}")
        self.stream.flush()
        self._drawn_line = line


def format_text_bar(state: BarState, width: int) -> str:
    """Format a bar as ``running      [######----------]  38% 3/8 done, 12s of 1m 00s``."""
    if state.fraction is None:
        return f"{state.state:<12} [{' ' * width}]  --  {state.detail}"
    filled = round(state.fraction * width)
    return f"{state.state:<12} [{'#' * filled}{'-' * (width - filled)}] {state.fraction:4.0%} {state.detail}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# What a progress bar shows
