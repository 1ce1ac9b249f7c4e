"""Registries: one sorted set per queue and job state, holding job ids."""

from __future__ import annotations

import time

import redis

from nbqueue import keys


class BaseRegistry:
    """Job ids of one queue in one state. Each subclass documents what the score means."""

    key_for = staticmethod(keys.started)
    #: Whether members whose score has passed are dropped when the registry is read.
    drops_expired = False

    def __init__(self, name: str = "default", connection: redis.Redis | str | None = None, queue=None):
        from nbqueue.connection import connect

        if queue is not None:
            name, connection = queue.name, queue.connection
        self.name = name
        self.connection = connect(connection)
        self.key = self.key_for(name)

    def cleanup(self) -> None:
        """Drop members whose score is in the past, when this registry expires them."""
        if self.drops_expired:
            self.connection.zremrangebyscore(self.key, 0, time.time())

    def get_job_ids(self, start: int = 0, end: int = -1, desc: bool = False) -> list[str]:
        """Return the ids in score order (newest last unless ``desc``)."""
        self.cleanup()
        return [raw.decode() for raw in self.connection.zrange(self.key, start, end, desc=desc)]

    def count(self) -> int:
        """Return the number of ids."""
        self.cleanup()
        return self.connection.zcard(self.key)

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, item: object) -> bool:
        job_id = getattr(item, "id", item)
        return self.connection.zscore(self.key, job_id) is not None

    def get_expiration_time(self, job_or_id: object) -> float | None:
        """Return the member's score (epoch seconds), or None if absent."""
        return self.connection.zscore(self.key, getattr(job_or_id, "id", job_or_id))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class StartedJobRegistry(BaseRegistry):
    """Running jobs, scored by when their worker's heartbeat lapses."""

    key_for = staticmethod(keys.started)


class FinishedJobRegistry(BaseRegistry):
    """Jobs that finished, scored by when they expire (``inf`` for ``result_ttl=-1``)."""

    key_for = staticmethod(keys.finished)
    drops_expired = True


class FailedJobRegistry(BaseRegistry):
    """Jobs that failed, scored by when they expire (``inf`` for ``failure_ttl=-1``)."""

    key_for = staticmethod(keys.failed)
    drops_expired = True


class ScheduledJobRegistry(BaseRegistry):
    """Jobs waiting to be queued, scored by when they are due."""

    key_for = staticmethod(keys.scheduled)


class CanceledJobRegistry(BaseRegistry):
    """Canceled jobs, scored by when they were canceled."""

    key_for = staticmethod(keys.canceled)
