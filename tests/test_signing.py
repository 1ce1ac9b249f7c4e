"""Tests of payload signing with NBQUEUE_SECRET_KEY, of passwords in Redis URLs and of ``rediss://`` (TLS).

Every test runs real ``nbqueue worker`` subprocesses against a real redis-server: the session's, or one it
starts itself with a password or with TLS.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from polling import wait_until

import fault_jobs
from servers import find_redis_server_binary, free_port
from nbqueue import DeserializationError, Job, JobStatus, Queue, Result, keys, serialization
from nbqueue.connection import connect, describe
from nbqueue.errors import ConnectionResolutionError

pytestmark = pytest.mark.timeout(60)

SECRET_KEY = "test-secret-key"
OTHER_KEY = "another-secret-key"
UNSIGNED_MESSAGE = (
    "is unsigned but NBQUEUE_SECRET_KEY is set: it was not written by a client with the same key, so it is refused unread"
)
FORGED_MESSAGE = (
    "has an invalid signature: it was written with another NBQUEUE_SECRET_KEY or altered, so it is refused unread"
)


def forge_payload(connection: redis.Redis, job_id: str, func: Callable[..., Any], args: tuple[Any, ...], key: str) -> None:
    """Replace a job's payload with a well-formed envelope of ``func(*args)`` signed with ``key``."""
    payload = serialization.dumps_call(func, args, {}, max_bytes=1 << 20, secret_key=key.encode())
    connection.hset(keys.job(job_id), "payload", payload)


def start_private_redis(tmp_path: Path, name: str, args: list[str], ping: Callable[[], bool]) -> subprocess.Popen:
    """Start a redis-server with ``args`` in ``tmp_path`` and wait until ``ping`` succeeds."""
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [find_redis_server_binary(), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
             "--appendonly", "no", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def is_up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"redis-server {name} exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            return ping()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    wait_until(is_up, 10, f"redis-server {name}")
    return process


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# Signed payloads


def test_signed_job_runs_and_result_verifies(start_worker, connection, monkeypatch):
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", SECRET_KEY)
    queue = Queue("signedq", connection=connection)
    job = queue.enqueue(fault_jobs.add, 20, 22)
    worker = start_worker("signedq")

    result = job.latest_result(timeout=10)

    assert result is not None, worker.log()
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    assert result.return_value == 42
    header, _ = serialization.read_envelope(
        connection.hget(keys.job(job.id), "payload"), secret_key=SECRET_KEY.encode()
    )
    assert len(header["hmac"]) == 64
    stored_value = connection.xrevrange(keys.results(job.id), count=1)[0][1][b"value"]
    value_header, _ = serialization.read_envelope(stored_value, secret_key=SECRET_KEY.encode())
    assert len(value_header["hmac"]) == 64


def test_unsigned_payload_refused(start_worker, connection, monkeypatch):
    queue = Queue("unsignedq", connection=connection)
    job = queue.enqueue(fault_jobs.add, 1, 2)
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", SECRET_KEY)
    behind = queue.enqueue(fault_jobs.add, 3, 4)
    worker = start_worker("unsignedq")

    result = job.latest_result(timeout=10)
    behind_result = behind.latest_result(timeout=10)

    assert result is not None, worker.log()
    assert result.type == Result.Type.FAILED
    assert result.exc_string == (
        f"nbqueue.errors.DeserializationError: The payload of job {job.id!r} {UNSIGNED_MESSAGE}"
    )
    assert job.get_status() == JobStatus.FAILED
    assert behind_result is not None
    assert behind_result.return_value == 7


def test_forged_payload_refused_unread(start_worker, connection, monkeypatch, tmp_path):
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", SECRET_KEY)
    marker = tmp_path / "forged-job-ran"
    queue = Queue("forgedq", connection=connection)
    job = queue.enqueue(fault_jobs.add, 1, 2)
    forge_payload(connection, job.id, fault_jobs.create_marker, (str(marker),), OTHER_KEY)
    behind = queue.enqueue(fault_jobs.add, 3, 4)
    worker = start_worker("forgedq")

    result = job.latest_result(timeout=10)
    behind_result = behind.latest_result(timeout=10)

    assert result is not None, worker.log()
    assert result.type == Result.Type.FAILED
    assert result.exc_string == f"nbqueue.errors.DeserializationError: The payload of job {job.id!r} {FORGED_MESSAGE}"
    assert not marker.exists()
    assert behind_result is not None
    assert behind_result.return_value == 7


def test_result_signed_with_other_key_refused(start_worker, connection, monkeypatch):
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", OTHER_KEY)
    job = Queue("otherkeyq", connection=connection).enqueue(fault_jobs.add, 1, 2)
    worker = start_worker("otherkeyq")
    result = job.latest_result(timeout=10)
    assert result is not None, worker.log()
    assert result.type == Result.Type.SUCCESSFUL

    monkeypatch.setenv("NBQUEUE_SECRET_KEY", SECRET_KEY)
    fresh = Job.fetch(job.id, connection).latest_result()

    with pytest.raises(DeserializationError) as raised:
        fresh.return_value
    assert str(raised.value) == f"The return value of job {job.id!r} {FORGED_MESSAGE}"


def test_unsigned_result_refused_when_key_set(start_worker, connection, monkeypatch):
    job = Queue("unsignedresultq", connection=connection).enqueue(fault_jobs.add, 1, 2)
    worker = start_worker("unsignedresultq")
    result = job.latest_result(timeout=10)
    assert result is not None, worker.log()

    monkeypatch.setenv("NBQUEUE_SECRET_KEY", SECRET_KEY)
    fresh = Job.fetch(job.id, connection).latest_result()

    with pytest.raises(DeserializationError) as raised:
        fresh.return_value
    assert str(raised.value) == f"The return value of job {job.id!r} {UNSIGNED_MESSAGE}"


# Passwords


@pytest.fixture
def password_url(tmp_path) -> Iterator[tuple[str, str, int]]:
    """Start a private redis-server that requires a password, and yield its URL, the password and the port."""
    password = "pw" + uuid.uuid4().hex
    port = free_port()
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1)
    process = start_private_redis(tmp_path, "password-redis", ["--port", str(port), "--requirepass", password], client.ping)
    try:
        yield f"redis://:{password}@127.0.0.1:{port}/0", password, port
    finally:
        client.close()
        stop_process(process)


