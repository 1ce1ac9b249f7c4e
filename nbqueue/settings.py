"""Every setting nbqueue reads from the environment, in one place.

Precedence everywhere: an explicit argument or command-line flag, then the ``NBQUEUE_*`` environment
variable, then the default. No other module reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from nbqueue.errors import ConfigurationError

#: Redis' own limit on one string value (``proto-max-bulk-len``), and so the default payload limit.
DEFAULT_MAX_PAYLOAD_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Settings resolved from the environment."""

    redis_url: str | None
    """``NBQUEUE_REDIS_URL``: the Redis server to use instead of the embedded one."""

    home: Path
    """``NBQUEUE_HOME``: folder of the embedded server's data and state file."""

    redis_server: str | None
    """``NBQUEUE_REDIS_SERVER``: path of the ``redis-server`` binary for the embedded server."""

    max_payload_bytes: int
    """``NBQUEUE_MAX_PAYLOAD_BYTES``: largest job payload or return value accepted, in bytes."""

    secret_key: bytes | None
    """``NBQUEUE_SECRET_KEY``: key for signing payloads and results with HMAC."""

    notebook_session: str | None = None
    """``JPY_SESSION_NAME``: the notebook's path, which Jupyter Server 2 sets in its kernels' environment."""


_VARIABLES = (
    "NBQUEUE_REDIS_URL", "NBQUEUE_HOME", "NBQUEUE_REDIS_SERVER", "NBQUEUE_MAX_PAYLOAD_BYTES", "NBQUEUE_SECRET_KEY",
    "JPY_SESSION_NAME",
)
# The settings last read from the process environment, with the values they were read from.
_cached: tuple[tuple[str | None, ...], Settings] | None = None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default: the process environment, read again when it changed)."""
    global _cached
    if environ is None:
        snapshot = tuple(os.environ.get(name) for name in _VARIABLES)
        if _cached is not None and _cached[0] == snapshot:
            return _cached[1]
        settings = _read_settings(os.environ)
        _cached = (snapshot, settings)
        return settings
    return _read_settings(environ)


def _read_settings(env: Mapping[str, str]) -> Settings:
    home = env.get("NBQUEUE_HOME") or platformdirs.user_data_dir("nbqueue", appauthor=False)
    secret = env.get("NBQUEUE_SECRET_KEY")
    return Settings(
        redis_url=env.get("NBQUEUE_REDIS_URL") or None,
        home=Path(home).expanduser(),
        redis_server=env.get("NBQUEUE_REDIS_SERVER") or None,
        max_payload_bytes=_parse_positive_int(env, "NBQUEUE_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES),
        secret_key=secret.encode() if secret else None,
        notebook_session=env.get("JPY_SESSION_NAME") or None,
    )


def _parse_positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{name}={raw!r} is invalid: set it to a positive whole number of bytes, or unset it")
    return value
