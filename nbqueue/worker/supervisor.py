"""The worker's supervising process: takes jobs from queues, hands them to work horses, enforces timeouts.

One loop waits in a single ``select`` on the work horses' pipes, on pending queue waits, on the worker's
command list and on signals. Redis round trips are batched:

- one Lua script moves a batch of jobs from the queues into their started registries and returns their
  fields and payloads, which go to the horses ahead of time (up to ``MAX_PREFETCH`` while jobs are quick);
- the horses report outcomes over their pipes, and one script records the outcomes that arrived together;
- a job's status becomes 'started' in its hash only when it has run for ``writes.MARK_STARTED_AFTER_S``, so a
  job of a few milliseconds costs no write when it starts (its started registry entry marks it taken).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from nbqueue import keys
from nbqueue.connection import connect, describe
from nbqueue.errors import InvalidOptionError, JobTimeoutException, NbqueueError, WorkHorseDiedError
from nbqueue.provenance import PROVENANCE_FIELDS
from nbqueue.results import Result
from nbqueue.scripts import Scripts
from nbqueue.settings import load_settings
from nbqueue.version import __version__
from nbqueue.job import FIELDS
from nbqueue.worker.failures import RETRY_FIELDS, failure_outcome
from nbqueue.worker.horse import INLINE_LIMIT_BYTES, Report
from nbqueue.worker.horses import HorseHandle
from nbqueue.worker.outcome import Execution, Outcome, Record
from nbqueue.worker.maintenance import (
    HEARTBEAT_INTERVAL_S,
    IDLE_HEARTBEAT_INTERVAL_S,
    MAINTENANCE_INTERVAL_S,
    SCHEDULER_INTERVAL_S,
    STARTED_LEASE_S,
    WORKER_TTL_S,
    enqueue_due_jobs,
    fail_abandoned_jobs,
    send_heartbeat,
)
from nbqueue.worker.waiter import BlockingWait, CommandWaiter, QueueWaiter
from nbqueue.worker.writes import PendingWrites

log = logging.getLogger("nbqueue.worker")

#: Maximum blocking wait on an empty queue or the command list, in seconds. An idle worker sends one
#: command per wait and queue, plus its heartbeats and scheduler and maintenance calls.
QUEUE_WAIT_S = 30.0
#: Seconds between two updates of the worker's state and current jobs in its hash, besides heartbeats.
STATE_UPDATE_INTERVAL_S = 1.0
#: Fields read for each job when it is taken: all a Job handle shows but provenance, and the retry counters.
TAKEN_FIELDS = tuple(
    dict.fromkeys(name for name in (*FIELDS, *RETRY_FIELDS) if name not in ("status", "ttl", *PROVENANCE_FIELDS))
)


# Create the worker's hash unless a live worker has the name. KEYS: worker hash, worker set, command list.
# ARGV: expiry in seconds, then field/value pairs.
_REGISTER_WORKER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], redis.call('HGET', KEYS[1], 'name'))
redis.call('DEL', KEYS[3])
return 1
"""


