"""Resolving the Redis connection: an explicit URL or client, then ``NBQUEUE_REDIS_URL``, then the embedded server."""

from __future__ import annotations

import logging
import re
import threading
import weakref

import redis
import redis.retry
from redis.backoff import NoBackoff

from nbqueue.errors import ConnectionResolutionError
from nbqueue.settings import Settings, load_settings

log = logging.getLogger(__name__)

ConnectionLike = "str | redis.Redis | None"

_default_lock = threading.Lock()
_default_clients: dict[str, redis.Redis] = {}
_wait_clients: weakref.WeakKeyDictionary[redis.Redis, redis.Redis] = weakref.WeakKeyDictionary()


def connect(connection: str | redis.Redis | None = None, *, settings: Settings | None = None) -> redis.Redis:
    """Return a Redis client: ``connection`` if given, else ``NBQUEUE_REDIS_URL``, else the embedded server.

    Clients returned for the same URL are shared. A client given with ``decode_responses=True`` is replaced by
    one on the same server that returns bytes, since payloads are binary.
    """
    if isinstance(connection, redis.Redis):
        return _binary_client(connection)
    if connection is not None and not isinstance(connection, str):
        raise ConnectionResolutionError(
            f"connection={connection!r} is invalid: pass a redis:// or rediss:// URL, a redis.Redis client, or None"
        )
    url = connection
    if url is None:
        settings = settings or load_settings()
        url = settings.redis_url
        if url is None:
            from nbqueue.embedded import ensure_server

            url = ensure_server(settings).url
    with _default_lock:
        client = _default_clients.get(url)
        if client is None:
            client = client_from_url(url)
            _default_clients[url] = client
        return client


def client_from_url(url: str) -> redis.Redis:
    """Create a client for ``url``, with an error naming the masked URL if it is malformed."""
    try:
        return redis.Redis.from_url(url, health_check_interval=30)
    except ValueError as exc:
        raise ConnectionResolutionError(
            f"Invalid Redis URL {mask_url(url)!r}: {exc}. Use redis://[:PASSWORD@]HOST:PORT/DB or rediss:// for TLS"
        ) from exc


def _binary_client(client: redis.Redis) -> redis.Redis:
    kwargs = client.connection_pool.connection_kwargs
    if not kwargs.get("decode_responses"):
        return client
    pool = redis.ConnectionPool(
        connection_class=client.connection_pool.connection_class, **{**kwargs, "decode_responses": False}
    )
    return redis.Redis(connection_pool=pool)


def blocking_client(client: redis.Redis, socket_timeout_s: float) -> redis.Redis:
    """Return a client on the same server whose socket timeout is at least ``socket_timeout_s``.

    Blocking reads such as ``XREAD BLOCK`` use it, so that a short socket timeout on the user's client
    cannot cut a wait short, and an interrupted read never leaves the user's connections in a bad state.
    """
    waiter = _wait_clients.get(client)
    if waiter is None:
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = socket_timeout_s
        # No retries inside redis-py: the waiting loop retries on its own, within its deadline.
        kwargs["retry"] = redis.retry.Retry(NoBackoff(), 0)
        waiter = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
        _wait_clients[client] = waiter
    return waiter


def describe(client: redis.Redis) -> str:
    """Return the client's address as a URL with any password masked, for logs and messages."""
    kwargs = client.connection_pool.connection_kwargs
    scheme = "rediss" if "ssl" in client.connection_pool.connection_class.__name__.lower() else "redis"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    auth = ":***@" if kwargs.get("password") else ""
    if kwargs.get("username"):
        auth = f"{kwargs['username']}:***@"
    return f"{scheme}://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Replace the password in a Redis URL by ``***``."""
    masked = _URL_PASSWORD.sub(r"\g<head>***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", masked)
