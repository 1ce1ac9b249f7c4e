"""Tests of ``Queue``: what ``enqueue`` and friends write to a real Redis server, and what they reject."""

from __future__ import annotations

import threading

import pytest

from nbqueue import InvalidOptionError, Job, Queue, SerializationError, keys
from nbqueue.errors import ConfigurationError, PayloadTooLargeError, TimeoutFormatError
from nbqueue.settings import DEFAULT_MAX_PAYLOAD_BYTES, load_settings


def add(a: int, b: int) -> int:
    return a + b


def double(x: int) -> int:
    return 2 * x


def echo_kwargs(**kwargs: object) -> dict[str, object]:
    return kwargs


def run_burst_worker(start_worker) -> None:
    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.log()


def job_fields(connection, job_id: str) -> dict[str, bytes]:
    return {name.decode(): value for name, value in connection.hgetall(keys.job(job_id)).items()}


# enqueue: the job hash and the queue list


def test_enqueue_writes_job_hash(connection):
    queue = Queue("reports", connection=connection)

    job = queue.enqueue(add, 1, 2)

    fields = job_fields(connection, job.id)
    assert fields["status"] == b"queued"
    assert fields["queue"] == b"reports"
    assert fields["func"] == f"{add.__module__}.add".encode()
    assert fields["description"] == f"{add.__module__}.add(1, 2)".encode()
    assert float(fields["timeout"]) == 180
    assert fields["result_ttl"] == b"500"
    assert fields["failure_ttl"] == b"31536000"
    assert fields["created_at"] == fields["enqueued_at"]
    assert fields["payload"].startswith(b"NBQ1")
    assert "ttl" not in fields
    assert "meta" not in fields


def test_enqueue_pushes_id_on_queue_list(connection):
    queue = Queue("reports", connection=connection)

    job = queue.enqueue(add, 1, 2)

    assert connection.lrange(keys.queue("reports"), 0, -1) == [job.id.encode()]
    assert connection.smembers(keys.QUEUES) == {b"reports"}
    assert connection.ttl(keys.job(job.id)) == -1


def test_enqueue_at_front_goes_to_head(connection):
    queue = Queue(connection=connection)
    first = queue.enqueue(add, 1, 1)
    second = queue.enqueue(add, 2, 2)

    urgent = queue.enqueue(add, 3, 3, at_front=True)

    assert queue.job_ids == [urgent.id, first.id, second.id]


def test_enqueue_options_stored_on_job(connection):
    queue = Queue(connection=connection)

    job = queue.enqueue(
        add, 1, 2, job_id="custom-id", description="adds", result_ttl=60, failure_ttl="1h", ttl=30, meta={"k": 1}
    )

    fields = job_fields(connection, "custom-id")
    assert job.id == "custom-id"
    assert fields["description"] == b"adds"
    assert fields["result_ttl"] == b"60"
    assert fields["failure_ttl"] == b"3600"
    assert fields["ttl"] == b"30"
    assert 0 < connection.ttl(keys.job("custom-id")) <= 30
    assert Job.fetch("custom-id", connection).meta == {"k": 1}


# enqueue_call and option names


def test_enqueue_call_passes_option_named_kwargs(connection, start_worker):
    queue = Queue(connection=connection)

    job = queue.enqueue_call(echo_kwargs, kwargs={"timeout": 7, "job_id": "mine", "job_timeout": 3})
    run_burst_worker(start_worker)

    assert job.id != "mine"
    assert not connection.exists(keys.job("mine"))
    assert float(job_fields(connection, job.id)["timeout"]) == 180
    assert job.return_value() == {"timeout": 7, "job_id": "mine", "job_timeout": 3}


def test_enqueue_call_args_and_options(connection, start_worker):
    queue = Queue(connection=connection)

    job = queue.enqueue_call(add, args=(4, 5), job_id="call-id", job_timeout=30)
    run_burst_worker(start_worker)

    assert job.id == "call-id"
    assert float(job_fields(connection, "call-id")["timeout"]) == 30
    assert job.return_value() == 9


def test_enqueue_timeout_kwarg_reaches_function(connection, start_worker):
    queue = Queue(connection=connection)

    job = queue.enqueue(echo_kwargs, timeout=5)
    run_burst_worker(start_worker)

    assert float(job_fields(connection, job.id)["timeout"]) == 180
    assert job.return_value() == {"timeout": 5}


def test_enqueue_call_unknown_option_rejected(connection):
    queue = Queue(connection=connection)
    size_before = connection.dbsize()

    with pytest.raises(InvalidOptionError) as excinfo:
        queue.enqueue_call(add, args=(1, 2), colour="red")

    assert "'colour'" in str(excinfo.value)
    assert connection.dbsize() == size_before


