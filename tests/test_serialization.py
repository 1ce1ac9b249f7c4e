"""Tests of the payload envelope: round trips, pickling by value, version checks, corruption and signatures."""

from __future__ import annotations

import importlib
import json
import pickle
import struct
import subprocess
import sys
import uuid

import cloudpickle
import pytest

from nbqueue import DeserializationError, Queue, Result, keys, serialization
from nbqueue.serialization import CLOUDPICKLE_VERSION, MAGIC, PYTHON_VERSION

MAX_BYTES = 10 * 1024 * 1024


def add(a: int, b: int) -> int:
    return a + b


def make_adder(offset: int):
    def add_offset(x: int) -> int:
        return x + offset

    return add_offset


def envelope(header: dict, body: bytes) -> bytes:
    """Build an envelope by hand, the way ``serialization`` lays it out, with any header."""
    header_bytes = json.dumps(header).encode()
    return MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes + body


def run_burst_worker(start_worker) -> None:
    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.log()


# Round trips


def test_envelope_round_trip():
    value = {"numbers": [1, 2.5, -3], "text": "ünïcødé", "raw": b"\x00\xff", "nested": ({"a": None},)}

    data = serialization.dumps(value, max_bytes=MAX_BYTES, secret_key=None)

    assert data.startswith(MAGIC)
    assert serialization.loads(data, secret_key=None) == value


def test_envelope_header_records_versions():
    data = serialization.dumps([1, 2], max_bytes=MAX_BYTES, secret_key=None)

    header, body = serialization.read_envelope(data, secret_key=None)

    assert header == {"python": PYTHON_VERSION, "cloudpickle": CLOUDPICKLE_VERSION}
    assert pickle.loads(body) == [1, 2]


def test_envelope_call_round_trip():
    data = serialization.dumps_call(add, (1,), {"b": 2}, max_bytes=MAX_BYTES, secret_key=None)

    func, args, kwargs = serialization.loads_call(data, secret_key=None)

    assert func(*args, **kwargs) == 3
    assert args == (1,)
    assert kwargs == {"b": 2}


def test_closure_and_lambda_by_value(connection, start_worker):
    queue = Queue(connection=connection)
    scale = 7

    closure_job = queue.enqueue(make_adder(10), 5)
    lambda_job = queue.enqueue(lambda x: x * scale, 6)
    run_burst_worker(start_worker)

    assert closure_job.return_value() == 15
    assert lambda_job.return_value() == 42


def test_class_defined_in_test_by_value(connection, start_worker):
    class Point:
        def __init__(self, x: int, y: int):
            self.x, self.y = x, y

        def norm2(self) -> int:
            return self.x * self.x + self.y * self.y

        def moved(self, dx: int) -> "Point":
            return Point(self.x + dx, self.y)

    queue = Queue(connection=connection)

    norm_job = queue.enqueue(Point.norm2, Point(3, 4))
    moved_job = queue.enqueue(Point(1, 2).moved, 10)
    run_burst_worker(start_worker)

    assert norm_job.return_value() == 25
    moved = moved_job.return_value()
    assert (moved.x, moved.y) == (11, 2)
    assert moved.norm2() == 125


def test_closure_loads_in_fresh_process():
    offset = 100
    data = serialization.dumps(lambda x: x + offset, max_bytes=MAX_BYTES, secret_key=None)
    code = (
        "import sys; from nbqueue import serialization; "
        "f = serialization.loads(sys.stdin.buffer.read(), secret_key=None); print(f(1))"
    )

    done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=30)

    assert done.returncode == 0, done.stderr
    assert done.stdout == b"101\n"


# A module that lives beside the notebook


def test_local_module_by_value(connection, start_worker, tmp_path, monkeypatch):
    module_name = f"nbhelper_{uuid.uuid4().hex}"
    notebook_dir = tmp_path / "notebook"
    notebook_dir.mkdir()
    (notebook_dir / f"{module_name}.py").write_text(
        "FACTOR = 3\n\n\ndef triple(x):\n    return FACTOR * x\n"
    )
    worker_dir = tmp_path / "elsewhere"
    worker_dir.mkdir()

    monkeypatch.chdir(notebook_dir)
    monkeypatch.syspath_prepend(str(notebook_dir))
    helper = importlib.import_module(module_name)
    job = Queue(connection=connection).enqueue(helper.triple, 7)

    # The worker runs in another folder, where the module cannot be imported.
    monkeypatch.chdir(worker_dir)
    probe = subprocess.run([sys.executable, "-c", f"import {module_name}"], capture_output=True, timeout=30)
    assert probe.returncode != 0
    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    assert result.return_value == 21


# Version checks


def payload_from_python_3_99() -> bytes:
    body = cloudpickle.dumps((add, (1, 2), {}), protocol=pickle.HIGHEST_PROTOCOL)
    return envelope({"python": "3.99.0", "cloudpickle": CLOUDPICKLE_VERSION}, body)


def test_loads_other_python_version():
    with pytest.raises(DeserializationError) as excinfo:
        serialization.loads(payload_from_python_3_99(), secret_key=None)

    message = str(excinfo.value)
    assert "Python 3.99.0" in message
    assert f"Python {PYTHON_VERSION}" in message


