"""Tests of ``Job``: ids, fetching, status through the lifecycle and meta, against a real Redis and workers."""

from __future__ import annotations

import pytest

from nbqueue import InvalidOptionError, Job, JobStatus, NoSuchJobError, Queue, Result, get_current_job, keys


def add(a: int, b: int) -> int:
    return a + b


def fail_with_value_error() -> None:
    raise ValueError("no good")


def wait_for_release() -> str:
    """Block until the test pushes to ``test:release`` (at most 10 s), so the job stays started meanwhile."""
    get_current_job().connection.blpop("test:release", timeout=10)
    return "released"


def read_own_meta() -> dict:
    return get_current_job().meta


def save_progress_in_meta() -> None:
    job = get_current_job()
    job.meta["progress"] = 100
    job.save_meta()


def run_burst_worker(start_worker, *args: str) -> None:
    worker = start_worker("--burst", *args)
    assert worker.wait() == 0, worker.log()


ODD_IDS = ["a:b", "x/y", "with space", "ünïcødé ✓", "ü:/ " * 250]


# Job ids


@pytest.mark.parametrize("job_id", ODD_IDS, ids=["colon", "slash", "space", "unicode", "1000-chars"])
def test_job_id_round_trips(connection, start_worker, job_id):
    queue = Queue(connection=connection)
    failing_id = job_id + "!failing"

    job = queue.enqueue(add, 2, 3, job_id=job_id)
    queue.enqueue(fail_with_value_error, job_id=failing_id)

    assert job.id == job_id
    assert Job.fetch(job_id, connection).id == job_id
    assert queue.job_ids == [job_id, failing_id]

    run_burst_worker(start_worker)

    fetched = Job.fetch(job_id, connection)
    assert fetched.id == job_id
    assert fetched.get_status() == JobStatus.FINISHED
    assert [result.job_id for result in fetched.results()] == [job_id]
    assert fetched.latest_result().job_id == job_id
    assert fetched.latest_result(timeout=5).job_id == job_id
    assert fetched.return_value() == 5
    assert queue.finished_job_registry.get_job_ids() == [job_id]
    assert queue.failed_job_registry.get_job_ids() == [failing_id]
    assert job_id in queue.finished_job_registry
    assert [job.id for job in Job.fetch_many([job_id, failing_id], connection)] == [job_id, failing_id]
    assert Job.fetch(failing_id, connection).latest_result().type == Result.Type.FAILED


def test_job_id_1000_chars_in_keys(connection):
    job_id = "k" * 1000

    Queue(connection=connection).enqueue(add, 1, 2, job_id=job_id)

    assert connection.exists(keys.job(job_id)) == 1
    assert connection.lrange(keys.queue("default"), 0, -1) == [job_id.encode()]


@pytest.mark.parametrize(
    "bad_id, expected",
    [
        ("", "must not be empty"),
        (42, "must be a str, got int"),
        (b"bytes-id", "must be a str, got bytes"),
        ("lone \udcff surrogate", "not valid Unicode text"),
        ("x" * 65537, "too long"),
    ],
    ids=["empty", "int", "bytes", "lone-surrogate", "too-long"],
)
def test_job_id_invalid_rejected(connection, bad_id, expected):
    queue = Queue(connection=connection)

    with pytest.raises(InvalidOptionError) as excinfo:
        queue.enqueue(add, 1, 2, job_id=bad_id)

    assert expected in str(excinfo.value)
    assert connection.dbsize() == 0


@pytest.mark.parametrize("bad_id", ["", 42, "lone \ud800 surrogate"])
def test_job_fetch_invalid_id_rejected(connection, bad_id):
    with pytest.raises(InvalidOptionError):
        Job.fetch(bad_id, connection)


def test_job_fetch_missing_id(connection):
    with pytest.raises(NoSuchJobError) as excinfo:
        Job.fetch("no-such-job", connection)

    assert "'no-such-job'" in str(excinfo.value)
    assert isinstance(excinfo.value, KeyError)