@pytest.mark.parametrize(
    "options, named",
    [
        ({"retry": 3}, "retry="),
        ({"meta": ["not", "a", "dict"]}, "meta="),
        ({"ttl": 0}, "ttl="),
        ({"result_ttl": "soon"}, "result_ttl="),
    ],
)
def test_enqueue_invalid_option_value_rejected(connection, options, named):
    queue = Queue(connection=connection)
    size_before = connection.dbsize()

    with pytest.raises(InvalidOptionError) as excinfo:
        queue.enqueue(add, 1, 2, **options)

    assert named in str(excinfo.value)
    assert connection.dbsize() == size_before


def test_enqueue_non_callable_rejected(connection):
    queue = Queue(connection=connection)

    with pytest.raises(InvalidOptionError) as excinfo:
        queue.enqueue(42)

    assert "42 is not callable" in str(excinfo.value)
    assert connection.dbsize() == 0


# enqueue_many and map


def test_enqueue_many_writes_all_in_order(connection, start_worker):
    queue = Queue(connection=connection)
    datas = [Queue.prepare_data(add, (n, 10), job_id=f"many-{n}") for n in range(5)]

    jobs = queue.enqueue_many(datas)

    assert [job.id for job in jobs] == [f"many-{n}" for n in range(5)]
    assert queue.job_ids == [f"many-{n}" for n in range(5)]
    for n in range(5):
        assert job_fields(connection, f"many-{n}")["status"] == b"queued"
    run_burst_worker(start_worker)
    assert [job.return_value() for job in jobs] == [10, 11, 12, 13, 14]


def test_enqueue_many_rejects_all_if_one_invalid(connection):
    queue = Queue(connection=connection)
    datas = [Queue.prepare_data(add, (1, 2)), Queue.prepare_data(add, (threading.Lock(), 2))]

    with pytest.raises(SerializationError):
        queue.enqueue_many(datas)

    assert connection.dbsize() == 0


def test_prepare_data_options_apply_per_job(connection, start_worker):
    queue = Queue(connection=connection)

    jobs = queue.enqueue_many([Queue.prepare_data(double, (n,), result_ttl=100) for n in (3, 1, 2)])

    assert queue.job_ids == [job.id for job in jobs]
    assert len(set(queue.job_ids)) == 3
    assert [job_fields(connection, job.id)["description"] for job in jobs] == [
        f"{double.__module__}.double({n})".encode() for n in (3, 1, 2)
    ]
    assert [job_fields(connection, job.id)["result_ttl"] for job in jobs] == [b"100"] * 3
    run_burst_worker(start_worker)
    assert [job.return_value() for job in jobs] == [6, 2, 4]


# Inputs that cannot be stored


def test_enqueue_unpicklable_positional_argument(connection):
    queue = Queue(connection=connection)
    size_before = connection.dbsize()

    with pytest.raises(SerializationError) as excinfo:
        queue.enqueue(add, 1, threading.Lock())

    message = str(excinfo.value)
    assert "argument 1 (lock)" in message
    assert "TypeError" in message
    assert connection.dbsize() == size_before


def test_enqueue_unpicklable_keyword_argument(connection):
    queue = Queue(connection=connection)
    size_before = connection.dbsize()

    with pytest.raises(SerializationError) as excinfo:
        queue.enqueue(echo_kwargs, guard=threading.Lock())

    assert "keyword argument 'guard' (lock)" in str(excinfo.value)
    assert connection.dbsize() == size_before


def test_enqueue_unpicklable_meta(connection):
    queue = Queue(connection=connection)

    with pytest.raises(SerializationError) as excinfo:
        queue.enqueue(add, 1, 2, meta={"lock": threading.Lock()})

    assert "job meta" in str(excinfo.value)
    assert connection.dbsize() == 0


def test_enqueue_payload_over_limit(connection, monkeypatch):
    monkeypatch.setenv("NBQUEUE_MAX_PAYLOAD_BYTES", "1000")
    queue = Queue(connection=connection)
    size_before = connection.dbsize()

    with pytest.raises(PayloadTooLargeError) as excinfo:
        queue.enqueue(echo_kwargs, data="x" * 2000)

    message = str(excinfo.value)
    assert "over the limit of 1,000 bytes" in message
    assert "NBQUEUE_MAX_PAYLOAD_BYTES" in message
    assert connection.dbsize() == size_before


