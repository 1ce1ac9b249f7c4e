"""The live job widget: status, elapsed time, progress, streamed output, result history and actions.

The widget's state is kept in plain traits (``status``, ``queue``, ``worker``, ``elapsed``,
``output_text``, ``history``, ``message``) and in its child widgets (``progress`` and ``output``), so
code and tests can read it. The refresher in :mod:`nbqueue.jupyter.refresher` updates it from Redis,
from a background thread when running in a kernel.
"""

from __future__ import annotations

import html
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

import ipywidgets
import redis
from traitlets import Dict, List, Unicode

from nbqueue.errors import NbqueueError
from nbqueue.job import Job
from nbqueue.jupyter.html import _last_line, _return_value_repr, notebook_summary_html, provenance_rows, status_colour
from nbqueue.jupyter.refresher import FINAL_STATUSES, get_refresher
from nbqueue.results import MAX_RESULTS, Result, decode_entries

#: Maximum characters of stdout and stderr text that a widget keeps. Older text is cut from the start.
MAX_OUTPUT_CHARS = 200_000
#: Maximum number of displayed objects that a widget keeps. Older ones are dropped.
MAX_DISPLAYS = 200
#: Maximum length of a return value's repr in the history, in characters.
MAX_HISTORY_VALUE_CHARS = 500

#: Status shown while the job's hash is not in Redis (deleted, expired, or its result was discarded).
MISSING_STATUS = "missing"

_CUT_NOTE = "[earlier output cut]\n"


