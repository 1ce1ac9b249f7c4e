"""The worker's supervising process: takes jobs from queues, hands them to work horses, enforces timeouts.

One loop waits in a single ``select`` on the work horses' pipes, on pending queue waits and on signals. Jobs
move from a queue into its started registry in one Lua script; the horse records each outcome itself; the
supervisor records outcomes only for runs it ends: timeouts, crashed horses and cold shutdown.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from nbqueue import keys
from nbqueue.connection import connect, describe
from nbqueue.errors import InvalidOptionError, JobTimeoutException, NbqueueError, WorkHorseDiedError
from nbqueue.results import Result
from nbqueue.scripts import Scripts
from nbqueue.settings import load_settings
from nbqueue.version import __version__
from nbqueue.worker import horse
from nbqueue.worker.failures import RETRY_FIELDS, failure_outcome
from nbqueue.worker.outcome import Execution, Outcome, record
from nbqueue.worker.maintenance import (
    HEARTBEAT_INTERVAL_S,
    MAINTENANCE_INTERVAL_S,
    SCHEDULER_INTERVAL_S,
    STARTED_LEASE_S,
    enqueue_due_jobs,
    fail_abandoned_jobs,
    send_heartbeat,
)
from nbqueue.worker.waiter import BlockingWait, CommandWaiter, QueueWaiter

log = logging.getLogger("nbqueue.worker")

#: Longest blocking wait on an empty queue or the command list, in seconds. An idle worker sends one
#: command per wait and queue, plus its heartbeats and scheduler and maintenance calls.
QUEUE_WAIT_S = 10.0


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
class _Horse:
    process: multiprocessing.process.BaseProcess
    pipe: Any
    execution: Execution | None = None


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
    worker is shut down or, in burst mode, when the queues are empty.
    """

    def __init__(
        self,
        queues: list[str] | tuple[str, ...] | str = ("default",),
        connection: redis.Redis | str | None = None,
        name: str | None = None,
        concurrency: int = 1,
    ):
        if isinstance(queues, str):
            queues = [queues]
        self.queue_names = [getattr(q, "name", q) for q in queues] or ["default"]
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidOptionError(f"concurrency={concurrency!r} is invalid: use a whole number >= 1")
        self.connection = connect(connection)
        self.name = name or f"{socket.gethostname()}.{os.getpid()}"
        self.concurrency = concurrency
        self.settings = load_settings()
        self.scripts = Scripts(self.connection)
        self.counters = _Counters()
        self._horses: list[_Horse] = []
        self._selector = selectors.DefaultSelector()
        self._waiters: list[BlockingWait] = [
            QueueWaiter(self.connection, keys.queue(q), QUEUE_WAIT_S) for q in self.queue_names
        ]
        self._command_waiter = CommandWaiter(self.connection, keys.worker_commands(self.name), QUEUE_WAIT_S)
        self._stop_signal: str | None = None
        self._cold = False
        self._execution_base = uuid.uuid4().hex[:12]
        self._execution_count = 0
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
            self._start_horse()
        log.info(
            "Worker %s started: nbqueue %s, pid %d, queues %s, concurrency %d, redis %s%s",
            self.name, __version__, os.getpid(), ", ".join(self.queue_names), self.concurrency,
            describe(self.connection), ", burst mode" if burst else "",
        )
        ran_any = False
        try:
            ran_any = self._loop(burst, wakeup_read)
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
        args: list[Any] = [int(HEARTBEAT_INTERVAL_S * 3)]
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
            if self._stop_signal is not None and not self._busy():
                return ran_any
            try:
                self._run_periodic_tasks()
                if self._stop_signal is None:
                    started = self._dequeue()
                    ran_any = ran_any or started > 0
                    if burst and started == 0 and self._idle() and not self._busy():
                        return ran_any
                    if not burst and self._idle():
                        self._arm(self._waiters)
                self._arm([self._command_waiter])
            except redis.ConnectionError as exc:
                log.warning("Worker %s cannot reach Redis, retrying in 1s: %s", self.name, exc)
                self._reset_waiters()
                self._wait_events(1.0, wakeup_read)
                continue
            self._wait_events(self._select_timeout(burst), wakeup_read)
            self._enforce_deadlines()

    def _busy(self) -> bool:
        return any(h.execution is not None for h in self._horses)

    def _idle(self) -> bool:
        return any(h.execution is None for h in self._horses)

    def _run_periodic_tasks(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL_S
            running = [h.execution for h in self._horses if h.execution is not None]
            send_heartbeat(self.connection, self.name, running, self._counter_fields())
        if now >= self._next_scheduler_run:
            moved, earliest = enqueue_due_jobs(self.scripts, self.name, self.queue_names)
            if moved:
                log.info("Worker %s moved %d due scheduled jobs to their queues", self.name, moved)
            delay_s = SCHEDULER_INTERVAL_S if earliest is None else min(SCHEDULER_INTERVAL_S, earliest - time.time())
            self._next_scheduler_run = now + max(0.0, delay_s)
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL_S
            fail_abandoned_jobs(self.connection, self.scripts, self.name)

    def _counter_fields(self) -> dict[str, int]:
        return {
            "finished": self.counters.finished, "failed": self.counters.failed,
            "retried": self.counters.retried, "stopped": self.counters.stopped,
        }

    def _select_timeout(self, burst: bool) -> float:
        now = time.monotonic()
        timeout = max(0.0, min(self._next_heartbeat, self._next_scheduler_run, self._next_maintenance) - now)
        wall = time.time()
        for h in self._horses:
            if h.execution is not None and h.execution.deadline is not None:
                timeout = min(timeout, max(0.0, h.execution.deadline - wall))
        if burst and self._idle():
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
                    self._on_command(reply[1])
            else:
                self._on_horse_message(key.data)

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
        for horse_ in self._horses:
            if horse_.execution is not None and horse_.execution.job_id == job_id:
                log.info("Job %s stop requested: queue=%s", job_id, horse_.execution.queue)
                self._kill_horse(horse_)
                self._end_execution(horse_, Outcome(
                    Result.Type.STOPPED, exc_string="The job was stopped on request; its work horse was killed"
                ))
                return
        log.warning("Worker %s got a stop request for job %s, which it is not running", self.name, job_id)

    # Jobs

    def _dequeue(self) -> int:
        idle = [h for h in self._horses if h.execution is None]
        if not idle:
            return 0
        now = time.time()
        self._execution_count += 1
        base = f"{self._execution_base}.{self._execution_count}"
        started, skipped = self.scripts.dequeue(
            args=[keys.PREFIX, self.name, repr(now), repr(now + STARTED_LEASE_S), len(idle), base, *self.queue_names]
        )
        for index in range(0, len(skipped), 3):
            job_id, queue, reason = (value.decode() for value in skipped[index : index + 3])
            if reason == "expired":
                log.warning("Job %s expired in queue %s before it started (its ttl passed): not run", job_id, queue)
            else:
                log.warning("Job %s left queue %s with status %s: not run", job_id, queue, reason)
        for index, horse_ in zip(range(0, len(started), 5), idle):
            job_id, queue, execution_id, timeout, func = (value.decode() for value in started[index : index + 5])
            execution = Execution(job_id, queue, execution_id, float(timeout), func, now)
            horse_.execution = execution
            horse_.pipe.send(execution)
            log.info("Job %s started: queue=%s function=%s", job_id, queue, func)
        return len(started) // 5

    def _on_horse_message(self, horse_: _Horse) -> None:
        try:
            report = horse_.pipe.recv()
        except (EOFError, OSError):
            self._on_horse_died(horse_)
            return
        execution = horse_.execution
        horse_.execution = None
        if execution is None:
            return
        self._log_outcome(execution, report.get("type"), report.get("exc_string"), report.get("retry_delay_s"))

    def _log_outcome(self, execution: Execution, type_value: int | None, exc_string: str | None, retry_delay_s: float | None) -> None:
        duration_s = time.time() - execution.started_at
        job_id, queue = execution.job_id, execution.queue
        if type_value is None:
            log.warning("Job %s was deleted before it ran: queue=%s", job_id, queue)
        elif type_value == Result.Type.SUCCESSFUL.value:
            self.counters.finished += 1
            log.info("Job %s finished in %.3fs: queue=%s", job_id, duration_s, queue)
        elif type_value == Result.Type.RETRIED.value:
            self.counters.retried += 1
            if retry_delay_s:
                # This worker runs the scheduler if it holds its lock: move the job exactly when it is due.
                self._next_scheduler_run = min(self._next_scheduler_run, time.monotonic() + retry_delay_s)
            last_line = (exc_string or "").strip().splitlines()[-1:] or [""]
            log.info("Job %s retried in %.1fs after %.3fs: queue=%s: %s", job_id, retry_delay_s or 0, duration_s, queue, last_line[0])
        elif type_value == Result.Type.STOPPED.value:
            self.counters.stopped += 1
            log.info("Job %s stopped after %.3fs: queue=%s", job_id, duration_s, queue)
        else:
            self.counters.failed += 1
            log.error("Job %s failed after %.3fs: queue=%s\n%s", job_id, duration_s, queue, (exc_string or "").rstrip())

    def _enforce_deadlines(self) -> None:
        now = time.time()
        for horse_ in self._horses:
            execution = horse_.execution
            if execution is None:
                continue
            if execution.deadline is not None and now >= execution.deadline:
                self._kill_horse(horse_)
                limit = f"{execution.timeout_s:g}"
                self._fail_execution(
                    horse_,
                    f"{JobTimeoutException.__module__}.JobTimeoutException: Job exceeded its timeout of {limit} seconds; "
                    f"its work horse was killed",
                )
            elif not horse_.process.is_alive():
                self._on_horse_died(horse_)

    def _on_horse_died(self, horse_: _Horse) -> None:
        horse_.process.join(5)
        code = horse_.process.exitcode
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        self._fail_execution(
            horse_, f"{WorkHorseDiedError.__module__}.WorkHorseDiedError: The work horse running the job {how}"
        )

    def _fail_execution(self, horse_: _Horse, exc_string: str) -> None:
        """Record a failure the supervisor detected (or a retry, by the job's budget); replace the horse."""
        execution = horse_.execution
        if execution is None:
            self._replace_horse(horse_)
            return
        names = ("result_ttl", "failure_ttl", *RETRY_FIELDS)
        fields = dict(zip(names, self.connection.hmget(keys.job(execution.job_id), names)))
        self._end_execution(horse_, failure_outcome(fields, exc_string), fields)

    def _end_execution(self, horse_: _Horse, outcome: Outcome, fields: dict[str, Any] | None = None) -> None:
        """Record the outcome of a run the supervisor ended, then put a fresh horse in place of the killed one."""
        execution = horse_.execution
        self._replace_horse(horse_)
        if execution is None:
            return
        if fields is None:
            names = ("result_ttl", "failure_ttl")
            fields = dict(zip(names, self.connection.hmget(keys.job(execution.job_id), names)))
        record(
            self.connection, self.scripts, execution, outcome, worker_name=self.name,
            result_ttl_s=int(fields["result_ttl"] or 500), failure_ttl_s=int(fields["failure_ttl"] or -1),
        )
        self._log_outcome(execution, outcome.type.value, outcome.exc_string, outcome.retry_delay_s)

    # Work horses

    def _start_horse(self) -> _Horse:
        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe()
        pool = self.connection.connection_pool
        process = context.Process(
            target=horse.main,
            args=(child_end, parent_end, pool.connection_class, dict(pool.connection_kwargs), self.name, self.settings),
            name=f"nbqueue-horse-{self.name}",
        )
        process.start()
        child_end.close()
        horse_ = _Horse(process, parent_end)
        self._horses.append(horse_)
        self._selector.register(parent_end, selectors.EVENT_READ, horse_)
        return horse_

    def _kill_horse(self, horse_: _Horse) -> None:
        pid = horse_.process.pid
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            # The horse may not have made its own process group yet.
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        horse_.process.join(5)

    def _replace_horse(self, horse_: _Horse) -> None:
        if horse_.process.is_alive():
            self._kill_horse(horse_)
        try:
            self._selector.unregister(horse_.pipe)
        except (KeyError, ValueError):
            pass
        horse_.pipe.close()
        self._horses.remove(horse_)
        horse_.execution = None
        if not self._cold:
            self._start_horse()

    def _shutdown_horses(self) -> None:
        for horse_ in list(self._horses):
            if horse_.execution is not None:
                self._kill_horse(horse_)
                self._fail_execution(
                    horse_,
                    f"{WorkHorseDiedError.__module__}.WorkHorseDiedError: The worker {self.name} was shut down "
                    f"({self._stop_signal or 'stopped'}, cold shutdown) while the job ran; the job was killed",
                )
        for horse_ in self._horses:
            try:
                horse_.pipe.send(None)
            except OSError:
                pass
            horse_.pipe.close()
            horse_.process.join(5)
            if horse_.process.is_alive():
                self._kill_horse(horse_)
        self._horses.clear()