def test_enqueue_payload_under_limit(connection, monkeypatch):
    monkeypatch.setenv("NBQUEUE_MAX_PAYLOAD_BYTES", "1000")
    queue = Queue(connection=connection)

    job = queue.enqueue(echo_kwargs, data="x" * 200)

    assert connection.exists(keys.job(job.id)) == 1


def test_payload_limit_default():
    assert DEFAULT_MAX_PAYLOAD_BYTES == 512 * 1024 * 1024
    assert load_settings().max_payload_bytes == 512 * 1024 * 1024


@pytest.mark.parametrize("value", ["0", "-5", "big"])
def test_payload_limit_invalid_setting(connection, monkeypatch, value):
    monkeypatch.setenv("NBQUEUE_MAX_PAYLOAD_BYTES", value)
    queue = Queue(connection=connection)

    with pytest.raises(ConfigurationError) as excinfo:
        queue.enqueue(add, 1, 2)

    assert f"NBQUEUE_MAX_PAYLOAD_BYTES={value!r}" in str(excinfo.value)
    assert connection.dbsize() == 0


# Timeout precedence: job_timeout, then the queue's default_timeout, then 180 s


@pytest.mark.parametrize(
    "job_timeout, default_timeout, expected_s",
    [
        (None, None, 180),
        (None, 45, 45),
        (None, "90s", 90),
        (None, "10m", 600),
        (None, "1h", 3600),
        (None, -1, -1),
        (30, None, 30),
        (30, "10m", 30),
        ("90s", 45, 90),
        ("10m", None, 600),
        ("1h", "90s", 3600),
        (-1, 45, -1),
        ("-1", None, -1),
        (2.5, None, 2.5),
    ],
)
def test_timeout_precedence(connection, job_timeout, default_timeout, expected_s):
    queue = Queue(connection=connection, default_timeout=default_timeout)

    job = queue.enqueue(add, 1, 2, job_timeout=job_timeout)

    assert float(job_fields(connection, job.id)["timeout"]) == expected_s
    assert Job.fetch(job.id, connection).timeout == expected_s


@pytest.mark.parametrize("value", [0, "0", "0s", "abc", "10x", -5, True])
def test_job_timeout_invalid_rejected(connection, value):
    queue = Queue(connection=connection)

    with pytest.raises(TimeoutFormatError) as excinfo:
        queue.enqueue(add, 1, 2, job_timeout=value)

    assert f"job_timeout={value!r}" in str(excinfo.value)
    assert connection.dbsize() == 0


@pytest.mark.parametrize("value", [0, "0", "0s", "abc", "10x", -5, True])
def test_default_timeout_invalid_rejected(connection, value):
    with pytest.raises(TimeoutFormatError) as excinfo:
        Queue(connection=connection, default_timeout=value)

    assert f"default_timeout={value!r}" in str(excinfo.value)
    assert connection.dbsize() == 0


# Reading and emptying a queue


def test_queue_count_and_job_ids(connection):
    queue = Queue("counted", connection=connection)
    other = Queue("other", connection=connection)
    assert queue.count == 0
    assert queue.job_ids == []

    jobs = [queue.enqueue(add, n, n) for n in range(3)]
    other.enqueue(add, 9, 9)

    assert queue.count == 3
    assert len(queue) == 3
    assert queue.job_ids == [job.id for job in jobs]
    assert [job.id for job in queue.jobs] == [job.id for job in jobs]
    assert other.count == 1


def test_queue_empty_removes_jobs(connection):
    queue = Queue("emptied", connection=connection)
    other = Queue("kept", connection=connection)
    jobs = [queue.enqueue(add, n, n) for n in range(3)]
    kept = other.enqueue(add, 9, 9)

    removed = queue.empty()

    assert removed == 3
    assert queue.count == 0
    assert queue.job_ids == []
    for job in jobs:
        assert connection.exists(keys.job(job.id)) == 0
    assert connection.exists(keys.job(kept.id)) == 1
    assert other.job_ids == [kept.id]


def test_queue_empty_when_already_empty(connection):
    queue = Queue(connection=connection)

    assert queue.empty() == 0
    assert queue.count == 0


def test_queue_all_lists_used_queues(connection):
    Queue("b", connection=connection).enqueue(add, 1, 1)
    Queue("a", connection=connection).enqueue(add, 1, 1)

    assert [queue.name for queue in Queue.all(connection)] == ["a", "b"]


@pytest.mark.parametrize("name", ["", None, 3])
def test_queue_invalid_name_rejected(connection, name):
    with pytest.raises(InvalidOptionError):
        Queue(name, connection=connection)
