"""Tests of the environment check: the modules a payload imports, and the table a worker writes or fails with.

A test distribution ``nbq_envtest`` is faked with a ``.dist-info`` folder beside the module: the client
sees one version on its ``sys.path`` and the worker another on its ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pickle
import sys
from pathlib import Path

import cloudpickle
import pytest

from nbqueue import Queue, Result, keys, serialization
from nbqueue.environment import (
    OPCODE_SCAN_LIMIT_BYTES,
    Difference,
    _scan_opcodes,
    _search_short_strings,
    compare_imports,
    format_table,
    referenced_modules,
)

RESULT_WAIT_S = 30


def install_fake_distribution(site: Path, version: str) -> Path:
    """Write the module ``nbq_envtest`` and its distribution metadata at ``version`` into ``site``."""
    package = site / "nbq_envtest"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def double(x):\n    return 2 * x\n")
    info = site / f"nbq_envtest-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: nbq_envtest\nVersion: {version}\n")
    (info / "top_level.txt").write_text("nbq_envtest\n")
    return site


@pytest.fixture
def client_envtest(monkeypatch, tmp_path):
    """Import ``nbq_envtest`` 1.4.0 in this process, fresh for the test."""
    monkeypatch.syspath_prepend(str(install_fake_distribution(tmp_path / "client-site", "1.4.0")))
    monkeypatch.delitem(sys.modules, "nbq_envtest", raising=False)
    importlib.invalidate_caches()
    module = importlib.import_module("nbq_envtest")
    yield module
    sys.modules.pop("nbq_envtest", None)


def output_text(connection, job_id: str, stream: str) -> str:
    entries = connection.xrange(keys.output(job_id))
    return "".join(
        fields[b"text"].decode() for _, fields in entries if fields.get(b"name") == stream.encode()
    )


def test_payload_header_records_distribution_versions(client_envtest):
    payload = serialization.dumps_call(client_envtest.double, (21,), {}, max_bytes=10**6, secret_key=None)

    header, _ = serialization.read_envelope(payload, secret_key=None)

    assert header["modules"] == {"nbq_envtest": {"distribution": "nbq_envtest", "version": "1.4.0"}}


def test_scan_reads_memoized_module_names():
    import click

    body = cloudpickle.dumps((click.echo, (click.style, click.echo), {"k": click.style}), protocol=5)

    assert _scan_opcodes(body) == {"click.utils", "click.termui"}
    assert referenced_modules(body) == {"click"}


def test_scan_leaves_out_stdlib_and_main():
    body = cloudpickle.dumps((lambda: None, (Path("x"), pickle.dumps), {}), protocol=5)

    assert referenced_modules(body) == {"cloudpickle"}


def test_large_pickle_search_finds_same_modules():
    import click

    body = cloudpickle.dumps((click.echo, (list(range(OPCODE_SCAN_LIMIT_BYTES)),), {}), protocol=5)

    assert len(body) > OPCODE_SCAN_LIMIT_BYTES
    assert _search_short_strings(body) == _scan_opcodes(body)
    assert referenced_modules(body) == {"click"}


def test_compare_lists_only_major_minor_differences():
    version = importlib.metadata.version("click")
    major, minor = version.split(".")[:2]
    record = {
        "click": {"distribution": "click", "version": f"{major}.{minor}.999"},
        "nbq_no_such_module": {},
    }

    assert compare_imports(record) == [
        Difference("nbq_no_such_module", "", "-", "not installed", True),
    ]
    record["click"]["version"] = f"{int(major) + 1}.0"
    assert compare_imports(record)[0] == Difference("click", "click", f"{int(major) + 1}.0", version, False)


def test_format_table_aligns_columns():
    rows = [Difference("numpy", "numpy", "2.1.0", "1.26.4", False), Difference("mylib", "", "-", "not installed", True)]

    assert format_table(rows, "j1") == (
        "The worker's environment differs from the one that submitted job j1:\n"
        "  module  distribution  submitted  worker\n"
        "  numpy   numpy         2.1.0      1.26.4\n"
        "  mylib   -             -          not installed\n"
    )


def test_worker_warns_about_version_difference(client_envtest, connection, start_worker, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(install_fake_distribution(tmp_path / "worker-site", "2.1.0")))
    start_worker()

    job = Queue(connection=connection).enqueue(client_envtest.double, 21)
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    assert result.return_value == 42
    assert output_text(connection, job.id, "stderr") == (
        f"Warning: The worker's environment differs from the one that submitted job {job.id}:\n"
        "  module       distribution  submitted  worker\n"
        "  nbq_envtest  nbq_envtest   1.4.0      2.1.0\n"
    )


def test_worker_ignores_patch_difference(client_envtest, connection, start_worker, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(install_fake_distribution(tmp_path / "worker-site", "1.4.7")))
    start_worker("--strict-env")

    job = Queue(connection=connection).enqueue(client_envtest.double, 4)
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL, result.exc_string
    assert result.return_value == 8
    assert output_text(connection, job.id, "stderr") == ""


def test_strict_env_worker_rejects_job(client_envtest, connection, start_worker, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(install_fake_distribution(tmp_path / "worker-site", "2.1.0")))
    worker = start_worker("--strict-env", "--name", "strict-1")

    job = Queue(connection=connection).enqueue(client_envtest.double, 21)
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.FAILED
    assert result.exc_string == (
        f"nbqueue.environment.EnvironmentMismatchError: Job {job.id} was rejected because worker strict-1 runs "
        "with --strict-env and has other major or minor versions of the job's distributions. Install the versions "
        "of the submitting environment, or start the worker without --strict-env.\n\n"
        f"The worker's environment differs from the one that submitted job {job.id}:\n"
        "  module       distribution  submitted  worker\n"
        "  nbq_envtest  nbq_envtest   1.4.0      2.1.0\n"
    )
    assert "strict env" in worker.wait_for_log(r"Worker strict-1 started: .*").group(0)


def test_missing_module_named_in_result(client_envtest, connection, start_worker):
    start_worker("--name", "bare-1")

    job = Queue(connection=connection).enqueue(client_envtest.double, 21)
    result = job.latest_result(timeout=RESULT_WAIT_S)

    assert result is not None
    assert result.type == Result.Type.FAILED
    first_line = result.exc_string.splitlines()[0]
    assert first_line.startswith("nbqueue.errors.DeserializationError: Cannot unpickle")
    assert "Modules missing on worker bare-1: nbq_envtest. Install them where the worker runs." in result.exc_string
    assert result.exc_string.endswith("  nbq_envtest  nbq_envtest   1.4.0      not installed\n")
