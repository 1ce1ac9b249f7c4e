"""Tests of the live monitor: counts per queue and state, workers, recent jobs and the job actions.

Kernel tests run through nbclient like tests/test_widgets.py, with a real worker and the test Redis server.
"""

from __future__ import annotations

import json

from nbqueue import Queue
from nbqueue.jupyter.monitor import COUNTED_STATES, Monitor, monitor
from test_widgets import WIDGET_VIEW, assert_no_errors, kernel_directory, run_notebook  # noqa: F401

# Defines wait_until(widget, trait, predicate): block the cell until the refresher thread changes the
# trait so that predicate(widget) is true, or raise after 20 s.
WAIT_UNTIL = '''
import threading, json

def wait_until(widget, trait, predicate, timeout_s=20):
    reached = threading.Event()
    def check(_change=None):
        if predicate(widget):
            reached.set()
    widget.observe(check, trait)
    check()
    if not reached.wait(timeout_s):
        raise TimeoutError(f"{trait} stayed {getattr(widget, trait)!r}")
    widget.unobserve(check, trait)
'''


def test_monitor_counts_and_actions_in_kernel(kernel_directory, start_worker):
    start_worker("--name", "monitored")

    notebook = run_notebook(
        [
            WAIT_UNTIL,
            "from nbqueue import Queue\nfrom nbqueue.jupyter.monitor import monitor\n"
            "default = Queue()\n"
            "done = default.enqueue('operator.add', 1, 2)\n"
            "broken = default.enqueue('builtins.divmod', 1, 0)\n"
            "done.latest_result(timeout=30)\nbroken.latest_result(timeout=30)\n"
            "reports = Queue('reports')\n"
            "waiting = [reports.enqueue('operator.add', i, i) for i in range(2)]\n"
            "m = monitor()\nm",
            "print(json.dumps({'queues': m.queues, 'workers': [w['name'] for w in m.workers],\n"
            "    'jobs': [job['id'] for job in m.jobs]}))",
            # The monitor shows a new job without a call to poll(), because the refresher thread updates it.
            "late = reports.enqueue('operator.add', 5, 5)\n"
            "wait_until(m, 'queues', lambda m: m.queues['reports']['queued'] == 3)\n"
            "m.jobs_select.value = waiting[0].id\nm.cancel_button.click()\nprint(m.message)\n"
            "wait_until(m, 'queues', lambda m: m.queues['reports']['canceled'] == 1)\n"
            "print(json.dumps(m.queues['reports']))",
            "sleeper = default.enqueue('time.sleep', 60)\n"
            "wait_until(m, 'jobs', lambda m: any(j['id'] == sleeper.id and j['status'] == 'started' for j in m.jobs))\n"
            "m.jobs_select.value = sleeper.id\nm._on_stop(None)\nprint(m.message)\n"
            "wait_until(m, 'jobs', lambda m: any(j['id'] == sleeper.id and j['status'] == 'stopped' for j in m.jobs))\n"
            "m.jobs_select.value = sleeper.id\nm.cancel_button.click()\nprint(m.message)\n"
            "m.jobs_select.value = broken.id\nm.requeue_button.click()\nprint(m.message)",
        ],
        kernel_directory,
    )

    assert_no_errors(notebook)
    state = json.loads(notebook.stdout(2))
    assert state["queues"]["default"] == {
        "queued": 0, "started": 0, "scheduled": 0, "finished": 1, "failed": 1, "canceled": 0,
    }
    assert state["queues"]["reports"] == {
        "queued": 2, "started": 0, "scheduled": 0, "finished": 0, "failed": 0, "canceled": 0,
    }
    assert state["workers"] == ["monitored"]
    assert len(state["jobs"]) == 4

    cancel_lines = notebook.stdout(3).splitlines()
    assert cancel_lines[0].startswith("Canceled job ")
    assert json.loads(cancel_lines[1]) == {
        "queued": 2, "started": 0, "scheduled": 0, "finished": 0, "failed": 0, "canceled": 1,
    }

    stop_lines = notebook.stdout(4).splitlines()
    assert stop_lines[0].startswith("Stop requested for job ")
    assert stop_lines[1].startswith("Could not cancel job ")
    assert "cannot be canceled (status stopped)" in stop_lines[1]
    assert stop_lines[2].startswith("Requeued job ")

    (bundle,) = notebook.bundles(1)
    monitor_state = notebook.widget_states()[bundle[WIDGET_VIEW]["model_id"]]
    assert "nbqueue-monitor" in monitor_state["_dom_classes"]


def test_monitor_counts_without_kernel(connection):
    reports = Queue("reports", connection=connection)
    jobs = [reports.enqueue("operator.add", i, i) for i in range(3)]
    jobs[0].cancel()

    view = monitor(connection)

    assert view.queues == {"reports": {"queued": 2, "started": 0, "scheduled": 0, "finished": 0, "failed": 0,
                                       "canceled": 1}}
    assert view.workers == []
    assert {job["id"] for job in view.jobs} == {job.id for job in jobs}
    assert "reports" in view.queues_html.value
    view.close()


def test_monitor_poll_reports_change(connection):
    view = Monitor(connection)
    assert view.poll() is False

    Queue(connection=connection).enqueue("operator.add", 1, 1)

    assert view.poll() is True
    assert view.queues["default"]["queued"] == 1
    assert list(view.queues["default"]) == list(COUNTED_STATES)
    view.close()


def test_monitor_action_without_selection(connection):
    view = Monitor(connection)

    view._on_stop(None)

    assert view.message == "Select a job in the list to stop it."
    view.close()