class JobWidget(ipywidgets.VBox):
    """A live view of one job, updated from Redis while it is displayed."""

    job_id = Unicode(help="Id of the job shown.")
    status = Unicode(help="The job's status, such as 'queued' or 'finished'; 'missing' when not in Redis.")
    queue = Unicode(help="Name of the job's queue.")
    worker = Unicode(help="Name of the worker that ran the latest execution, or ''.")
    elapsed = Unicode(help="Run time of the latest execution, as text such as '12 s'; '' before it starts.")
    output_text = Unicode(help="The stdout and stderr text the job wrote, in order, at most MAX_OUTPUT_CHARS.")
    history = List(Dict(), help="The job's results, newest first; see _history_row for the keys.")
    message = Unicode(help="Outcome of the latest button action, or ''.")

    def __init__(self, job: Job, **kwargs: Any):
        self.job = job
        self._fields: dict[str, str] = {}
        self._outputs: list[dict[str, Any]] = []
        self._actions_lock = threading.Lock()

        self.status_html = ipywidgets.HTML()
        self.details_html = ipywidgets.HTML()
        self.progress = ipywidgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout={"width": "60%"})
        self.progress_label = ipywidgets.Label()
        self.output = ipywidgets.Output(layout={"max_height": "24em", "overflow": "auto"})
        self.history_html = ipywidgets.HTML()
        self.notebook_html = ipywidgets.HTML()
        self._notebook_shown_for: str | None = None
        self.stop_button = ipywidgets.Button(description="Stop", icon="stop", disabled=True,
                                             tooltip="Kill the running job on its worker")
        self.requeue_button = ipywidgets.Button(description="Requeue", icon="redo", disabled=True,
                                                tooltip="Put the failed, stopped or canceled job back on its queue")
        self.cancel_button = ipywidgets.Button(description="Cancel", icon="times", disabled=True,
                                               tooltip="Remove the queued or scheduled job from its queue")
        self.message_html = ipywidgets.HTML()
        for child, name in (
            (self.status_html, "status"), (self.details_html, "details"), (self.progress, "progress"),
            (self.output, "output"), (self.history_html, "history"), (self.message_html, "message"),
            (self.notebook_html, "notebook"),
        ):
            child.add_class(f"nbqueue-{name}")

        self.stop_button.on_click(self._on_stop)
        self.requeue_button.on_click(self._on_requeue)
        self.cancel_button.on_click(self._on_cancel)

        super().__init__(
            children=[
                self.status_html,
                self.details_html,
                ipywidgets.HBox([self.progress, self.progress_label]),
                self.output,
                self.notebook_html,
                self.history_html,
                ipywidgets.HBox([self.stop_button, self.requeue_button, self.cancel_button, self.message_html]),
            ],
            job_id=job.id,
            **kwargs,
        )
        self.add_class("nbqueue-job-widget")
        get_refresher().register(self, job.connection)

    # Updates from the refresher

    def apply_update(self, fields: dict[str, str], output: list, results: list) -> None:
        """Show newly read job fields, output entries (oldest first) and results (newest first)."""
        self._fields = fields
        status = fields.get("status", MISSING_STATUS)
        self.queue = fields.get("queue", self.queue)
        self.worker = fields.get("worker", "")
        self.elapsed = self._elapsed_text()
        if output:
            self._append_output(output)
        if results:
            self._add_results(results)
        self.stop_button.disabled = status != "started"
        self.requeue_button.disabled = status not in ("failed", "stopped", "canceled")
        self.cancel_button.disabled = status not in ("queued", "scheduled")

        # The status changes last, so code that observes it finds the rest of the widget already updated.
        self.status_html.value = self._status_html(status)
        self.details_html.value = self._details_html(status)
        self._show_progress(status)
        self._show_notebook(status, results)
        self.status = status

    def tick_clock(self) -> None:
        """Update the elapsed time of a running job, sending a message only when its text changes."""
        text = self._elapsed_text()
        if text == self.elapsed:
            return
        self.elapsed = text
        self.details_html.value = self._details_html(self.status)
        if "progress_done" not in self._fields:
            self.progress_label.value = f"running for {text}"

    def refresh(self) -> None:
        """Read the job's state from Redis now, and keep polling it even if it had ended."""
        refresher = get_refresher()
        refresher.wake(self)
        refresher.refresh_all()

    def close(self) -> None:
        get_refresher().unregister(self)
        super().close()

    # Output

    def _append_output(self, entries: list) -> None:
        outputs = list(self._outputs)
        text_parts = []
        for _entry_id, entry in entries:
            kind = entry.get(b"kind")
            if kind == b"stream":
                name = entry.get(b"name", b"stdout").decode()
                text = entry.get(b"text", b"").decode(errors="replace")
                text_parts.append(text)
                last = outputs[-1] if outputs else None
                if last is not None and last["output_type"] == "stream" and last["name"] == name:
                    outputs[-1] = {**last, "text": last["text"] + text}
                else:
                    outputs.append({"output_type": "stream", "name": name, "text": text})
            elif kind == b"display":
                outputs.append(_display_output(entry))
        self._outputs = _trim_outputs(outputs)
        self.output.outputs = tuple(self._outputs)
        if text_parts:
            text = self.output_text + "".join(text_parts)
            self.output_text = text if len(text) <= MAX_OUTPUT_CHARS else _CUT_NOTE + text[-MAX_OUTPUT_CHARS:]

    # Results

    def _add_results(self, entries: list) -> None:
        rows = [_history_row(result) for result in decode_entries(self.job_id, entries)]
        self.history = (rows + list(self.history))[:MAX_RESULTS]
        self.history_html.value = _history_html(self.history)

    # Rendering

    def _status_html(self, status: str) -> str:
        colour = status_colour(status)
        return (
            f'<span style="background:{colour};color:#fff;padding:1px 6px;border-radius:3px;font-weight:bold">'
            f"{html.escape(status)}</span> Job <code>{html.escape(self.job_id)}</code> on queue "
            f"<code>{html.escape(self.queue or '(unknown)')}</code>"
        )

    def _details_html(self, status: str) -> str:
        parts = []
        if self.worker:
            parts.append(f"worker <code>{html.escape(self.worker)}</code>")
        if self.elapsed:
            parts.append(f"{'ran' if status in FINAL_STATUSES else 'running'} for {html.escape(self.elapsed)}")
        if status == MISSING_STATUS:
            parts.append("the job is not in Redis: it was deleted, it expired, or its result_ttl is 0")
        parts += [f"{label.lower()} <code>{html.escape(value)}</code>" for label, value in provenance_rows(self.job) if value]
        return f'<span style="color:#616161">{" · ".join(parts)}</span>'

    def _show_notebook(self, status: str, results: list) -> None:
        """Show a notebook job's executed notebook once it has ended, again after each new result."""
        if status not in ("finished", "failed") or not self.job.is_notebook_job:
            return
        if self._notebook_shown_for == status and not results:
            return
        self._notebook_shown_for = status
        self.notebook_html.value = notebook_summary_html(self.job)

    def _show_progress(self, status: str) -> None:
        fields = self._fields
        bar_style = {"finished": "success", "failed": "danger", "stopped": "warning"}.get(status, "info")
        done = _float(fields.get("progress_done"))
        total = _float(fields.get("progress_total"))
        message = fields.get("progress_message", "")

        if done is not None and total:
            self.progress.max = max(total, 1e-9)
            self.progress.value = min(done, total)
            label = f"{done:g} / {total:g}"
        elif done is not None:
            # Progress without a total: a full bar that shows the count reached.
            self.progress.max, self.progress.value = 1.0, 1.0 if status in FINAL_STATUSES else 0.0
            label = f"{done:g} done"
        else:
            ended = status in FINAL_STATUSES
            self.progress.max, self.progress.value = 1.0, 1.0 if ended else 0.0
            label = f"running for {self.elapsed}" if status == "started" and self.elapsed else ""
        self.progress.bar_style = bar_style
        self.progress_label.value = f"{label} · {message}" if message and label else (label or message)

    def _elapsed_text(self) -> str:
        started = _float(self._fields.get("started_at"))
        if started is None or self._fields.get("status") in ("queued", "scheduled"):
            return ""
        ended = _float(self._fields.get("ended_at"))
        # NOTE: started_at and ended_at are the worker's clock, and a running job is measured against this
        # kernel's clock, so clock skew between the two machines shows in the elapsed time.
        if ended is not None:
            return format_duration(max(0.0, ended - started))
        return format_running_time(max(0.0, time.time() - started))

    # Actions

    def _on_stop(self, _button: Any) -> None:
        self._act("stop", self.job.stop, "Stop requested.")

    def _on_requeue(self, _button: Any) -> None:
        self._act("requeue", self.job.requeue, "Requeued.")

    def _on_cancel(self, _button: Any) -> None:
        self._act("cancel", self.job.cancel, "Canceled.")

    def _act(self, action: str, call: Any, done_message: str) -> None:
        with self._actions_lock:
            try:
                call()
            except (NbqueueError, redis.RedisError) as exc:
                self.message = f"Could not {action} the job: {exc}"
            else:
                self.message = done_message
        self.message_html.value = html.escape(self.message)
        get_refresher().wake(self)


