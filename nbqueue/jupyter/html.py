"""HTML and plain-text summaries of a job, for notebooks and terminals.

Each summary reads the job's state from Redis when it is made. A job that was deleted or expired is shown
as "missing", and a Redis server that cannot be reached as "unknown", instead of raising. This module
imports nothing from IPython, so the core can use it for ``Job._repr_html_``.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import redis

from nbqueue.errors import NbqueueError, NoSuchJobError

if TYPE_CHECKING:
    from nbqueue.job import Job
    from nbqueue.results import Result

#: Maximum length of a return value's repr in HTML, in characters. A longer repr is cut and its length given.
MAX_HTML_VALUE_CHARS = 2000
#: Maximum length of a return value's repr in the text summary, in characters.
MAX_TEXT_VALUE_CHARS = 200
#: Largest executed notebook, in bytes of JSON, that the summary embeds as a download link.
MAX_NOTEBOOK_LINK_BYTES = 5 * 1024 * 1024
#: Maximum length of a cell's source line and output excerpt in a notebook summary, in characters.
MAX_CELL_OUTPUT_CHARS = 120

#: Status shown for a job whose data is no longer in Redis.
MISSING_STATUS = "missing"
#: Status shown when Redis could not be reached.
UNREACHABLE_STATUS = "unknown"

_STATUS_COLOURS = {
    "queued": "#546e7a",
    "scheduled": "#6a1b9a",
    "started": "#1565c0",
    "finished": "#2e7d32",
    "failed": "#c62828",
    "stopped": "#ef6c00",
    "canceled": "#757575",
    MISSING_STATUS: "#9e9e9e",
    UNREACHABLE_STATUS: "#9e9e9e",
}


@dataclass
class _JobState:
    """Snapshot of a job's status and latest result, read from Redis for one summary."""

    status: str
    result: Result | None = None
    problem: str | None = None
    """Reason the snapshot is incomplete (job missing, Redis unreachable), else None."""


def job_html(job: Job) -> str:
    """Render a job as an HTML summary: status badge, id, queue, function, times and latest result."""
    state = _read_state(job)
    colour = status_colour(state.status)

    header = (
        f'<span style="background:{colour};color:#fff;padding:1px 6px;border-radius:3px;'
        f'font-weight:bold">{html.escape(state.status)}</span> '
        f"Job <code>{html.escape(job.id)}</code> on queue <code>{html.escape(_queue_name(job))}</code>"
    )

    rows = [("Function", job.func_name), ("Description", job.description)]
    if state.status not in (MISSING_STATUS, UNREACHABLE_STATUS):
        rows += [
            ("Enqueued", _format_time(job.enqueued_at)),
            ("Started", _format_time(job.started_at)),
            ("Ended", _format_time(job.ended_at)),
            ("Worker", job.worker_name),
            ("Timeout", _format_timeout(job.timeout)),
        ]
    rows += provenance_rows(job)
    table_rows = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{label}</th>'
        f'<td style="text-align:left">{html.escape(str(value))}</td></tr>'
        for label, value in rows
        if value not in (None, "")
    )

    return (
        '<div class="nbqueue-job" style="border:1px solid #ccc;border-radius:4px;padding:6px 10px">'
        f"<div>{header}</div>"
        f'<table style="margin:4px 0">{table_rows}</table>'
        f"{notebook_summary_html(job) if _is_notebook_result(job, state) else _result_html(state)}"
        "</div>"
    )


def provenance_rows(job: Job) -> list[tuple[str, str | None]]:
    """Return the (label, value) rows of the job's provenance, with None for a value that is unknown."""
    source_hash = job.cell_source_hash
    return [
        ("Notebook", job.notebook_path),
        ("Cell id", job.cell_id),
        ("Cell source", source_hash[: len("sha256:") + 12] if source_hash else None),
    ]


def notebook_summary_html(job: Job) -> str:
    """Render a notebook job's executed notebook: a download link and one row per code cell.

    Each row gives the cell's index, its first line, its run time and an excerpt of its outputs. A notebook
    over ``MAX_NOTEBOOK_LINK_BYTES`` gets the ``nbqueue fetch`` command in place of the link.
    """
    try:
        notebook = job.executed_notebook()
    except (NbqueueError, redis.RedisError) as exc:
        return f'<div style="color:#757575">The executed notebook could not be read: {html.escape(str(exc))}</div>'
    if notebook is None:
        return '<div style="color:#757575">No executed notebook yet.</div>'

    text = json.dumps(notebook, ensure_ascii=False)
    if len(text.encode()) <= MAX_NOTEBOOK_LINK_BYTES:
        encoded = base64.b64encode(text.encode()).decode()
        link = (
            f'<a download="{html.escape(job.id)}.ipynb" href="data:application/x-ipynb+json;base64,{encoded}">'
            "Download the executed notebook</a>"
        )
    else:
        link = f"Executed notebook: <code>nbqueue fetch {html.escape(job.id)} -o OUT.ipynb</code>"
    rows = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        duration = cell.get("metadata", {}).get("nbqueue", {}).get("duration_s")
        rows.append(
            f'<tr><td style="text-align:right">{index}</td>'
            f"<td><code>{html.escape(_first_line(cell.get('source', '')))}</code></td>"
            f'<td style="text-align:right">{"" if duration is None else f"{duration:.2f} s"}</td>'
            f"<td><code>{html.escape(_outputs_excerpt(cell.get('outputs', [])))}</code></td></tr>"
        )
    return (
        f"<div>{link}</div>"
        '<table style="margin:4px 0"><tr><th>cell</th><th style="text-align:left">source</th><th>time</th>'
        f'<th style="text-align:left">output</th></tr>{"".join(rows)}</table>'
    )


