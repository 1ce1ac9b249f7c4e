"""Sending commands packed ahead of time in one write, for the paths where redis-py's pipeline costs more
CPU than the round trip: enqueueing jobs and refreshing many widgets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

#: Values at least this large are sent as they are, not copied into the joined command buffer.
LARGE_VALUE_BYTES = 64 * 1024


def _encode(arg: Any) -> bytes | memoryview:
    if isinstance(arg, (bytes, memoryview)):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, (int, float)):
        return repr(arg).encode()
    raise TypeError(f"cannot send a {type(arg).__name__} to Redis: pass bytes, str, int or float")


def pack_command(*args: Any) -> list[bytes | memoryview]:
    """Encode one command in the Redis protocol (RESP) as buffers to send in order.

    An argument may be a list of buffers, sent as one value made of their concatenation, so that a large
    value built in parts is never joined in memory.
    """
    parts: list[bytes | memoryview] = []
    small = [b"*%d\r\n" % len(args)]
    for arg in args:
        values = [_encode(value) for value in arg] if isinstance(arg, list) else [_encode(arg)]
        small.append(b"$%d\r\n" % sum(len(value) for value in values))
        for value in values:
            if len(value) >= LARGE_VALUE_BYTES:
                parts.append(b"".join(small))
                parts.append(value)
                small = []
            else:
                small.append(value)
        small.append(b"\r\n")
    parts.append(b"".join(small))
    return parts


def execute_packed(client: redis.Redis, commands: Iterable[Sequence[bytes | memoryview]], reply_count: int) -> list[Any]:
    """Send packed commands in one write (large values apart) and return their ``reply_count`` replies.

    An error reply becomes its :class:`redis.ResponseError` in the list. On a connection or timeout error
    the connection is closed, since its remaining replies can no longer be matched to commands.
    """
    buffers: list[bytes | memoryview] = []
    pending: list[bytes | memoryview] = []
    for command in commands:
        for part in command:
            if len(part) >= LARGE_VALUE_BYTES:
                if pending:
                    buffers.append(b"".join(pending))
                    pending = []
                buffers.append(part)
            else:
                pending.append(part)
    if pending:
        buffers.append(b"".join(pending))

    pool = client.connection_pool
    try:
        connection = pool.get_connection()
    except TypeError:  # redis-py before 5.3 requires a command name
        connection = pool.get_connection("PIPELINE")
    try:
        connection.send_packed_command(buffers)
        replies: list[Any] = []
        for _ in range(reply_count):
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