def test_password_absent_from_logs_and_reprs(start_worker, password_url):
    url, password, port = password_url
    worker = start_worker("--url", url, "pwq")
    queue = Queue("pwq", connection=url)
    job = queue.enqueue(fault_jobs.always_fail, "boom")

    result = job.latest_result(timeout=10)
    worker.signal(signal.SIGINT)
    worker.wait(15)
    log = worker.log()

    assert result is not None, log
    assert result.type == Result.Type.FAILED
    assert f"redis://:***@127.0.0.1:{port}/0" in log
    assert password not in log
    texts = {
        "repr(Queue)": repr(queue),
        "repr(Job)": repr(job),
        "repr(connection)": repr(queue.connection),
        "repr(connection pool)": repr(queue.connection.connection_pool),
        "repr(failed registry)": repr(queue.failed_job_registry),
        "repr(Result)": repr(result),
        "exc_string": result.exc_string,
        "describe(connection)": describe(queue.connection),
    }
    for name, text in texts.items():
        assert password not in text, f"{name}: {text}"


def test_wrong_password_errors_hide_password(start_worker, password_url, tmp_path):
    url, password, port = password_url
    wrong = "wrong" + uuid.uuid4().hex
    wrong_url = f"redis://:{wrong}@127.0.0.1:{port}/0"

    with pytest.raises(redis.AuthenticationError) as raised:
        Queue("pwq", connection=wrong_url).enqueue(fault_jobs.add, 1, 2)
    client_error = str(raised.value)

    cli = subprocess.run(
        [sys.executable, "-m", "nbqueue", "info", "--url", wrong_url], capture_output=True, text=True, timeout=30,
    )
    worker = start_worker("--url", wrong_url, "pwq", wait_ready=False)
    worker_exit = worker.wait(20)
    worker_log = worker.log()

    print(f"wrong password: client error {client_error!r}; info exit {cli.returncode}; worker exit {worker_exit}")
    assert wrong not in client_error
    assert password not in client_error
    assert cli.returncode != 0
    assert wrong not in cli.stdout + cli.stderr
    assert worker_exit != 0
    assert wrong not in worker_log, worker_log


def test_malformed_url_error_masks_password():
    secret = "s3cret" + uuid.uuid4().hex

    with pytest.raises(ConnectionResolutionError) as raised:
        connect(f"redis://:{secret}@127.0.0.1:notaport/0")

    assert secret not in str(raised.value)
    assert str(raised.value).startswith("Invalid Redis URL 'redis://:***@127.0.0.1:notaport/0': ")


# TLS


@pytest.fixture
def tls_url(tmp_path) -> Iterator[str]:
    """Start a private redis-server that accepts only TLS on loopback, and yield its ``rediss://`` URL."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no certificate can be made for the TLS server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        process = start_private_redis(
            tmp_path, "tls-redis",
            ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--tls-auth-clients", "no"],
            client.ping,
        )
    except pytest.fail.Exception as exc:
        log = (tmp_path / "tls-redis.log").read_text()
        if "TLS" in log and "not" in log.lower() and "support" in log.lower():
            pytest.skip(f"this redis-server has no TLS support: {log.strip()[-200:]}")
        raise exc
    try:
        yield url
    finally:
        client.close()
        stop_process(process)


def test_rediss_url_runs_job_end_to_end(start_worker, tls_url):
    worker = start_worker("--url", tls_url, "tlsq")
    job = Queue("tlsq", connection=tls_url).enqueue(fault_jobs.add, 40, 2)

    result = job.latest_result(timeout=10)

    assert result is not None, worker.log()
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value == 42
    port = tls_url.split(":")[2].split("/")[0]
    assert f"redis rediss://127.0.0.1:{port}/0" in worker.log()