def _is_notebook_result(job: Job, state: _JobState) -> bool:
    return (
        state.problem is None
        and state.result is not None
        and state.result.type.name in ("SUCCESSFUL", "FAILED")
        and job.is_notebook_job
    )


def _first_line(source: str | list[str]) -> str:
    text = "".join(source) if isinstance(source, list) else source
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:MAX_CELL_OUTPUT_CHARS]


def _outputs_excerpt(outputs: list[dict]) -> str:
    """Summarize a cell's outputs in one line: its error, else its text, else the mime types it shows."""
    parts = []
    for output in outputs:
        kind = output.get("output_type")
        if kind == "error":
            return f"{output.get('ename')}: {output.get('evalue')}"[:MAX_CELL_OUTPUT_CHARS]
        if kind == "stream":
            parts.append("".join(output.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            plain = data.get("text/plain")
            parts.append("".join(plain) if plain is not None else f"[{', '.join(sorted(data))}]")
    text = " ".join(" ".join(parts).split())
    return text if len(text) <= MAX_CELL_OUTPUT_CHARS else text[: MAX_CELL_OUTPUT_CHARS - 3] + "..."


def status_colour(status: str) -> str:
    """Return the CSS colour of a status badge, blue-grey for a status not listed."""
    return _STATUS_COLOURS.get(status, "#546e7a")


def job_text(job: Job) -> str:
    """Summarize a job in one line: ``Job <id> [<status>] on queue <q>: <result summary>``."""
    state = _read_state(job)
    return f"Job {job.id} [{state.status}] on queue {_queue_name(job)}: {_result_summary(state)}"


def _read_state(job: Job) -> _JobState:
    """Reload the job's fields and latest result from Redis, turning a missing job or a Redis error into a state."""
    try:
        job.refresh()
    except NoSuchJobError:
        return _JobState(MISSING_STATUS, problem="The job is not in Redis: it was deleted or it expired.")
    except redis.RedisError as exc:
        return _JobState(UNREACHABLE_STATUS, problem=f"Redis could not be reached: {exc}")

    status = job.get_status(refresh=False)
    try:
        result = job.latest_result()
    except redis.RedisError as exc:
        return _JobState(status.value, problem=f"The result could not be read because Redis could not be reached: {exc}")
    return _JobState(status.value, result=result)


def _result_summary(state: _JobState) -> str:
    if state.problem is not None:
        return state.problem
    result = state.result
    if result is None:
        return "no result yet"

    kind = result.type.name
    if kind == "SUCCESSFUL":
        return f"returned {_return_value_repr(result, MAX_TEXT_VALUE_CHARS)}"
    if kind == "FAILED":
        return f"failed: {_last_line(result.exc_string)}"
    if kind == "RETRIED":
        return f"failed and will be retried: {_last_line(result.exc_string)}"
    if kind == "STOPPED":
        return "stopped before it finished"
    return kind.lower()


def _result_html(state: _JobState) -> str:
    if state.problem is not None:
        return f'<div style="color:#757575">{html.escape(state.problem)}</div>'
    result = state.result
    if result is None:
        return '<div style="color:#757575">No result yet.</div>'

    kind = result.type.name
    if kind == "SUCCESSFUL":
        value = _return_value_repr(result, MAX_HTML_VALUE_CHARS)
        return f'<div>Result:</div><pre style="margin:2px 0">{html.escape(value)}</pre>'
    if kind in ("FAILED", "RETRIED"):
        heading = "Failed" if kind == "FAILED" else "Failed, will be retried"
        traceback_text = result.exc_string or ""
        return (
            f'<div style="color:#c62828">{heading}: <code>{html.escape(_last_line(traceback_text))}</code></div>'
            f'<details><summary>Traceback</summary><pre style="margin:2px 0">{html.escape(traceback_text)}</pre>'
            "</details>"
        )
    return f"<div>{html.escape(_result_summary(state))}</div>"


def _return_value_repr(result: Result, max_chars: int) -> str:
    """Return the repr of a result's value, cut to ``max_chars``. A value that cannot be read or shown is described."""
    try:
        value = result.return_value
    except NbqueueError as exc:
        return f"<the return value could not be read: {exc}>"

    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - user code: any exception is possible, and a display must not fail
        return f"<repr of {type(value).__name__} failed: {type(exc).__name__}: {exc}>"
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}… ({len(text) - max_chars} more characters)"


def _last_line(traceback_text: str | None) -> str:
    """Return the last non-blank line of a traceback, which names the exception and its message."""
    lines = [line for line in (traceback_text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no traceback recorded"


def _queue_name(job: Job) -> str:
    """Return the job's queue name, or "(unknown)" for a job whose fields were never loaded from Redis."""
    return job.origin or "(unknown)"


def _format_time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_timeout(timeout_s: float | None) -> str | None:
    if timeout_s is None:
        return None
    if timeout_s < 0:
        return "none"
    return f"{timeout_s:g} s"
