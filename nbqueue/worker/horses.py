"""The supervisor's handle on one work horse: its process, its pipe and the jobs sent to it."""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
from typing import Any

import redis

from nbqueue.settings import Settings
from nbqueue.worker import horse
from nbqueue.worker.outcome import Execution

#: Most jobs sent ahead to one work horse. Jobs that take longer than PREFETCH_SLOW_S reset it to 1, so
#: long jobs are never held back behind each other while another worker is free.
MAX_PREFETCH = 32
PREFETCH_FAST_S = 0.01
PREFETCH_SLOW_S = 0.1


class HorseHandle:
    """A work horse process and the jobs sent to it, oldest (the running one) first."""

    def __init__(self, connection: redis.Redis, worker_name: str, settings: Settings, strict_env: bool = False):
        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe()
        pool = connection.connection_pool
        self.process = context.Process(
            target=horse.main,
            args=(
                child_end, parent_end, pool.connection_class, dict(pool.connection_kwargs), worker_name, settings,
                strict_env,
            ),
            name=f"nbqueue-horse-{worker_name}",
        )
        self.process.start()
        child_end.close()
        self.pipe = parent_end
        self.pending: collections.deque[Execution] = collections.deque()
        self.prefetch = 1

    @property
    def running(self) -> Execution | None:
        """The job the horse runs now, by the supervisor's account."""
        if self.pending and self.pending[0].started_at is not None:
            return self.pending[0]
        return None

    @property
    def free_slots(self) -> int:
        return max(0, self.prefetch - len(self.pending))

    def send(self, execution: Execution, now: float) -> bool:
        """Send a job; return True if the horse starts it at once (it had nothing else).

        A horse that died keeps the job unstarted, so the supervisor returns it to its queue when it
        handles the death.
        """
        self.pending.append(execution)
        try:
            self.pipe.send(("run", execution))
        except OSError:
            return False
        if len(self.pending) == 1:
            execution.started_at = now
            return True
        return False

    def pop_finished(self, job_id: str, now: float) -> Execution | None:
        """Take the job the horse reported on off the list; the next one starts now."""
        if not self.pending or self.pending[0].job_id != job_id:
            return None
        execution = self.pending.popleft()
        if self.pending:
            self.pending[0].started_at = now
        return execution

    def adapt_prefetch(self, duration_s: float) -> None:
        """Send more jobs ahead while they are quick, and one at a time once they are not."""
        if duration_s < PREFETCH_FAST_S:
            self.prefetch = min(self.prefetch * 2, MAX_PREFETCH)
        elif duration_s > PREFETCH_SLOW_S:
            self.prefetch = 1

    def send_control(self, message: Any) -> None:
        try:
            self.pipe.send(message)
        except OSError:
            pass

    def kill(self) -> None:
        """SIGKILL the horse and every process of its process group, and reap it."""
        pid = self.process.pid
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
        self.process.join(5)

    def exit_description(self) -> str:
        """Say how the horse's process ended, for a failure message."""
        self.process.join(5)
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the horse to exit and wait for it; kill it if it does not."""
        self.send_control(None)
        self.pipe.close()
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.kill()
