"""Waiting for a queue to become non-empty without taking anything from it.

``BLMOVE key key RIGHT RIGHT`` moves a list's last element back to where it was, so the list is unchanged,
and it blocks until the list has an element. The command is sent on a dedicated connection and its reply
is read only when the socket becomes readable, so the supervisor can wait on queues, work-horse pipes and
signals in one ``select``. Requires Redis 6.2 or newer.
"""

from __future__ import annotations

import redis


class QueueWaiter:
    """A pending wait on one queue list."""

    def __init__(self, client: redis.Redis, queue_key: str, wait_s: float):
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = wait_s + 10
        self._pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        self._connection: redis.connection.AbstractConnection | None = None
        self.queue_key = queue_key
        self.wait_s = wait_s
        self.armed = False

    def arm(self) -> None:
        """Send the blocking command, unless one is already pending."""
        if self.armed:
            return
        if self._connection is None:
            self._connection = self._pool.make_connection()
            self._connection.connect()
        self._connection.send_command("BLMOVE", self.queue_key, self.queue_key, "RIGHT", "RIGHT", self.wait_s)
        self.armed = True

    def fileno(self) -> int:
        assert self._connection is not None and self._connection._sock is not None
        return self._connection._sock.fileno()

    def complete(self) -> None:
        """Read the reply of the pending command (the queue has an element, or the wait timed out)."""
        assert self._connection is not None
        try:
            self._connection.read_response()
        finally:
            self.armed = False

    def close(self) -> None:
        """Drop the connection, and with it any pending command."""
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None
        self.armed = False
