"""Tests of the live job widget and its refresher, in real kernels (nbclient) and in-process, with real workers.

Kernels inherit ``NBQUEUE_REDIS_URL`` from the test, so jobs they enqueue reach the test server. Cells
wait for a widget state through a traitlets observer and a ``threading.Event`` (``WAIT_FOR`` below), so
the kernel's main thread is blocked while the refresher thread updates the widget.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import redis
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from nbqueue import Job, Queue
from nbqueue.jupyter.refresher import get_refresher, refresh_all
from nbqueue.jupyter.widgets import JobWidget, format_duration, format_running_time

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# Defines wait_for(widget, predicate), which blocks the cell until the refresher thread makes the predicate
# true, or raises after 20 s.
WAIT_FOR = '''
import threading, json

def wait_for(widget, predicate, timeout_s=20):
    reached = threading.Event()
    def check(_change=None):
        if predicate(widget):
            reached.set()
    widget.observe(check, "status")
    check()
    if not reached.wait(timeout_s):
        raise TimeoutError(f"widget stayed {widget.status!r}: {widget.history}")
    widget.unobserve(check, "status")
'''


@dataclass
class Notebook:
    """An executed notebook: its cells' outputs and the widget state nbclient stored."""

    node: nbformat.NotebookNode

    def stdout(self, index: int) -> str:
        return "".join(o["text"] for o in self.node.cells[index].outputs if o.get("name") == "stdout")

    def errors(self) -> list[str]:
        return [
            f"cell {index}: {output['ename']}: {output['evalue']}"
            for index, cell in enumerate(self.node.cells)
            for output in cell.outputs
            if output["output_type"] == "error"
        ]

    def bundles(self, index: int) -> list[dict]:
        return [o["data"] for o in self.node.cells[index].outputs if o["output_type"] in ("execute_result", "display_data")]

    def widget_states(self) -> dict[str, dict]:
        return {model_id: model["state"] for model_id, model in self.node.metadata.widgets[WIDGET_STATE]["state"].items()}

    def child_state(self, model_id: str, dom_class: str) -> dict:
        """Return the state of the descendant of widget ``model_id`` that carries ``dom_class``."""
        states = self.widget_states()
        pending = [model_id]
        while pending:
            state = states[pending.pop()]
            if dom_class in state.get("_dom_classes", ()):
                return state
            pending += [child.removeprefix("IPY_MODEL_") for child in state.get("children", ())]
        raise AssertionError(f"no widget with class {dom_class!r} under {model_id}")


def run_notebook(sources: list[str], directory: Path) -> Notebook:
    """Run the cells in a new kernel of this Python, storing widget state; errors do not stop the run."""
    kernels = directory / "kernels"
    if not (kernels / "python3").exists():
        write_kernel_spec(kernels / "python3")
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    client = NotebookClient(
        notebook,
        km=kernel_manager,
        timeout=60,
        allow_errors=True,
        store_widget_state=True,
        resources={"metadata": {"path": str(directory)}},
    )
    client.execute()
    return Notebook(notebook)


def assert_no_errors(notebook: Notebook) -> None:
    assert notebook.errors() == []


@pytest.fixture
def kernel_directory(redis_url, monkeypatch, tmp_path) -> Path:
    """A working folder for kernels that reach the test Redis server through ``NBQUEUE_REDIS_URL``."""
    monkeypatch.setenv("NBQUEUE_REDIS_URL", redis_url)
    directory = tmp_path / "kernel"
    directory.mkdir()
    return directory


FINISHING_JOB = '''
import nbqueue
from nbqueue import Queue

def work(n):
    from IPython.display import HTML, display
    print("hello from the job")
    display(HTML("<b>shown by the job</b>"))
    for _ in nbqueue.progress(range(n)):
        pass
    return n * 2

job = Queue().enqueue(work, 5)
'''


