"""Redis writes the supervisor makes in batches: outcomes, jobs returned to their queues, started marks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from nbqueue import keys
from nbqueue.scripts import Scripts
from nbqueue.worker.outcome import Execution, Record, record_outcomes

log = logging.getLogger("nbqueue.worker")

#: Seconds a job runs before its hash gets status 'started' (with its worker and start time).
MARK_STARTED_AFTER_S = 0.05
#: Outcomes are recorded together once this many have arrived, this many seconds after the first, or as
#: soon as a work horse has nothing left to run.
RECORD_BATCH = 64
RECORD_DELAY_S = 0.005


class PendingWrites:
    """Outcomes waiting to be recorded together, and taken jobs waiting to go back to their queues."""

    def __init__(self, connection: redis.Redis, scripts: Scripts, worker_name: str):
        self.connection = connection
        self.scripts = scripts
        self.worker_name = worker_name
        self.records: list[Record] = []
        self.returns: list[Execution] = []
        self.first_record_at = 0.0
        self.marked: set[str] = set()

    def add_record(self, record: Record) -> None:
        if not self.records:
            self.first_record_at = time.monotonic()
        self.records.append(record)

    def record_deadline(self) -> float | None:
        """The monotonic time by which the waiting outcomes must be recorded, or None if there are none."""
        return self.first_record_at + RECORD_DELAY_S if self.records else None

    def flush_if_due(self, *, horse_idle: bool, stopping: bool) -> None:
        if self.returns:
            self.return_to_queue()
        if not self.records:
            return
        due = (
            len(self.records) >= RECORD_BATCH
            or time.monotonic() >= self.first_record_at + RECORD_DELAY_S
            or horse_idle
            or stopping
        )
        if due:
            self.flush()

    def flush(self) -> None:
        """Record every outcome that arrived, in one script call, then return the unrun jobs."""
        records, self.records = self.records, []
        for record, recorded in zip(records, record_outcomes(self.connection, self.scripts, records)):
            if not recorded:
                log.warning(
                    "Job %s: outcome %s not recorded, because the job's outcome was already recorded elsewhere "
                    "(its lease had lapsed and another worker took it over)",
                    record.execution.job_id, record.outcome.type.name,
                )
        if self.returns:
            self.return_to_queue()

    def return_to_queue(self) -> None:
        """Put jobs that were taken but never ran back at the head of their queues, in order."""
        executions, self.returns = self.returns, []
        args: list[Any] = [keys.PREFIX]
        for execution in executions:
            args += [execution.job_id, execution.queue]
        returned = self.scripts.return_to_queue(args=args)
        for execution in executions:
            log.info("Job %s returned to the head of queue %s, not run", execution.job_id, execution.queue)
        if returned != len(executions):
            log.warning(
                "Worker %s returned %d of %d unrun jobs to their queues", self.worker_name, returned, len(executions)
            )

    def mark_due(self, running: Sequence[Execution]) -> None:
        """Mark as started, in one script call, the running jobs that have run for MARK_STARTED_AFTER_S."""
        now = time.time()
        due = [
            execution for execution in running
            if execution.job_id not in self.marked and execution.started_at is not None
            and now - execution.started_at >= MARK_STARTED_AFTER_S
        ]
        if not due:
            return
        args: list[Any] = [keys.PREFIX, self.worker_name]
        for execution in due:
            args += [execution.job_id, execution.queue, repr(execution.started_at)]
            self.marked.add(execution.job_id)
        self.scripts.mark_started(args=args)

    def next_mark(self, running: Sequence[Execution]) -> float | None:
        """Return the wall-clock time of the next started mark due, or None."""
        times = [
            execution.started_at + MARK_STARTED_AFTER_S for execution in running
            if execution.job_id not in self.marked and execution.started_at is not None
        ]
        return min(times) if times else None
