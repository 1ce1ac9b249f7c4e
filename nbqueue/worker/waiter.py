"""Blocking Redis commands whose replies the supervisor reads only when their socket is readable.

Each wait is sent on a dedicated connection, so the supervisor can wait on queues, its command list,
work-horse pipes and signals in one ``select``.

- Queues: ``BLMOVE key key RIGHT RIGHT`` moves a list's last element back to where it was, so the list is
  unchanged, and blocks until the list has an element. It needs Redis 6.2 or newer.
- Commands: ``BLPOP`` on the worker's command list and the scheduler wake-up list takes the next one.
"""

from __future__ import annotations

from typing import Any

import redis


class BlockingWait:
    """One blocking command on its own connection, sent by :meth:`arm` and read by :meth:`complete`."""

    def __init__(self, client: redis.Redis, key: str, wait_s: float):
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = wait_s + 10
        self._pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        self._connection: Any = None
        self.key = key
        self.wait_s = wait_s
        self.armed = False

    def command(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def arm(self) -> None:
        """Send the blocking command, unless one is already pending."""
        if self.armed:
            return
        if self._connection is None:
            self._connection = self._pool.make_connection()
            self._connection.connect()
        self._connection.send_command(*self.command())
        self.armed = True

    def fileno(self) -> int:
        return self._connection._sock.fileno()

    def complete(self) -> Any:
        """Read and return the reply of the pending command."""
        try:
            return self._connection.read_response()
        finally:
            self.armed = False

    def close(self) -> None:
        """Drop the connection, and with it any pending command."""
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None
        self.armed = False


class QueueWaiter(BlockingWait):
    """Waits until a queue list is non-empty, taking nothing from it."""

    def command(self) -> tuple[Any, ...]:
        return ("BLMOVE", self.key, self.key, "RIGHT", "RIGHT", self.wait_s)


class CommandWaiter(BlockingWait):
    """Takes the next command from a worker's command list, or the next scheduler wake-up."""

    def __init__(self, client: redis.Redis, key: str, wake_key: str, wait_s: float):
        super().__init__(client, key, wait_s)
        self.wake_key = wake_key

    def command(self) -> tuple[Any, ...]:
        return ("BLPOP", self.key, self.wake_key, self.wait_s)
