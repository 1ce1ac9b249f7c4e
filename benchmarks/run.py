"""Run the nbqueue and RQ benchmarks against a private redis-server and write the report.

Usage, from the repository root::

    python -m benchmarks.run            # the full run: 3 rounds, about 10 minutes on 2 cores
    python -m benchmarks.run --quick    # a smoke run: 1 round, fewer jobs, about 1 minute

The two systems are measured alternately, round after round, on the same server. The table goes to the
terminal; Markdown and JSON copies go to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import scenarios
from benchmarks.processes import NBQUEUE, NBQUEUE_2, RQ_SIMPLE, RQ_WORKER, WorkerKind, stop_all_workers
from benchmarks.report import Results, build_report, machine_info, render_text, write_report
from benchmarks.server import CommandCounter, RedisServer

RESULTS_FOLDER = Path(__file__).resolve().parent / "results"


# nbqueue's job functions are defined here, in __main__, so that cloudpickle pickles them by value as it
# does for a function defined in a notebook. RQ's copies are in benchmarks.rq_jobs.
def noop() -> None:
    """Do nothing."""


def echo(value: bytes) -> bytes:
    """Return ``value`` unchanged."""
    return value


FULL = {
    "rounds": 3, "throughput_jobs": 5000, "command_jobs": 1000, "latency_jobs": 500, "enqueue_jobs": 2000,
    "payload_bytes": 100_000_000, "refresh_widgets": 1000, "idle_seconds": 30.0,
}
QUICK = {
    "rounds": 1, "throughput_jobs": 500, "command_jobs": 200, "latency_jobs": 100, "enqueue_jobs": 500,
    "payload_bytes": 10_000_000, "refresh_widgets": 1000, "idle_seconds": 5.0,
}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1 round and fewer jobs.")
    parser.add_argument("--rounds", type=int, help="Rounds of every figure (default: 3, or 1 with --quick).")
    parser.add_argument("--idle-seconds", type=float, help="Length of the idle-worker count, in seconds (default: 30).")
    parser.add_argument(
        "--results", type=Path, default=RESULTS_FOLDER, help=f"Folder for the Markdown and JSON reports (default: {RESULTS_FOLDER})."
    )
    parser.add_argument(
        "--only", action="append", metavar="FIGURE",
        choices=["throughput", "commands", "latency", "enqueue", "payload", "refresh", "idle"],
        help="Measure only this figure; repeat for several (default: all).",
    )
    arguments = parser.parse_args(argv)
    if arguments.rounds is not None and arguments.rounds < 1:
        parser.error(f"--rounds {arguments.rounds} is invalid: use 1 or more")
    return arguments


def alternate(items: list[Any], round_index: int) -> list[Any]:
    """Return ``items`` in order on even rounds and reversed on odd rounds."""
    return items if round_index % 2 == 0 else items[::-1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_round(bench: scenarios.Bench, settings: dict[str, Any], figures: set[str], index: int, results: Results) -> None:
    """Measure every figure once, each system in turn, and append the values to ``results``."""
    def measure(figure: str, label: str, function: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        values = function()
        results.setdefault(figure, {}).setdefault(label, []).append(values)
        rounded = {name: round(value, 3) for name, value in values.items() if isinstance(value, float)}
        log(f"  {figure:<10} {label:<16} {time.monotonic() - started:6.1f}s  {rounded or values}")

    def kinds(*members: WorkerKind) -> list[WorkerKind]:
        return alternate(list(members), index)

    if "throughput" in figures:
        for kind in kinds(NBQUEUE, RQ_WORKER, NBQUEUE_2, RQ_SIMPLE):
            measure("throughput", kind.label, lambda: scenarios.throughput(bench, kind, settings["throughput_jobs"]))
    if "commands" in figures:
        for kind in kinds(NBQUEUE, RQ_WORKER, RQ_SIMPLE):
            measure("commands", kind.label, lambda: scenarios.redis_commands(bench, kind, settings["command_jobs"]))
    if "latency" in figures:
        for kind in kinds(NBQUEUE, RQ_SIMPLE, RQ_WORKER):
            measure("latency", kind.label, lambda: scenarios.latency(bench, kind, settings["latency_jobs"]))
    if "enqueue" in figures:
        for label in alternate(["nbqueue", "RQ"], index):
            client = bench.clients["nbqueue" if label == "nbqueue" else "rq"]
            measure("enqueue", label, lambda: scenarios.enqueue_rate(bench, client, settings["enqueue_jobs"]))
    if "payload" in figures:
        payload = os.urandom(settings["payload_bytes"])
        measure("payload", "plain SET+GET", lambda: scenarios.plain_set_get(bench, payload))
        for kind in kinds(NBQUEUE, RQ_WORKER, RQ_SIMPLE):
            measure("payload", kind.label, lambda: scenarios.large_payload(bench, kind, payload))
        del payload
    if "refresh" in figures:
        nbqueue_client = bench.clients["nbqueue"]
        assert isinstance(nbqueue_client, scenarios.NbqueueClient)
        measure("refresh", "nbqueue", lambda: scenarios.widget_refresh(bench, nbqueue_client, settings["refresh_widgets"]))
    # One 30 s window already averages the idle worker's periodic work, so only the first round measures
    # it; that keeps a full run under about 10 minutes on 2 cores.
    if "idle" in figures and index == 0:
        for kind in kinds(NBQUEUE, RQ_WORKER):
            measure("idle", kind.label, lambda: scenarios.idle_worker(bench, kind, settings["idle_seconds"]))


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    settings = dict(QUICK if arguments.quick else FULL)
    if arguments.rounds is not None:
        settings["rounds"] = arguments.rounds
    if arguments.idle_seconds is not None:
        settings["idle_seconds"] = arguments.idle_seconds
    figures = set(arguments.only or ["throughput", "commands", "latency", "enqueue", "payload", "refresh", "idle"])
    command = shlex.join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])

    # SIGTERM ends the run like Ctrl-C, through the finally blocks that stop the workers and the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    server = RedisServer()
    server.start()
    log(f"redis-server {server.version} on 127.0.0.1:{server.port}, folder {server.folder}")
    results: Results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="nbqueue-bench-workers-") as folder:
            admin = server.client()
            bench = scenarios.Bench(
                server=server,
                admin=admin,
                counter=CommandCounter(server.client()),
                folder=Path(folder),
                clients={
                    "nbqueue": scenarios.NbqueueClient(server.client(), noop, echo),
                    "rq": scenarios.RqClient(server.client()),
                },
            )
            for index in range(settings["rounds"]):
                log(f"Round {index + 1} of {settings['rounds']}")
                run_round(bench, settings, figures, index, results)
    finally:
        stop_all_workers()
        server.stop()

    finished_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = build_report(results, settings, machine_info(server.version, server.binary), command, finished_at)
    print(render_text(report))
    stem = "quick" if arguments.quick else "latest"
    markdown_path, json_path = write_report(report, arguments.results, stem)
    log(f"Wrote {markdown_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
