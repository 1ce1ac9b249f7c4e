"""Fixtures for tests in a real browser: a JupyterLab server and headless Chromium driven by Playwright.

The server runs this Python, with its own Jupyter config, data and runtime folders, and with
``NBQUEUE_REDIS_URL`` set to the test Redis server, so the kernels it starts use that server. Chromium is
Debian's ``/usr/bin/chromium`` (``scripts/install-browser`` installs it); Playwright's own browser
downloads are not used. Without Chromium the tests are skipped, except under CI (``CI`` set), where they
fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_extension import enable_extension
from playwright.sync_api import expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

#: Seconds JupyterLab gets to respond to ``/api/status`` after it starts.
SERVER_START_TIMEOUT_S = 60.0
#: Seconds JupyterLab gets to shut down its kernels and exit before it is killed.
SERVER_STOP_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_pids(pid: int) -> list[int]:
    """Return the ids of the direct child processes of ``pid`` (Linux ``/proc``), or [] when unknown."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return children


@dataclass
class JupyterLab:
    """A JupyterLab server that the test session started, with the folder it serves."""

    process: subprocess.Popen
    port: int
    token: str
    root_dir: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Return the browser URL of ``path`` on this server, with the login token."""
        separator = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{separator}token={self.token}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, method: str, path: str, timeout_s: float = 5.0) -> object:
        """Send a REST request to the server and return its decoded JSON body (None when empty)."""
        request = urllib.request.Request(
            f"{self.base_url}/api/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
        return json.loads(body) if body else None

    def write_notebook(self, name: str, sources: list[str]) -> Path:
        """Write a notebook of code cells, using the ``python3`` kernel, into the served folder."""
        notebook = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(source) for source in sources],
            metadata={
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python"},
            },
        )
        path = self.root_dir / name
        nbformat.write(notebook, path)
        return path

    def shutdown_kernels(self) -> None:
        """Shut down every kernel the server runs; each DELETE request returns once its kernel has stopped."""
        for kernel in self.api("GET", "kernels"):
            self.api("DELETE", f"kernels/{kernel['id']}", timeout_s=SERVER_STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Shut the server down with its kernels; kill it, and kernels it left, if that does not work."""
        if self.process.poll() is not None:
            return
        kernel_pids = _child_pids(self.process.pid)
        try:
            self.shutdown_kernels()
            self.api("POST", "shutdown")
        except (OSError, urllib.error.URLError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

        # Kernels run in their own process groups, so killing the server's group does not reach them.
        for pid in kernel_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_until_ready(lab: JupyterLab) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if lab.process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {lab.process.returncode} before responding:\n{lab.log()}")
        try:
            lab.api("GET", "status", timeout_s=2.0)
            return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            lab.stop()
            pytest.fail(f"JupyterLab did not respond to /api/status within {SERVER_START_TIMEOUT_S}s:\n{lab.log()}")
        time.sleep(0.1)


def _write_lab_settings(settings_dir: Path) -> None:
    """Write JupyterLab user settings that keep dialogs and prompts out of the tests' way.

    News and update notifications are off (their prompt covers part of the page), and a notebook starts
    the kernel its metadata names without asking, as it otherwise may while kernel specs still load.
    """
    settings = {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"autoStartDefaultKernel": True},
    }
    for name, values in settings.items():
        path = settings_dir / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def jupyter_lab(redis_server, tmp_path_factory) -> Iterator[JupyterLab]:
    """Start JupyterLab on a free loopback port, serving a temporary folder, with kernels of this Python.

    News, update checks and the PyPI extension manager, which would contact servers outside this
    machine, are turned off. nbqueue's server extension is enabled, and its side panel is linked in
    when it has been built.
    """
    base = tmp_path_factory.mktemp("jupyter")
    root_dir = base / "root"
    root_dir.mkdir()
    data_dir = base / "data"
    write_kernel_spec(data_dir / "kernels" / "python3")
    enable_extension(base / "config", data_dir)
    settings_dir = base / "lab-settings"
    _write_lab_settings(settings_dir)

    env = {name: value for name, value in os.environ.items() if not name.startswith(("NBQUEUE_", "JUPYTER"))}
    env.update(
        NBQUEUE_REDIS_URL=redis_server.url,
        NBQUEUE_HOME=str(base / "nbqueue-home"),
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_DATA_DIR=str(data_dir),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings_dir),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "lab-workspaces"),
        JUPYTER_PLATFORM_DIRS="1",
    )
    port = _free_port()
    token = secrets.token_hex(24)
    args = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
    ]
    if os.geteuid() == 0:
        args.append("--allow-root")
    log_path = base / "jupyter.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root_dir, start_new_session=True
        )
    lab = JupyterLab(process=process, port=port, token=token, root_dir=root_dir, log_path=log_path)
    _wait_until_ready(lab)
    yield lab
    lab.stop()


@pytest.fixture(scope="module", autouse=True)
def require_chromium() -> None:
    """Skip the module's tests when Chromium is missing, before any server starts; under CI, fail them."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: run scripts/install-browser"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory) -> Iterator:
    """Headless Chromium with a fresh profile, as a Playwright browser context."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context, request) -> Iterator:
    """A new browser tab; on failure, a screenshot of it is saved to test-artifacts/."""
    tab = browser_context.new_page()
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
    tab.close()


class NotebookPage:
    """A notebook open in JupyterLab's single-document view, with the UI actions the tests use."""

    def __init__(self, page, name: str):
        self.page = page
        self.name = name

    def expect_kernel_idle(self, timeout_ms: float = 60_000) -> None:
        """Wait until the status bar shows the kernel idle, as in "Python 3 (ipykernel) | Idle"."""
        expect(self.page.get_by_role("button", name=re.compile(r"\| Idle$"))).to_be_visible(timeout=timeout_ms)

    def run_all_cells(self) -> None:
        """Run every cell through the Run menu, as a user would."""
        self.page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    def expect_shown(self, locator) -> None:
        """Wait until ``locator`` is visible; fail with the error's text if a cell shows an error first."""
        error = self.page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        expect(locator.or_(error).first).to_be_visible()
        if error.count():
            pytest.fail(f"a cell of {self.name} failed:\n{error.first.inner_text()}")

    def cell(self, index: int):
        """Return the locator of the code cell at ``index``."""
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)


@pytest.fixture
def open_notebook(jupyter_lab, page) -> Iterator:
    """Return a function that writes a notebook of code cells, opens it and waits for its kernel.

    Kernels are shut down at teardown, so the next test starts with none.
    """

    def open_(name: str, sources: list[str]) -> NotebookPage:
        jupyter_lab.write_notebook(name, sources)
        page.goto(jupyter_lab.url(f"doc/tree/{name}"))
        notebook = NotebookPage(page, name)
        notebook.expect_kernel_idle()
        return notebook

    yield open_
    jupyter_lab.shutdown_kernels()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