def test_job_fields_after_fetch(connection):
    queue = Queue("fields", connection=connection)
    queue.enqueue(add, 1, 2, job_id="fielded", job_timeout="10m", result_ttl=60, failure_ttl=-1)

    job = Job.fetch("fielded", connection)

    assert job.origin == "fields"
    assert job.func_name == f"{add.__module__}.add"
    assert job.description == f"{add.__module__}.add(1, 2)"
    assert job.timeout == 600
    assert job.result_ttl == 60
    assert job.failure_ttl == -1
    assert job.ttl is None
    assert job.created_at is not None
    assert job.started_at is None
    assert job.worker_name is None


# Status through the lifecycle


def test_job_status_queued_to_finished(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2)
    assert job.get_status() == JobStatus.QUEUED
    assert job.is_queued

    run_burst_worker(start_worker, "--name", "status-worker")

    assert job.get_status() == JobStatus.FINISHED
    assert job.is_finished
    assert not job.is_failed
    fetched = Job.fetch(job.id, connection)
    assert fetched.worker_name == "status-worker"
    assert fetched.started_at <= fetched.ended_at


def test_job_status_queued_to_failed(connection, start_worker):
    job = Queue(connection=connection).enqueue(fail_with_value_error)
    assert job.get_status() == JobStatus.QUEUED

    run_burst_worker(start_worker)

    assert job.get_status() == JobStatus.FAILED
    assert job.is_failed
    assert not job.is_finished


def test_job_status_started_while_running(connection, start_worker):
    job = Queue(connection=connection).enqueue(wait_for_release)
    worker = start_worker()

    worker.wait_for_log(rf"Job {job.id} started")

    assert job.get_status() == JobStatus.STARTED
    assert job.is_started
    assert job.id in Queue(connection=connection).started_job_registry

    connection.rpush("test:release", "go")
    result = job.latest_result(timeout=10)

    assert result is not None
    assert result.return_value == "released"
    assert job.get_status() == JobStatus.FINISHED
    assert job.id not in Queue(connection=connection).started_job_registry


def test_job_get_status_without_refresh(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2)

    run_burst_worker(start_worker)

    assert job.get_status(refresh=False) == JobStatus.QUEUED
    assert job.get_status() == JobStatus.FINISHED


def test_job_get_status_of_deleted_job(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2)
    connection.delete(keys.job(job.id))

    with pytest.raises(NoSuchJobError):
        job.get_status()


# fetch_many


def test_fetch_many_missing_id_gives_none(connection):
    queue = Queue(connection=connection)
    first = queue.enqueue(add, 1, 2, job_id="first")
    last = queue.enqueue(add, 3, 4, job_id="last")

    jobs = Job.fetch_many(["first", "missing", "last"], connection)

    assert len(jobs) == 3
    assert jobs[0] == first
    assert jobs[1] is None
    assert jobs[2] == last
    assert jobs[2].get_status(refresh=False) == JobStatus.QUEUED


def test_fetch_many_empty_list(connection):
    assert Job.fetch_many([], connection) == []


# meta


def test_job_meta_round_trip(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2, meta={"owner": "ana"})
    assert Job.fetch(job.id, connection).meta == {"owner": "ana"}

    job.meta["progress"] = [1, 2]
    job.save_meta()

    fetched = Job.fetch(job.id, connection)
    assert fetched.meta == {"owner": "ana", "progress": [1, 2]}
    assert fetched.get_status() == JobStatus.QUEUED
    assert fetched.func_name == f"{add.__module__}.add"


def test_job_meta_empty_by_default(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2)

    fetched = Job.fetch(job.id, connection)

    assert fetched.meta == {}


def test_job_meta_seen_inside_job(connection, start_worker):
    job = Queue(connection=connection).enqueue(read_own_meta, meta={"owner": "ana"})

    run_burst_worker(start_worker)

    assert job.latest_result().type == Result.Type.SUCCESSFUL
    assert job.return_value() == {"owner": "ana"}


def test_job_save_meta_inside_job_keeps_meta(connection, start_worker):
    job = Queue(connection=connection).enqueue(save_progress_in_meta, meta={"owner": "ana"})

    run_burst_worker(start_worker)

    assert job.latest_result().type == Result.Type.SUCCESSFUL
    assert Job.fetch(job.id, connection).meta == {"owner": "ana", "progress": 100}