def format_duration(seconds: float) -> str:
    """Format a duration for a widget: '850 ms', '12.3 s', '4 min 05 s' or '2 h 07 min'."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def format_running_time(seconds: float) -> str:
    """Format the run time of a running job in steps of 1 s under a minute, 10 s under 10 minutes, then 1 minute.

    Coarse steps mean fewer widget updates while many jobs run.
    """
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 600:
        return f"{int(seconds // 60)} min {int(seconds % 60) // 10 * 10:02d} s"
    return format_duration(seconds - seconds % 60)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _display_output(entry: dict[bytes, bytes]) -> dict[str, Any]:
    try:
        data = json.loads(entry.get(b"data", b"{}"))
        metadata = json.loads(entry.get(b"metadata", b"{}"))
    except ValueError:
        data, metadata = {"text/plain": "<a displayed object whose data could not be decoded>"}, {}
    return {"output_type": "display_data", "data": data, "metadata": metadata}


def _trim_outputs(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the oldest displayed objects and stream text beyond the widget's limits."""
    displays = [index for index, output in enumerate(outputs) if output["output_type"] == "display_data"]
    if len(displays) > MAX_DISPLAYS:
        dropped = set(displays[: len(displays) - MAX_DISPLAYS])
        outputs = [output for index, output in enumerate(outputs) if index not in dropped]

    excess = sum(len(output["text"]) for output in outputs if output["output_type"] == "stream") - MAX_OUTPUT_CHARS
    trimmed = []
    for output in outputs:
        if excess > 0 and output["output_type"] == "stream":
            cut = min(excess, len(output["text"]))
            excess -= cut
            if cut == len(output["text"]):
                continue
            output = {**output, "text": _CUT_NOTE + output["text"][cut:]}
        trimmed.append(output)
    return trimmed


def _history_row(result: Result) -> dict[str, Any]:
    """Describe one result: ``id``, ``type``, ``created_at`` (ISO 8601, UTC), ``duration_s``, ``worker``,
    ``value`` (repr of a SUCCESSFUL result's value, else None), ``error`` (last traceback line) and
    ``traceback`` (FAILED and RETRIED results, else None)."""
    failed = result.type in (Result.Type.FAILED, Result.Type.RETRIED)
    return {
        "id": result.id,
        "type": result.type.name,
        "created_at": result.created_at.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": result.duration_s,
        "worker": result.worker_name,
        "value": (
            _return_value_repr(result, MAX_HISTORY_VALUE_CHARS) if result.type == Result.Type.SUCCESSFUL else None
        ),
        "error": _last_line(result.exc_string) if failed else None,
        "traceback": result.exc_string if failed else None,
    }


def _history_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    colours = {"SUCCESSFUL": "finished", "FAILED": "failed", "STOPPED": "stopped", "RETRIED": "scheduled"}
    lines = []
    for row in rows:
        when = datetime.fromisoformat(row["created_at"]).strftime("%Y-%m-%d %H:%M:%S UTC")
        duration = format_duration(row["duration_s"]) if row["duration_s"] is not None else ""
        if row["traceback"] is not None:
            outcome = (
                f"<details><summary><code>{html.escape(row['error'])}</code></summary>"
                f'<pre style="margin:2px 0">{html.escape(row["traceback"])}</pre></details>'
            )
        elif row["value"] is not None:
            outcome = f"<code>{html.escape(row['value'])}</code>"
        else:
            outcome = ""
        colour = status_colour(colours.get(row["type"], ""))
        lines.append(
            f'<tr><td style="color:{colour};font-weight:bold;text-align:left">{row["type"]}</td>'
            f'<td style="text-align:left">{when}</td><td style="text-align:right">{duration}</td>'
            f'<td style="text-align:left">{outcome}</td></tr>'
        )
    return (
        '<table style="margin:4px 0"><tr><th style="text-align:left">Result</th><th style="text-align:left">At</th>'
        f'<th style="text-align:right">Took</th><th style="text-align:left">Value or error</th></tr>{"".join(lines)}'
        "</table>"
    )
