"""The nbqueue side panel in JupyterLab, in headless Chromium, with a real worker and Redis.

The panel must follow jobs by itself: nothing in these tests clicks Refresh, so every change shown comes
from the panel's periodic refresh.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_extension import PREBUILT_PANEL
from playwright.sync_api import expect

from nbqueue import Job, JobStatus, Queue, Result

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture(scope="module", autouse=True)
def require_built_panel() -> None:
    """Skip the module's tests when the panel has not been built; under CI, fail them."""
    if (PREBUILT_PANEL / "package.json").exists():
        return
    message = f"{PREBUILT_PANEL} is missing: run scripts/build-extension"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def save_screenshot(locator, name: str) -> Path:
    """Save a screenshot of ``locator`` to test-artifacts/; NBQUEUE_UPDATE_DOCS_IMAGES=1 also copies it to docs/images/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    locator.screenshot(path=str(path))
    if os.environ.get("NBQUEUE_UPDATE_DOCS_IMAGES") == "1":
        shutil.copy(path, DOCS_IMAGES / name)
    return path


@pytest.fixture
def panel(jupyter_lab, page, redis_url) -> Iterator:
    """Open JupyterLab and show the side panel with the palette command "nbqueue: Open panel"."""
    page.goto(jupyter_lab.url("lab"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()
    # Shortcuts work once the splash screen is gone, which JupyterLab removes after its plugins start.
    expect(page.locator("#jupyterlab-splash")).to_have_count(0)
    run_command(page, "nbqueue: Open panel")
    node = page.locator("#nbqueue-panel")
    expect(node).to_be_visible()

    # Widen the left sidebar by dragging its split handle, as a user would, so that screenshots show
    # the tables without side scrolling.
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 180, y, steps=5)
    page.mouse.up()
    expect(node.locator(".nbqueue-updated")).to_contain_text("updated")
    yield node


def run_command(page, label: str) -> None:
    """Run the command with this label from the command palette (Ctrl+Shift+C)."""
    page.keyboard.press("Control+Shift+C")
    palette = page.locator("#command-palette")
    palette.locator("input").fill(label)
    # The palette redraws its items while it filters, so the test waits for the match, then runs the
    # active item with Enter instead of clicking an element that may be replaced.
    expect(palette.locator(".lm-CommandPalette-item.lm-mod-active")).to_contain_text(label)
    page.keyboard.press("Enter")


def job_row(panel, job_id: str):
    return panel.locator(f'tr.nbqueue-job-row[data-job-id="{job_id}"]')


@pytest.mark.timeout(180)
def test_panel_follows_job_queued_to_finished(panel, redis_url, start_worker):
    queue = Queue(connection=redis_url)
    job = queue.enqueue("jobs.sleep_then_return", 1.5, "all done", job_id="panel-job")

    row = job_row(panel, "panel-job")
    expect(row.locator(".nbqueue-status")).to_have_text("queued")
    expect(panel.locator('tr.nbqueue-queue-row[data-queue="default"]')).to_contain_text("1")
    expect(panel.locator(".nbqueue-workers")).to_contain_text("No workers running")
    save_screenshot(panel, "side-panel-queued.png")

    start_worker("--name", "panel-worker")
    expect(panel.locator('tr.nbqueue-worker-row[data-worker="panel-worker"]')).to_be_visible(timeout=30_000)
    expect(row.locator(".nbqueue-status")).to_have_text("finished", timeout=30_000)
    assert job.get_status() == JobStatus.FINISHED

    row.click()
    detail = panel.locator(".nbqueue-job-detail")
    expect(detail.locator(".nbqueue-detail-heading")).to_contain_text("finished")
    results = detail.locator(".nbqueue-result-row")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("successful")
    expect(results.first).to_contain_text("'all done'")
    save_screenshot(panel, "side-panel-finished.png")


@pytest.mark.timeout(180)
def test_stop_button_stops_running_job(panel, redis_url, start_worker):
    start_worker("--name", "stop-worker")
    queue = Queue(connection=redis_url)
    job = queue.enqueue("jobs.sleep_then_return", 120, job_id="long-job")

    row = job_row(panel, "long-job")
    expect(row.locator(".nbqueue-status")).to_have_text("started", timeout=30_000)
    row.click()
    detail = panel.locator('.nbqueue-job-detail[data-job-id="long-job"]')
    detail.get_by_role("button", name="Stop").click()

    dialog = panel.page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Stop job long-job?")
    save_screenshot(dialog.locator(".jp-Dialog-content"), "side-panel-stop-dialog.png")
    dialog.get_by_role("button", name="Stop").click()
    expect(dialog).to_have_count(0)

    expect(detail.locator(".nbqueue-detail-heading")).to_contain_text("stopped", timeout=30_000)
    expect(row.locator(".nbqueue-status")).to_have_text("stopped")
    expect(detail.locator(".nbqueue-result-row").first).to_contain_text("stopped")
    result = job.latest_result(timeout=10)
    assert result is not None
    assert result.type == Result.Type.STOPPED
    assert Job.fetch("long-job", connection=redis_url).get_status() == JobStatus.STOPPED
    save_screenshot(panel, "side-panel-stopped.png")

    run_command(panel.page, "Use Theme: JupyterLab Dark")
    expect(panel.page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
    expect(panel.page.locator("#jupyterlab-splash")).to_have_count(0)  # shown while the theme loads
    expect(detail.locator(".nbqueue-detail-heading")).to_contain_text("stopped")
    save_screenshot(panel, "side-panel-dark.png")