@dataclass
class _Counters:
    finished: int = 0
    failed: int = 0
    retried: int = 0
    stopped: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Worker:
    """Runs jobs from one or more queues, queues listed first served first.

    ``concurrency`` work horses run jobs at the same time. Call :meth:`work` to start; it returns when the
    worker is shut down or, in burst mode, when the queues are empty. With ``strict_env``, a job whose
    payload imports a distribution that is missing here, or installed at another major or minor version,
    is rejected with a FAILED result instead of run with a warning.
    """

    def __init__(
        self,
        queues: list[str] | tuple[str, ...] | str = ("default",),
        connection: redis.Redis | str | None = None,
        name: str | None = None,
        concurrency: int = 1,
        strict_env: bool = False,
    ):
        if isinstance(queues, str):
            queues = [queues]
        self.queue_names = [getattr(q, "name", q) for q in queues] or ["default"]
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidOptionError(f"concurrency={concurrency!r} is invalid: use a whole number >= 1")
        self.connection = connect(connection)
        self.name = name or f"{socket.gethostname()}.{os.getpid()}"
        self.concurrency = concurrency
        self.strict_env = strict_env
        self.settings = load_settings()
        self.scripts = Scripts(self.connection)
        self.counters = _Counters()
        self._horses: list[HorseHandle] = []
        self._selector = selectors.DefaultSelector()
        self._waiters: list[BlockingWait] = [
            QueueWaiter(self.connection, keys.queue(q), QUEUE_WAIT_S) for q in self.queue_names
        ]
        self._command_waiter = CommandWaiter(
            self.connection, keys.worker_commands(self.name), keys.SCHEDULER_WAKE, QUEUE_WAIT_S
        )
        self._stop_signal: str | None = None
        self._cold = False
        self._draining = False
        self._writes = PendingWrites(self.connection, self.scripts, self.name)
        self._stopped_early: set[str] = set()
        self._published_state: tuple[str, tuple[str, ...]] | None = None
        self._next_state_update = 0.0
        self._next_heartbeat = 0.0
        self._next_scheduler_run = 0.0
        self._next_maintenance = 0.0

    # Lifecycle

    def work(self, burst: bool = False) -> bool:
        """Run until shut down (or, with ``burst``, until the queues are empty); return whether any job ran."""
        self._check_server()
        self._register()
        wakeup_read, wakeup_write = socket.socketpair()
        wakeup_read.setblocking(False)
        wakeup_write.setblocking(False)
        self._selector.register(wakeup_read, selectors.EVENT_READ, "wakeup")
        previous_wakeup = signal.set_wakeup_fd(wakeup_write.fileno())
        previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        for _ in range(self.concurrency):
            self._add_horse()
        log.info(
            "Worker %s started: nbqueue %s, pid %d, queues %s, concurrency %d, redis %s%s%s",
            self.name, __version__, os.getpid(), ", ".join(self.queue_names), self.concurrency,
            describe(self.connection), ", burst mode" if burst else "", ", strict env" if self.strict_env else "",
        )
        ran_any = False
        try:
            ran_any = self._loop(burst, wakeup_read)
        except Exception:
            log.exception("Worker %s stopped on an unexpected error; its running jobs are killed", self.name)
            raise
        finally:
            self._shutdown_horses()
            for waiter in [*self._waiters, self._command_waiter]:
                waiter.close()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self._selector.close()
            wakeup_read.close()
            wakeup_write.close()
            self._unregister()
            log.info(
                "Worker %s stopped (%s): %d finished, %d failed, %d retried",
                self.name, self._stop_reason(burst), self.counters.finished, self.counters.failed, self.counters.retried,
            )
        return ran_any

    def _stop_reason(self, burst: bool) -> str:
        if self._stop_signal is None:
            return "burst mode, queues empty" if burst else "stopped"
        return f"{'cold' if self._cold else 'warm'} shutdown after {self._stop_signal}"

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is None:
            self._stop_signal = name
            log.info("Worker %s received %s: warm shutdown, running jobs finish, no new job starts", self.name, name)
        elif not self._cold:
            self._cold = True
            self._stop_signal = name
            log.warning("Worker %s received %s again: cold shutdown, running jobs are killed", self.name, name)

    def _check_server(self) -> None:
        version = self.connection.info("server").get("redis_version", "0")
        if tuple(int(part) for part in str(version).split(".")[:2]) < (6, 2):
            raise NbqueueError(f"Redis {version} is too old: nbqueue workers need Redis 6.2 or newer")

    def _register(self) -> None:
        now = repr(time.time())
        fields = {
            "name": self.name, "pid": os.getpid(), "hostname": socket.gethostname(), "version": __version__,
            "queues": json.dumps(self.queue_names), "concurrency": self.concurrency, "birth": now,
            "last_heartbeat": now, "state": "idle", "current_jobs": "[]",
        }
        args: list[Any] = [WORKER_TTL_S]
        for name, value in fields.items():
            args += [name, value]
        registered = self.connection.eval(
            _REGISTER_WORKER, 3, keys.worker(self.name), keys.WORKERS, keys.worker_commands(self.name), *args
        )
        if not registered:
            raise NbqueueError(
                f"A worker named {self.name!r} is already running on this Redis: choose another --name"
            )
        self._next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S

    def _unregister(self) -> None:
        try:
            pipe = self.connection.pipeline(transaction=False)
            pipe.delete(keys.worker(self.name), keys.worker_commands(self.name))
            pipe.srem(keys.WORKERS, self.name)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("Worker %s could not remove its key from Redis: %s", self.name, exc)

    # The loop

    def _loop(self, burst: bool, wakeup_read: socket.socket) -> bool:
        ran_any = False
        while True:
            if self._cold:
                return ran_any
            if self._stop_signal is not None and not self._draining:
                # Sent from the loop, not the signal handler, so it never interleaves with another message.
                self._draining = True
                for horse_ in self._horses:
                    horse_.send_control(("drain",))
            if self._stop_signal is not None and not self._holding():
                self._flush()
                return ran_any
            try:
                self._run_periodic_tasks()
                if self._stop_signal is None:
                    taken = self._dequeue()
                    ran_any = ran_any or taken > 0
                    if burst and taken == 0 and not self._holding():
                        self._flush()
                        return ran_any
                    if not burst and self._has_idle_horse():
                        self._arm(self._waiters)
                self._arm([self._command_waiter])
            except redis.ConnectionError as exc:
                log.warning("Worker %s cannot reach Redis, retrying in 1s: %s", self.name, exc)
                self._reset_waiters()
                self._wait_events(1.0, wakeup_read)
                continue
            self._wait_events(self._select_timeout(burst), wakeup_read)
            self._enforce_deadlines()
            try:
                self._writes.flush_if_due(horse_idle=self._has_idle_horse(), stopping=self._stop_signal is not None)
                self._writes.mark_due(self._running())
                self._publish_state()
            except redis.ConnectionError as exc:
                log.warning("Worker %s cannot reach Redis, retrying in 1s: %s", self.name, exc)
                self._wait_events(1.0, wakeup_read)

    def _holding(self) -> bool:
        return any(horse_.pending for horse_ in self._horses)

    def _has_idle_horse(self) -> bool:
        return any(not horse_.pending for horse_ in self._horses)

    def _running(self) -> list[Execution]:
        return [horse_.running for horse_ in self._horses if horse_.running is not None]

    def _held(self) -> list[Execution]:
        return [execution for horse_ in self._horses for execution in horse_.pending]

    def _run_periodic_tasks(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + (HEARTBEAT_INTERVAL_S if self._holding() else IDLE_HEARTBEAT_INTERVAL_S)
            send_heartbeat(self.connection, self.name, self._running(), self._held(), self._counter_fields())
        if now >= self._next_scheduler_run:
            moved, next_move = enqueue_due_jobs(self.scripts, self.name, self.queue_names)
            if moved:
                log.info("Worker %s moved %d due scheduled jobs to their queues", self.name, moved)
            delay_s = SCHEDULER_INTERVAL_S if next_move is None else min(SCHEDULER_INTERVAL_S, next_move - time.time())
            self._next_scheduler_run = now + max(0.0, delay_s)
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL_S
            fail_abandoned_jobs(self.connection, self.scripts, self.name)

    def _counter_fields(self) -> dict[str, int]:
        return {
            "finished": self.counters.finished, "failed": self.counters.failed,
            "retried": self.counters.retried, "stopped": self.counters.stopped,
        }

    def _publish_state(self) -> None:
        """Write the worker's state and running jobs when they change, at most once a second."""
        running = tuple(execution.job_id for execution in self._running())
        state = ("busy" if running else "idle", running)
        if state == self._published_state:
            return
        now = time.monotonic()
        flipped = self._published_state is None or self._published_state[0] != state[0]
        if not flipped and now < self._next_state_update:
            return
        self._next_state_update = now + STATE_UPDATE_INTERVAL_S
        self._published_state = state
        self.connection.hset(keys.worker(self.name), mapping={
            "state": state[0], "current_jobs": json.dumps(list(running)), **self._counter_fields(),
        })

    def _select_timeout(self, burst: bool) -> float:
        now = time.monotonic()
        timeout = max(0.0, min(self._next_heartbeat, self._next_scheduler_run, self._next_maintenance) - now)
        wall = time.time()
        for execution in self._running():
            if execution.deadline is not None:
                timeout = min(timeout, max(0.0, execution.deadline - wall))
        next_mark = self._writes.next_mark(self._running())
        if next_mark is not None:
            timeout = min(timeout, max(0.0, next_mark - wall))
        record_deadline = self._writes.record_deadline()
        if record_deadline is not None:
            timeout = min(timeout, max(0.0, record_deadline - now))
        if self._published_state is not None and self._published_state[1]:
            timeout = min(timeout, STATE_UPDATE_INTERVAL_S)
        if burst and self._has_idle_horse():
            # In burst mode nothing waits on the queues: look again as soon as a horse is free.
            timeout = min(timeout, 0.05)
        return timeout

    def _wait_events(self, timeout: float, wakeup_read: socket.socket) -> None:
        for key, _ in self._selector.select(timeout):
            if key.data == "wakeup":
                try:
                    while wakeup_read.recv(512):
                        pass
                except BlockingIOError:
                    pass
            elif isinstance(key.data, BlockingWait):
                self._selector.unregister(key.fileobj)
                try:
                    reply = key.data.complete()
                except redis.RedisError as exc:
                    log.warning("Worker %s lost its wait on %s: %s", self.name, key.data.key, exc)
                    key.data.close()
                    continue
                if key.data is self._command_waiter and reply:
                    if reply[0].decode() == keys.SCHEDULER_WAKE:
                        self._next_scheduler_run = time.monotonic()
                    else:
                        self._on_command(reply[1])
            elif key.data in self._horses:
                self._read_horse(key.data)

    def _arm(self, waiters: list[BlockingWait]) -> None:
        for waiter in waiters:
            if not waiter.armed:
                waiter.arm()
                self._selector.register(waiter.fileno(), selectors.EVENT_READ, waiter)

    def _reset_waiters(self) -> None:
        for waiter in [*self._waiters, self._command_waiter]:
            if waiter.armed:
                try:
                    self._selector.unregister(waiter.fileno())
                except (KeyError, ValueError, AttributeError, OSError):
                    pass
            waiter.close()

    def _on_command(self, raw: bytes) -> None:
        try:
            command = json.loads(raw)
            name, job_id = command["command"], command["job_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("Worker %s ignored a malformed command: %r", self.name, raw[:200])
            return
        if name != "stop-job":
            log.warning("Worker %s ignored an unknown command %r", self.name, name)
            return
        stopped = Outcome(Result.Type.STOPPED, exc_string="The job was stopped on request; its work horse was killed")
        for horse_ in self._horses:
            for execution in horse_.pending:
                if execution.job_id != job_id:
                    continue
                log.info("Job %s stop requested: queue=%s", job_id, execution.queue)
                if execution is horse_.running:
                    horse_.kill()
                    self._end_run(horse_, stopped)
                else:
                    # Not started yet: the horse skips it, and it never runs.
                    horse_.send_control(("skip", job_id))
                    self._stopped_early.add(job_id)
                    now = time.time()
                    self._add_record(Record(execution, Outcome(
                        Result.Type.STOPPED, exc_string="The job was stopped on request before it started"
                    ), self.name, now, now))
                    self._log_outcome(execution, Result.Type.STOPPED, None, None, 0.0)
                return
        log.warning("Worker %s ignored a stop request for job %s: the job is not running on this worker", self.name, job_id)

    # Jobs

    def _dequeue(self) -> int:
        """Take jobs for the horses' free slots; return how many were taken."""
        free = sum(horse_.free_slots for horse_ in self._horses)
        wanted = sum(horse_.prefetch for horse_ in self._horses)
        # Refill when a horse has nothing, or when half the prefetch room is free, so takes come in batches.
        if free == 0 or (not self._has_idle_horse() and free * 2 < wanted):
            return 0
        now = time.time()
        rows, skipped = self.scripts.dequeue(args=[
            keys.PREFIX, self.name, repr(now + STARTED_LEASE_S), free, INLINE_LIMIT_BYTES, len(TAKEN_FIELDS), *TAKEN_FIELDS,
            *self.queue_names,
        ])
        for index in range(0, len(skipped), 3):
            job_id, queue, reason = (value.decode() for value in skipped[index : index + 3])
            if reason == "expired":
                log.warning("Job %s expired in queue %s before it started (its ttl passed): not run", job_id, queue)
            else:
                log.warning("Job %s left queue %s with status %s: not run", job_id, queue, reason)
        for row in rows:
            fields = dict(zip(TAKEN_FIELDS, row[2:-1]))
            execution = Execution(
                job_id=row[0].decode(),
                queue=row[1].decode(),
                timeout_s=float(fields["timeout"] or -1),
                func_name=(fields["func"] or b"").decode(),
                fields=fields,
                payload=row[-1],
            )
            horse_ = min((h for h in self._horses if h.free_slots), key=lambda h: len(h.pending))
            if horse_.send(execution, now):
                self._log_start(execution)
        return len(rows)

    def _log_start(self, execution: Execution) -> None:
        log.info("Job %s started: queue=%s function=%s", execution.job_id, execution.queue, execution.func_name)

    def _read_horse(self, horse_: HorseHandle) -> None:
        """Handle every message the horse has sent."""
        try:
            while horse_.pipe.poll():
                kind, value = horse_.pipe.recv()
                now = time.time()
                if kind == "done":
                    self._on_report(horse_, value, now)
                elif kind == "skipped":
                    execution = horse_.pop_finished(value, now)
                    if execution is not None and value not in self._stopped_early:
                        self._writes.returns.append(execution)
                    self._stopped_early.discard(value)
                    if horse_.running is not None:
                        self._log_start(horse_.running)
        except (EOFError, OSError):
            if horse_.running is not None:
                self._end_run(horse_, self._failure(
                    horse_.running, f"{WorkHorseDiedError.__module__}.WorkHorseDiedError: The work horse running "
                    f"the job {horse_.exit_description()}"
                ))
            else:
                self._replace_horse(horse_)

    def _on_report(self, horse_: HorseHandle, report: Report, now: float) -> None:
        execution = horse_.pop_finished(report.job_id, now)
        if horse_.running is not None:
            self._log_start(horse_.running)
        if execution is None:
            return
        self._writes.marked.discard(execution.job_id)
        duration_s = report.ended_at - report.started_at
        horse_.adapt_prefetch(duration_s)
        if report.outcome is None:
            log.warning("Job %s was deleted before it ran: queue=%s", execution.job_id, execution.queue)
            return
        if not report.recorded:
            self._add_record(Record(
                execution, report.outcome, self.name, report.started_at, report.ended_at, report.wrote_output
            ))
        self._log_outcome(
            execution, report.outcome.type, report.outcome.exc_string, report.outcome.retry_delay_s, duration_s
        )

    def _add_record(self, record: Record) -> None:
        self._writes.add_record(record)

    def _flush(self) -> None:
        self._writes.flush()

    def _log_outcome(
        self, execution: Execution, result_type: Result.Type, exc_string: str | None, retry_delay_s: float | None,
        duration_s: float,
    ) -> None:
        job_id, queue = execution.job_id, execution.queue
        if result_type == Result.Type.SUCCESSFUL:
            self.counters.finished += 1
            log.info("Job %s finished in %.3fs: queue=%s", job_id, duration_s, queue)
        elif result_type == Result.Type.RETRIED:
            self.counters.retried += 1
            if retry_delay_s:
                # This worker runs the scheduler if it holds its lock: move the job exactly when it is due.
                self._next_scheduler_run = min(self._next_scheduler_run, time.monotonic() + retry_delay_s)
            last_line = (exc_string or "").strip().splitlines()[-1:] or [""]
            log.info(
                "Job %s retried in %.1fs after %.3fs: queue=%s: %s", job_id, retry_delay_s or 0, duration_s, queue,
                last_line[0],
            )
        elif result_type == Result.Type.STOPPED:
            self.counters.stopped += 1
            log.info("Job %s stopped after %.3fs: queue=%s", job_id, duration_s, queue)
        else:
            self.counters.failed += 1
            log.error("Job %s failed after %.3fs: queue=%s\n%s", job_id, duration_s, queue, (exc_string or "").rstrip())

    def _enforce_deadlines(self) -> None:
        now = time.time()
        for horse_ in list(self._horses):
            execution = horse_.running
            if execution is not None and execution.deadline is not None and now >= execution.deadline:
                horse_.kill()
                self._end_run(horse_, self._failure(
                    execution,
                    f"{JobTimeoutException.__module__}.JobTimeoutException: Job exceeded its timeout of "
                    f"{execution.timeout_s:g} seconds; its work horse was killed",
                ))
            elif not horse_.process.is_alive():
                self._read_horse(horse_)  # reads what it sent before it died, then handles the death
                if horse_ in self._horses:
                    self._end_run(horse_, None)

    def _failure(self, execution: Execution, exc_string: str) -> Outcome:
        return failure_outcome(execution.fields, exc_string)

    def _end_run(self, horse_: HorseHandle, outcome: Outcome | None) -> None:
        """Record the outcome of a run the supervisor ended, return the horse's other jobs to their queues,
        and put a fresh horse in place of the killed one."""
        running = horse_.running
        if running is not None and outcome is None:
            outcome = self._failure(
                running, f"{WorkHorseDiedError.__module__}.WorkHorseDiedError: The work horse running the job "
                f"{horse_.exit_description()}"
            )
        waiting = [execution for execution in horse_.pending if execution is not running]
        self._writes.returns += [execution for execution in waiting if execution.job_id not in self._stopped_early]
        self._replace_horse(horse_)
        if running is not None and outcome is not None:
            now = time.time()
            started_at = running.started_at or now
            self._add_record(Record(running, outcome, self.name, started_at, now, True))
            self._writes.marked.discard(running.job_id)
            self._log_outcome(running, outcome.type, outcome.exc_string, outcome.retry_delay_s, now - started_at)
        self._flush()

    # Work horses

    def _add_horse(self) -> HorseHandle:
        horse_ = HorseHandle(self.connection, self.name, self.settings, self.strict_env)
        self._horses.append(horse_)
        self._selector.register(horse_.pipe, selectors.EVENT_READ, horse_)
        return horse_

    def _replace_horse(self, horse_: HorseHandle) -> None:
        if horse_.process.is_alive():
            horse_.kill()
        try:
            self._selector.unregister(horse_.pipe)
        except (KeyError, ValueError):
            pass
        horse_.pipe.close()
        horse_.pending.clear()
        self._horses.remove(horse_)
        if not self._cold and self._stop_signal is None:
            self._add_horse()

    def _shutdown_horses(self) -> None:
        """Kill horses still running jobs (cold shutdown), recording those jobs, then close the others."""
        for horse_ in list(self._horses):
            if horse_.running is not None:
                horse_.kill()
                self._end_run(horse_, self._failure(
                    horse_.running,
                    f"{WorkHorseDiedError.__module__}.WorkHorseDiedError: The worker {self.name} was shut down "
                    f"({self._stop_signal or 'stopped'}, cold shutdown) while the job ran; the job was killed",
                ))
            elif horse_.pending:
                self._writes.returns += horse_.pending
                horse_.pending.clear()
        try:
            self._flush()
        except redis.RedisError as exc:
            log.error("Worker %s could not record its last outcomes: %s", self.name, exc)
        for horse_ in self._horses:
            horse_.close()
        self._horses.clear()