def test_widget_reaches_finished_state(kernel_directory, start_worker):
    start_worker()

    notebook = run_notebook(
        [
            WAIT_FOR,
            FINISHING_JOB,
            "w = job.widget()\nw",
            "wait_for(w, lambda w: w.status == 'finished')\n"
            "print(json.dumps({'status': w.status, 'value': w.progress.value, 'max': w.progress.max,\n"
            "    'text': w.output_text, 'outputs': list(w.output.outputs), 'history': w.history,\n"
            "    'stop': w.stop_button.disabled, 'requeue': w.requeue_button.disabled}))",
        ],
        kernel_directory,
    )

    assert_no_errors(notebook)
    state = json.loads(notebook.stdout(3))
    assert state["status"] == "finished"
    assert state["value"] == 5
    assert state["max"] == 5
    assert state["text"] == "hello from the job\n"
    displays = [output for output in state["outputs"] if output["output_type"] == "display_data"]
    assert len(displays) == 1
    assert displays[0]["data"]["text/html"] == "<b>shown by the job</b>"
    assert [row["type"] for row in state["history"]] == ["SUCCESSFUL"]
    assert state["history"][0]["value"] == "10"
    assert state["history"][0]["duration_s"] >= 0
    assert state["stop"] is True
    assert state["requeue"] is True


def test_widget_shows_failed_traceback(kernel_directory, start_worker):
    start_worker()

    notebook = run_notebook(
        [
            WAIT_FOR,
            "from nbqueue import Queue\n"
            "def explode():\n    raise ValueError('the job broke')\n"
            "w = Queue().enqueue(explode).widget()",
            "wait_for(w, lambda w: w.status == 'failed')\n"
            "print(json.dumps({'history': w.history, 'html': w.history_html.value,\n"
            "    'requeue': w.requeue_button.disabled, 'style': w.progress.bar_style}))",
        ],
        kernel_directory,
    )

    assert_no_errors(notebook)
    state = json.loads(notebook.stdout(2))
    (row,) = state["history"]
    assert row["type"] == "FAILED"
    assert row["error"] == "ValueError: the job broke"
    assert ", in explode" in row["traceback"]
    assert "<details><summary><code>ValueError: the job broke</code></summary>" in state["html"]
    assert state["requeue"] is False
    assert state["style"] == "danger"


def test_display_bundle_has_widget_html_and_text(kernel_directory, start_worker):
    notebook = run_notebook(["from nbqueue import Queue\njob = Queue().enqueue('builtins.print', 'hi')", "job"],
                            kernel_directory)

    assert_no_errors(notebook)
    (bundle,) = notebook.bundles(1)
    assert set(bundle) == {WIDGET_VIEW, "text/html", "text/plain"}
    assert "nbqueue-job" in bundle["text/html"]
    assert bundle["text/plain"].startswith("Job ")
    assert "[queued]" in bundle["text/plain"]
    model_id = bundle[WIDGET_VIEW]["model_id"]
    assert "queued" in notebook.child_state(model_id, "nbqueue-status")["value"]


