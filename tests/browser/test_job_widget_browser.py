"""The live job widget and the monitor in JupyterLab, in headless Chromium, with a real kernel, worker and Redis.

Each test runs a notebook's cells through the Run menu, then watches the page: the widgets must change
while no cell runs, because the kernel's background refresher pushes each change from Redis.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from nbqueue import Job, JobStatus, Result

#: Folder for screenshots, kept out of git; docs/images/ contains copies of good ones for the docs.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

SETUP_CELL = "import time\nimport nbqueue\nfrom nbqueue import Queue\nq = Queue()"

COUNT_CELL = '''\
def count(n, delay_s):
    for i in nbqueue.progress(range(n), message="counting"):
        print(f"step {i}")
        time.sleep(delay_s)
    return n * 10'''

#: JavaScript that returns the widget's progress bar as a fraction (0 to 1), read from the filled width.
BAR_FRACTION_JS = """widget => {
    const bar = widget.querySelector('.nbqueue-progress .progress-bar');
    return bar ? parseFloat(bar.style.width) / 100 : null;
}"""


def save_screenshot(locator, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    locator.screenshot(path=str(path))
    return path


@pytest.mark.timeout(240)
def test_widget_updates_live_until_finished(open_notebook, start_worker):
    notebook = open_notebook(
        "widget-live.ipynb",
        [SETUP_CELL, COUNT_CELL, "job = q.enqueue(count, 30, 0.2, job_id='browser-count')\njob"],
    )
    page = notebook.page
    job_cell = notebook.cell(2)
    widget = job_cell.locator(".nbqueue-job-widget")
    status = widget.locator(".nbqueue-status")

    notebook.run_all_cells()
    notebook.expect_shown(widget)

    # No worker runs yet, so the job waits in its queue and the cell has finished.
    expect(status).to_contain_text("queued")
    expect(status).to_contain_text("browser-count")
    notebook.expect_kernel_idle()
    expect(job_cell.locator(".jp-InputPrompt")).to_have_text("[3]:")

    start_worker()

    expect(status).to_contain_text("started", timeout=30_000)
    page.wait_for_function(
        f"widget => {{ const f = ({BAR_FRACTION_JS})(widget); return f !== null && f > 0 && f < 1; }}",
        arg=widget.element_handle(),
        timeout=30_000,
    )
    expect(widget.locator(".nbqueue-output")).to_contain_text("step 0")
    save_screenshot(job_cell, "job-widget-running.png")

    expect(status).to_contain_text("finished", timeout=60_000)
    expect(widget).to_contain_text("30 / 30 · counting")
    assert widget.evaluate(BAR_FRACTION_JS) == 1.0
    expect(widget.locator(".nbqueue-output")).to_contain_text("step 29")
    expect(widget.locator(".nbqueue-history")).to_contain_text("SUCCESSFUL")
    expect(widget.locator(".nbqueue-history")).to_contain_text("300")
    expect(widget.get_by_role("button", name="Stop")).to_be_disabled()

    # The updates came from the refresher, not from running the cell again.
    expect(job_cell.locator(".jp-InputPrompt")).to_have_text("[3]:")
    save_screenshot(job_cell, "job-widget-finished.png")


@pytest.mark.timeout(240)
def test_stop_button_stops_running_job(open_notebook, start_worker, connection):
    start_worker()
    notebook = open_notebook(
        "widget-stop.ipynb",
        [SETUP_CELL, COUNT_CELL, "job = q.enqueue(count, 1000, 0.1, job_id='browser-stop')\njob"],
    )
    job_cell = notebook.cell(2)
    widget = job_cell.locator(".nbqueue-job-widget")
    status = widget.locator(".nbqueue-status")
    stop_button = widget.get_by_role("button", name="Stop")

    notebook.run_all_cells()
    notebook.expect_shown(widget)
    expect(status).to_contain_text("started", timeout=30_000)
    expect(stop_button).to_be_enabled()

    stop_button.click()

    expect(widget.locator(".nbqueue-message")).to_contain_text("Stop requested.")
    expect(status).to_contain_text("stopped", timeout=30_000)
    expect(widget.locator(".nbqueue-history")).to_contain_text("STOPPED")
    expect(widget.get_by_role("button", name="Requeue")).to_be_enabled()
    save_screenshot(job_cell, "job-widget-stopped.png")

    job = Job.fetch("browser-stop", connection=connection)
    assert job.get_status() == JobStatus.STOPPED
    assert job.latest_result().type == Result.Type.STOPPED


@pytest.mark.timeout(240)
def test_monitor_cancel_button_cancels_job(open_notebook, start_worker, connection):
    start_worker()  # serves only the default queue, so the job on "reports" stays queued
    notebook = open_notebook(
        "monitor.ipynb",
        [
            SETUP_CELL,
            "reports = Queue('reports')\nreport = reports.enqueue(pow, 2, 10, job_id='report-1')",
            "nbqueue.monitor()",
        ],
    )
    monitor_cell = notebook.cell(2)
    monitor = monitor_cell.locator(".nbqueue-monitor")
    queues = monitor.locator(".nbqueue-monitor-queues")

    notebook.run_all_cells()
    notebook.expect_shown(monitor)

    # Columns: queue, then queued, started, scheduled, finished, failed and canceled counts.
    expect(queues.locator("tr", has_text="reports").locator("td")).to_have_text(["reports", "1", "0", "0", "0", "0", "0"])
    expect(monitor.locator(".nbqueue-monitor-workers")).to_contain_text("idle")
    monitor.locator(".nbqueue-monitor-jobs select").select_option(index=0)
    monitor.get_by_role("button", name="Cancel").click()

    expect(monitor.locator(".nbqueue-monitor-message")).to_have_text("Canceled job report-1.")
    expect(queues.locator("tr", has_text="reports").locator("td")).to_have_text(["reports", "0", "0", "0", "0", "0", "1"])
    expect(monitor.locator(".nbqueue-monitor-jobs option").first).to_contain_text("[canceled] report-1")
    save_screenshot(monitor_cell, "monitor.png")

    assert Job.fetch("report-1", connection=connection).get_status() == JobStatus.CANCELED