def test_loads_other_cloudpickle_major():
    body = cloudpickle.dumps(1)
    data = envelope({"python": PYTHON_VERSION, "cloudpickle": "99.0.0"}, body)

    with pytest.raises(DeserializationError) as excinfo:
        serialization.loads(data, secret_key=None)

    message = str(excinfo.value)
    assert "cloudpickle 99.0.0" in message
    assert f"cloudpickle {CLOUDPICKLE_VERSION}" in message


def test_worker_other_python_version(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(add, 1, 2)
    connection.hset(keys.job(job.id), "payload", payload_from_python_3_99())
    next_job = queue.enqueue(add, 3, 4)

    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.FAILED
    assert "DeserializationError" in result.exc_string
    assert "3.99" in result.exc_string
    assert PYTHON_VERSION in result.exc_string
    assert next_job.return_value() == 7


# Corrupt payloads


def valid_payload() -> bytes:
    return serialization.dumps({"a": 1}, max_bytes=MAX_BYTES, secret_key=None)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", "not an nbqueue payload"),
        (b"garbage that is not a payload", "not an nbqueue payload"),
        (MAGIC, "not an nbqueue payload"),
        (b"\x80\x05K\x01.", "not an nbqueue payload"),
        (MAGIC + struct.pack(">I", 1000) + b"{}", "truncated"),
        (MAGIC + struct.pack(">I", 5) + b"{oops", "corrupt header"),
        (MAGIC + struct.pack(">I", 2) + b"[]", "corrupt header"),
        (MAGIC + struct.pack(">I", 2) + b"\xff\xfe", "corrupt header"),
        (valid_payload()[:20], "truncated"),
        (valid_payload()[:-3], "Cannot unpickle"),
        (envelope({"python": PYTHON_VERSION, "cloudpickle": CLOUDPICKLE_VERSION}, b"not a pickle"), "Cannot unpickle"),
        (envelope({"python": PYTHON_VERSION, "cloudpickle": CLOUDPICKLE_VERSION}, b""), "Cannot unpickle"),
    ],
    ids=[
        "empty", "garbage", "magic-only", "bare-pickle", "header-longer-than-data", "header-not-json",
        "header-not-object", "header-not-utf8", "cut-in-header", "cut-in-pickle", "body-not-pickle", "body-empty",
    ],
)
def test_loads_corrupt_payload(data, expected):
    with pytest.raises(DeserializationError) as excinfo:
        serialization.loads(data, secret_key=None)

    assert expected in str(excinfo.value)


def test_worker_corrupt_payload(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(add, 1, 2)
    connection.hset(keys.job(job.id), "payload", b"garbage")
    next_job = queue.enqueue(add, 3, 4)

    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.FAILED
    assert "DeserializationError" in result.exc_string
    assert "not an nbqueue payload" in result.exc_string
    assert next_job.return_value() == 7


# Signatures


def test_signed_payload_same_key():
    data = serialization.dumps([1, 2], max_bytes=MAX_BYTES, secret_key=b"key-one")

    header, _ = serialization.read_envelope(data, secret_key=b"key-one")

    assert len(header["hmac"]) == 64
    assert serialization.loads(data, secret_key=b"key-one") == [1, 2]


def test_signed_payload_other_key():
    data = serialization.dumps([1, 2], max_bytes=MAX_BYTES, secret_key=b"key-one")

    with pytest.raises(DeserializationError) as excinfo:
        serialization.loads(data, secret_key=b"key-two")

    assert "invalid signature" in str(excinfo.value)


def test_signed_payload_altered_body():
    data = serialization.dumps("abc", max_bytes=MAX_BYTES, secret_key=b"key-one")
    altered = data.replace(b"abc", b"abd")
    assert altered != data

    with pytest.raises(DeserializationError) as excinfo:
        serialization.loads(altered, secret_key=b"key-one")

    assert "invalid signature" in str(excinfo.value)


def test_unsigned_payload_refused_with_key():
    data = serialization.dumps([1, 2], max_bytes=MAX_BYTES, secret_key=None)

    with pytest.raises(DeserializationError) as excinfo:
        serialization.loads(data, secret_key=b"key-one")

    assert "unsigned" in str(excinfo.value)
    assert "NBQUEUE_SECRET_KEY" in str(excinfo.value)


def test_worker_signed_same_key(connection, start_worker, monkeypatch):
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", "key-one")
    job = Queue(connection=connection).enqueue(add, 1, 2)

    run_burst_worker(start_worker)

    value_payload = connection.xrevrange(keys.results(job.id), count=1)[0][1][b"value"]
    assert "hmac" in serialization.read_envelope(value_payload, secret_key=b"key-one")[0]
    assert job.return_value() == 3


def test_worker_signed_other_key(connection, start_worker, monkeypatch):
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", "key-one")
    job = Queue(connection=connection).enqueue(add, 1, 2)
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", "key-two")

    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.FAILED
    assert "invalid signature" in result.exc_string


def test_worker_unsigned_refused_with_key(connection, start_worker, monkeypatch):
    job = Queue(connection=connection).enqueue(add, 1, 2)
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", "key-one")

    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.FAILED
    assert "unsigned" in result.exc_string


def test_result_signed_other_key_refused(connection, start_worker, monkeypatch):
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", "key-one")
    job = Queue(connection=connection).enqueue(add, 1, 2)
    run_burst_worker(start_worker)
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", "key-two")

    with pytest.raises(DeserializationError) as excinfo:
        job.return_value()

    assert "invalid signature" in str(excinfo.value)
