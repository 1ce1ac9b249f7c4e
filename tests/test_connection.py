"""Tests of resolving the Redis connection: explicit argument, ``NBQUEUE_REDIS_URL``, then the embedded server."""

from __future__ import annotations

import pytest
import redis

from nbqueue import connect
from nbqueue.connection import client_from_url, describe, mask_url
from nbqueue.embedded import server_status, stop_server
from nbqueue.errors import ConnectionResolutionError


def db_url(redis_url: str, db: int) -> str:
    """Return the test server's URL with another database number, so that tests can distinguish clients."""
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


# Precedence


def test_connect_explicit_url_beats_environment(redis_url, monkeypatch):
    monkeypatch.setenv("NBQUEUE_REDIS_URL", db_url(redis_url, 1))

    client = connect(db_url(redis_url, 2))

    assert client.connection_pool.connection_kwargs["db"] == 2
    client.set("test:where", "explicit")
    assert redis.Redis.from_url(db_url(redis_url, 2)).get("test:where") == b"explicit"
    assert redis.Redis.from_url(db_url(redis_url, 1)).exists("test:where") == 0


def test_connect_explicit_client_beats_environment(redis_url, connection, monkeypatch):
    monkeypatch.setenv("NBQUEUE_REDIS_URL", db_url(redis_url, 1))

    assert connect(connection) is connection


def test_connect_environment_url(redis_url, monkeypatch):
    monkeypatch.setenv("NBQUEUE_REDIS_URL", db_url(redis_url, 1))

    client = connect()

    assert client.connection_pool.connection_kwargs["db"] == 1
    assert client.connection_pool.connection_kwargs["port"] == int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert client.ping() is True


def test_connect_embedded_when_nothing_set():
    assert server_status() is None
    try:
        client = connect()
        status = server_status()

        assert status is not None
        assert client.connection_pool.connection_kwargs["port"] == status.port
        assert client.connection_pool.connection_kwargs["host"] in ("127.0.0.1", "localhost")
        assert client.ping() is True
    finally:
        stop_server()

    assert server_status() is None


def test_connect_same_url_shared(redis_url):
    assert connect(redis_url) is connect(redis_url)


@pytest.mark.parametrize("value", [42, b"redis://127.0.0.1:1/0", ["redis://x"]])
def test_connect_invalid_argument(value):
    with pytest.raises(ConnectionResolutionError) as excinfo:
        connect(value)

    assert "redis:// or rediss:// URL" in str(excinfo.value)


# Binary clients


def test_connect_replaces_decoding_client(redis_url):
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)

    client = connect(decoding)

    assert client is not decoding
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["decode_responses"] is False
    assert kwargs["port"] == decoding.connection_pool.connection_kwargs["port"]
    assert kwargs["db"] == decoding.connection_pool.connection_kwargs["db"]
    client.set("test:binary", b"\xff\x00")
    assert client.get("test:binary") == b"\xff\x00"
    assert decoding.get("test:ascii") is None
    decoding.close()


def test_connect_keeps_binary_client(connection):
    assert connect(connection) is connection


# Passwords in URLs


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://:secret@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:secret@h:1/0", "redis://user:***@h:1/0"),
        ("rediss://:secret@h:6380/2", "rediss://:***@h:6380/2"),
        ("redis://h:1/0?password=secret&db=1", "redis://h:1/0?password=***&db=1"),
        ("redis://h:1/0", "redis://h:1/0"),
    ],
)
def test_mask_url_hides_password(url, expected):
    masked = mask_url(url)

    assert masked == expected
    assert "secret" not in masked


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@host:notaport/0",
        "http://:hunter2@host:1/0",
        "redis://:hunter2@host:99999999/0",
        "redis://user:hunter2@[::1/0",
    ],
)
def test_invalid_url_message_hides_password(url):
    with pytest.raises(ConnectionResolutionError) as excinfo:
        connect(url)

    message = str(excinfo.value)
    assert "hunter2" not in message
    assert "***" in message
    assert "Invalid Redis URL" in message


def test_invalid_url_from_client_from_url():
    with pytest.raises(ConnectionResolutionError) as excinfo:
        client_from_url("redis://:hunter2@host:notaport/0")

    assert "hunter2" not in str(excinfo.value)


def test_describe_masks_password():
    client = redis.Redis.from_url("redis://:hunter2@127.0.0.1:1/3")

    assert describe(client) == "redis://:***@127.0.0.1:1/3"