def test_refresher_updates_while_cell_busy(kernel_directory, start_worker):
    start_worker()

    # The last cell blocks the kernel until the job has finished. Nothing runs after it, so the widget
    # state that nbclient stored came from comm messages sent by the refresher thread during that cell.
    notebook = run_notebook(
        [
            WAIT_FOR,
            "from nbqueue import Queue\nimport time\n"
            "def slow():\n    time.sleep(1)\n    print('slept')\n    return 'awake'\n"
            "job = Queue().enqueue(slow)\nw = job.widget()",
            "job",
            "w",
            "wait_for(w, lambda w: w.status == 'finished')\nprint(w.status, w.history[0]['value'])",
        ],
        kernel_directory,
    )

    assert_no_errors(notebook)
    assert notebook.stdout(4) == "finished 'awake'\n"
    for cell in (2, 3):
        (bundle,) = notebook.bundles(cell)
        model_id = bundle[WIDGET_VIEW]["model_id"]
        assert ">finished</span>" in notebook.child_state(model_id, "nbqueue-status")["value"]
        output_state = notebook.child_state(model_id, "nbqueue-output")
        assert output_state["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "slept\n"}]
        assert "&#x27;awake&#x27;" in notebook.child_state(model_id, "nbqueue-history")["value"]


def test_widget_replays_output_in_new_kernel(kernel_directory, start_worker, connection):
    start_worker()
    first = run_notebook(
        [
            "from nbqueue import Queue\n"
            "def chatty():\n    for i in range(3):\n        print('line', i)\n    return 3\n"
            "job = Queue().enqueue(chatty)\njob.latest_result(timeout=30)\nprint(job.id)",
        ],
        kernel_directory,
    )
    assert_no_errors(first)
    job_id = first.stdout(0).strip()

    second = run_notebook(
        [
            f"from nbqueue import Job\njob = Job.fetch({job_id!r})\nw = job.widget()\nprint(repr(w.output_text))",
            "job",
        ],
        kernel_directory,
    )

    assert_no_errors(second)
    assert second.stdout(0) == repr("line 0\nline 1\nline 2\n") + "\n"
    (bundle,) = second.bundles(1)
    output_state = second.child_state(bundle[WIDGET_VIEW]["model_id"], "nbqueue-output")
    assert output_state["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "line 0\nline 1\nline 2\n"}]


def test_stop_button_stops_running_job(kernel_directory, start_worker):
    start_worker()

    notebook = run_notebook(
        [
            WAIT_FOR,
            "from nbqueue import Queue\nw = Queue().enqueue('time.sleep', 60).widget()",
            "wait_for(w, lambda w: w.status == 'started')\n"
            "print(w.stop_button.disabled)\nw.stop_button.click()\nprint(w.message)",
            "wait_for(w, lambda w: w.status == 'stopped')\n"
            "print(w.status, w.history[0]['type'], w.stop_button.disabled, w.requeue_button.disabled)",
        ],
        kernel_directory,
    )

    assert_no_errors(notebook)
    assert notebook.stdout(2) == "False\nStop requested.\n"
    assert notebook.stdout(3) == "stopped STOPPED True False\n"


# In-process tests: widgets outside a kernel are refreshed by explicit refresh_all() calls.


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()}


def test_refresh_all_reads_1000_widgets_in_one_pipeline(connection):
    jobs = Queue(connection=connection).enqueue_many(
        [Queue.prepare_data("builtins.print", args=(index,)) for index in range(1000)]
    )
    widgets = [JobWidget(job) for job in jobs]
    refresh_all()

    before = _commandstats(connection)
    cpu_start = time.process_time()
    changed = refresh_all()
    cpu_s = time.process_time() - cpu_start
    after = _commandstats(connection)

    assert changed is False
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert calls["hmget"] == 1000
    assert calls["xrange"] == 1000
    assert calls["xrevrange"] == 1000
    assert calls["info"] == 1
    assert sum(calls.values()) == 3001
    # NOTE: a loose bound, so that a slow CI machine passes. One run on a 2-core VM measured about 10 ms.
    assert cpu_s < 0.25, f"refresh_all took {cpu_s * 1000:.0f} ms of CPU for 1,000 unchanged widgets"
    for widget in widgets:
        widget.close()


def test_unchanged_widget_sends_no_update(connection):
    job = Queue(connection=connection).enqueue("builtins.print", "hi")
    widget = JobWidget(job)
    changes = []
    widget.observe(changes.append, names=["status", "output_text", "history"])

    refresh_all()

    assert widget.status == "queued"
    assert changes == []
    widget.close()


def test_widget_settles_after_final_state(connection, start_worker):
    job = Queue(connection=connection).enqueue("builtins.print", "from the worker")
    widget = JobWidget(job)
    assert get_refresher().watched_count >= 1

    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.log()
    refresh_all()

    assert widget.status == "finished"
    assert widget.output_text == "from the worker\n"
    assert widget.history[0]["value"] == "None"
    assert get_refresher().watched_count == 0
    widget.close()


def test_closed_widget_drops_out(connection):
    job = Queue(connection=connection).enqueue("builtins.print", "hi")
    widget = JobWidget(job)
    before = get_refresher().watched_count

    widget.close()

    assert get_refresher().watched_count == before - 1


def test_missing_job_shows_missing(connection):
    job = Queue(connection=connection).enqueue("builtins.print", "hi")
    job.delete()

    widget = JobWidget(job)

    assert widget.status == "missing"
    assert "not in Redis" in widget.details_html.value
    widget.close()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.25, "250 ms"), (3.21, "3.2 s"), (42.4, "42 s"), (185, "3 min 05 s"), (7500, "2 h 05 min")],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(("seconds", "expected"), [(3.9, "3 s"), (185, "3 min 00 s"), (725, "12 min 00 s")])
def test_format_running_time(seconds, expected):
    assert format_running_time(seconds) == expected


def test_job_fetch_keeps_widget_api(connection):
    job = Job.fetch(Queue(connection=connection).enqueue("builtins.print", "hi").id, connection=connection)

    widget = job.widget()

    assert isinstance(widget, JobWidget)
    assert widget.job_id == job.id
    assert widget.queue == "default"
    widget.close()
