"""Tests of the side panel's REST handlers in a real Jupyter server, with the test Redis and real workers.

Two servers run for the module, both on loopback with a token: one uses the test Redis server, the other
a loopback port where nothing listens, for the 503 case.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jupyter_extension import enable_extension
from servers import free_port

from nbqueue import Job, JobStatus, Queue, Result

#: Seconds a Jupyter server gets to respond to ``/api/status`` after it starts.
SERVER_START_TIMEOUT_S = 60.0

pytestmark = pytest.mark.timeout(90)


@dataclass
class Response:
    status: int
    body: dict


@dataclass
class JupyterServer:
    """A ``jupyter server`` process that this module started, with its token and log."""

    process: subprocess.Popen
    port: int
    token: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        token: str | None = "",
        opener: urllib.request.OpenerDirector | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send a request to ``/nbqueue/api/<path>``; ``token=""`` means this server's token, None no token."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"token {token or self.token}"
        data = b"" if method in ("POST", "PUT") else None
        request = urllib.request.Request(
            f"{self.base_url}/nbqueue/api/{path}", method=method, headers=all_headers, data=data
        )
        try:
            with (opener or urllib.request.build_opener()).open(request, timeout=15) as response:
                return Response(response.status, json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                decoded = json.loads(body) if body else {}
            except ValueError:
                decoded = {"text": body.decode(errors="replace")}
            return Response(error.code, decoded)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str) -> Response:
        return self.request("POST", path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start_server(base: Path, redis_url: str) -> JupyterServer:
    """Start ``jupyter server`` on a free loopback port with the nbqueue extension, using ``redis_url``."""
    config_dir, data_dir = base / "config", base / "data"
    enable_extension(config_dir, data_dir)
    root_dir = base / "root"
    root_dir.mkdir(parents=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NBQUEUE_", "JUPYTER"))}
    env.update(
        NBQUEUE_REDIS_URL=redis_url,
        NBQUEUE_HOME=str(base / "nbqueue-home"),
        JUPYTER_CONFIG_DIR=str(config_dir),
        JUPYTER_DATA_DIR=str(data_dir),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
    )
    port = free_port()
    token = secrets.token_hex(24)
    args = [
        sys.executable, "-m", "jupyter", "server",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.terminals_enabled=False",
    ]
    if os.geteuid() == 0:
        args.append("--allow-root")
    log_path = base / "jupyter.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root_dir,
                                   start_new_session=True)
    server = JupyterServer(process=process, port=port, token=token, log_path=log_path)

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"jupyter server exited with {process.returncode} before responding:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/api/status?token={token}", timeout=2):
                break
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"jupyter server did not respond within {SERVER_START_TIMEOUT_S}s:\n{server.log()}")
        time.sleep(0.1)
    if "nbqueue: side panel API registered" not in server.log():
        server.stop()
        pytest.fail(f"the nbqueue server extension did not load:\n{server.log()}")
    return server


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory) -> Iterator[JupyterServer]:
    started = start_server(tmp_path_factory.mktemp("jupyter-server"), redis_server.url)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def server_without_redis(tmp_path_factory) -> Iterator[JupyterServer]:
    """A server whose NBQUEUE_REDIS_URL names a loopback port where nothing listens."""
    closed_port = free_port()
    started = start_server(tmp_path_factory.mktemp("jupyter-no-redis"), f"redis://127.0.0.1:{closed_port}/0")
    yield started
    started.stop()


@pytest.fixture
def queue(redis_url) -> Queue:
    return Queue("default", connection=redis_url)


def wait_for_status(job: Job, status: JobStatus, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while job.get_status() != status:
        if time.monotonic() > deadline:
            pytest.fail(f"job {job.id} stayed {job.get_status()} instead of becoming {status}")
        time.sleep(0.02)


# Authentication


def test_api_rejects_missing_token(server, redis_url):
    for path in ("status", "queues", "workers", "jobs", "jobs/any"):
        response = server.request("GET", path, token=None)
        assert response.status == 403, path


def test_api_rejects_wrong_token(server, redis_url):
    response = server.request("GET", "queues", token="not-the-token")
    assert response.status == 403


def test_action_without_token_is_rejected(server, queue):
    job = queue.enqueue("operator.add", 1, 2)
    response = server.request("POST", f"jobs/{job.id}/cancel", token=None)
    assert response.status == 403
    assert job.get_status() == JobStatus.QUEUED


def test_cookie_login_needs_xsrf_for_writes(server, queue):
    job = queue.enqueue("operator.add", 1, 2)
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    with opener.open(f"{server.base_url}/lab?token={server.token}", timeout=15):
        pass  # logs in: sets the login cookie and the _xsrf cookie
    xsrf = next(cookie.value for cookie in cookies if cookie.name == "_xsrf")

    assert server.request("GET", "queues", token=None, opener=opener).status == 200
    rejected = server.request("POST", f"jobs/{job.id}/cancel", token=None, opener=opener)
    assert rejected.status == 403
    assert job.get_status() == JobStatus.QUEUED

    accepted = server.request(
        "POST", f"jobs/{job.id}/cancel", token=None, opener=opener, headers={"X-XSRFToken": xsrf}
    )
    assert accepted.status == 200
    assert job.get_status() == JobStatus.CANCELED


# Reading


def test_status_names_redis_server(server, redis_server, redis_url):
    response = server.get("status")
    assert response.status == 200
    assert response.body["redis"] == f"redis://127.0.0.1:{redis_server.port}/0"


def test_queues_counts_per_state(server, redis_url):
    default, other = Queue("default", connection=redis_url), Queue("other", connection=redis_url)
    default.enqueue("operator.add", 1, 2)
    canceled = default.enqueue("operator.add", 3, 4)
    canceled.cancel()
    other.enqueue("operator.add", 5, 6)

    response = server.get("queues")
    assert response.status == 200
    counts = {queue["name"]: queue["counts"] for queue in response.body["queues"]}
    assert list(counts) == ["default", "other"]
    assert counts["default"] == {"queued": 1, "started": 0, "scheduled": 0, "finished": 0, "failed": 0, "canceled": 1}
    assert counts["other"]["queued"] == 1
    assert response.body["states"] == ["queued", "started", "scheduled", "finished", "failed", "canceled"]


def test_workers_show_state_and_heartbeat(server, queue, start_worker):
    start_worker("--name", "panel-worker")
    job = queue.enqueue("jobs.add", 2, 3)
    assert job.latest_result(timeout=20).type == Result.Type.SUCCESSFUL

    response = server.get("workers")
    assert response.status == 200
    (worker,) = response.body["workers"]
    assert worker["name"] == "panel-worker"
    assert worker["state"] in ("idle", "busy")
    assert worker["queues"] == ["default"]
    assert worker["heartbeat_age_s"] >= 0
    assert worker["heartbeat_age_s"] < 30


def test_workers_show_current_job(server, queue, start_worker):
    start_worker("--name", "busy-worker")
    job = queue.enqueue("jobs.sleep_then_return", 30)
    wait_for_status(job, JobStatus.STARTED)

    deadline = time.monotonic() + 10
    while True:
        (worker,) = server.get("workers").body["workers"]
        if worker["current_jobs"] == [job.id] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert worker["current_jobs"] == [job.id]
    assert worker["state"] == "busy"
    job.stop()


def test_jobs_newest_first_and_paged(server, queue):
    ids = [queue.enqueue("operator.add", i, i, job_id=f"job-{i}").id for i in range(5)]

    first = server.get("jobs?limit=2")
    assert first.status == 200
    assert [job["id"] for job in first.body["jobs"]] == ["job-4", "job-3"]
    assert first.body["has_more"] is True

    last = server.get("jobs?limit=2&offset=4")
    assert [job["id"] for job in last.body["jobs"]] == ["job-0"]
    assert last.body["has_more"] is False
    assert set(ids) == {f"job-{i}" for i in range(5)}


def test_jobs_filter_by_queue_status_tag(server, redis_url):
    default, other = Queue("default", connection=redis_url), Queue("other", connection=redis_url)
    default.enqueue("operator.add", 1, 1, job_id="plain")
    default.enqueue("operator.add", 1, 1, job_id="tagged", tags=["experiment"])
    other.enqueue("operator.add", 1, 1, job_id="elsewhere")
    canceled = default.enqueue("operator.add", 1, 1, job_id="canceled")
    canceled.cancel()

    def ids(query: str) -> list[str]:
        response = server.get(f"jobs?{query}")
        assert response.status == 200, response.body
        return sorted(job["id"] for job in response.body["jobs"])

    assert ids("queue=other") == ["elsewhere"]
    assert ids("status=canceled") == ["canceled"]
    assert ids("queue=default&status=queued") == ["plain", "tagged"]
    assert ids("tag=experiment") == ["tagged"]
    assert ids("queue=missing") == []


@pytest.mark.parametrize(
    "query", ["status=done", "limit=0", "limit=501", "limit=many", "offset=-1", "offset=x"]
)
def test_jobs_invalid_parameter_is_400(server, redis_url, query):
    response = server.get(f"jobs?{query}")
    assert response.status == 400
    assert "invalid" in response.body["message"]


def test_job_detail_has_results_and_output(server, queue, start_worker):
    job = queue.enqueue("builtins.print", "hello from the job", job_id="printer")
    start_worker("--burst").wait()

    response = server.get("jobs/printer")
    assert response.status == 200
    detail = response.body["job"]
    assert detail["status"] == "finished"
    assert detail["func"] == "builtins.print"
    assert detail["queue"] == "default"
    assert [result["type"] for result in detail["results"]] == ["SUCCESSFUL"]
    assert detail["results"][0]["return_value"] == "None"
    assert detail["output"] == [{"kind": "stream", "name": "stdout", "text": "hello from the job\n"}]
    assert detail["traceback"] is None
    assert detail["provenance"] is None
    assert job.id == "printer"


def test_job_detail_has_traceback(server, queue, start_worker):
    queue.enqueue("jobs.raise_value_error", "bad input", job_id="raiser")
    start_worker("--burst").wait()

    detail = server.get("jobs/raiser").body["job"]
    assert detail["status"] == "failed"
    assert detail["results"][0]["type"] == "FAILED"
    assert "ValueError: bad input" in detail["traceback"]
    assert detail["results"][0]["return_value"] is None


def test_job_detail_has_provenance(server, queue, connection):
    job = queue.enqueue("operator.add", 1, 2)
    connection.hset(f"nbqueue:job:{job.id}", mapping={"notebook_path": "a.ipynb", "cell_id": "c1"})

    detail = server.get(f"jobs/{job.id}").body["job"]
    assert detail["provenance"] == {"notebook_path": "a.ipynb", "cell_id": "c1"}


def test_job_id_with_slash_round_trips(server, queue):
    job_id = "runs/2024 #1?x=%2F"
    queue.enqueue("operator.add", 1, 2, job_id=job_id)

    response = server.get(f"jobs/{urllib.parse.quote(job_id, safe='')}")
    assert response.status == 200
    assert response.body["job"]["id"] == job_id
    listed = server.get("jobs").body["jobs"]
    assert [job["id"] for job in listed] == [job_id]


# Errors


def test_missing_job_is_404(server, redis_url):
    for method, path in (("GET", "jobs/nope"), ("POST", "jobs/nope/stop"), ("POST", "jobs/nope/requeue"),
                         ("DELETE", "jobs/nope")):
        response = server.request(method, path)
        assert response.status == 404, (method, path)
        assert "nope" in response.body["message"]


def test_stop_queued_job_is_409(server, queue):
    job = queue.enqueue("operator.add", 1, 2)
    response = server.post(f"jobs/{job.id}/stop")
    assert response.status == 409
    assert "not running" in response.body["message"]
    assert job.get_status() == JobStatus.QUEUED


def test_cancel_finished_job_is_409(server, queue, start_worker):
    job = queue.enqueue("operator.add", 1, 2)
    start_worker("--burst").wait()
    response = server.post(f"jobs/{job.id}/cancel")
    assert response.status == 409
    assert "cannot be canceled" in response.body["message"]


def test_unknown_action_is_400(server, queue):
    job = queue.enqueue("operator.add", 1, 2)
    response = server.post(f"jobs/{job.id}/explode")
    assert response.status == 400
    assert "explode" in response.body["message"]


def test_redis_down_is_503(server_without_redis):
    for path in ("queues", "workers", "jobs", "jobs/any"):
        response = server_without_redis.get(path)
        assert response.status == 503, path
        assert "Cannot reach Redis" in response.body["message"]
    assert server_without_redis.post("jobs/any/stop").status == 503


# Actions


def test_cancel_requeue_and_delete(server, queue, connection):
    job = queue.enqueue("operator.add", 1, 2)

    canceled = server.post(f"jobs/{job.id}/cancel")
    assert canceled.status == 200
    assert canceled.body == {"id": job.id, "action": "cancel", "status": "canceled"}

    requeued = server.post(f"jobs/{job.id}/requeue")
    assert requeued.status == 200
    assert requeued.body["status"] == "queued"
    assert queue.job_ids == [job.id]

    deleted = server.request("DELETE", f"jobs/{job.id}")
    assert deleted.status == 200
    assert not connection.exists(f"nbqueue:job:{job.id}")
    assert server.get(f"jobs/{job.id}").status == 404


def test_stop_running_job_records_stopped(server, queue, start_worker):
    start_worker()
    job = queue.enqueue("jobs.sleep_then_return", 60)
    wait_for_status(job, JobStatus.STARTED)

    response = server.post(f"jobs/{job.id}/stop")
    assert response.status == 200
    result = job.latest_result(timeout=20)
    assert result is not None
    assert result.type == Result.Type.STOPPED
    assert job.get_status() == JobStatus.STOPPED

