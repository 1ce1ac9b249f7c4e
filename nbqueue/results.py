"""Results: one record per execution of a job, kept in a Redis stream per job, newest last."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from nbqueue import serialization
from nbqueue.settings import load_settings

#: How many results a job keeps; older ones are trimmed exactly (``XADD MAXLEN 10``, not ``~``).
MAX_RESULTS = 10
#: Type code of the entry that marks a job whose outcome was discarded (``result_ttl=0``); not a result.
DISCARDED_MARKER = b"0"


class Result:
    """The outcome of one execution of a job."""

    class Type(enum.Enum):
        SUCCESSFUL = 1
        FAILED = 2
        STOPPED = 3
        RETRIED = 4

    def __init__(
        self,
        *,
        id: str,
        job_id: str,
        type: Result.Type,
        created_at: datetime,
        worker_name: str,
        started_at: datetime | None,
        ended_at: datetime | None,
        exc_string: str | None,
        return_value_payload: bytes | None,
    ):
        self.id = id
        self.job_id = job_id
        self.type = type
        self.created_at = created_at
        self.worker_name = worker_name
        self.started_at = started_at
        self.ended_at = ended_at
        self.exc_string = exc_string
        self._payload = return_value_payload
        self._value_loaded = False
        self._value: Any = None

    @property
    def return_value(self) -> Any:
        """The value the job returned (SUCCESSFUL results only, else None), unpickled on first access."""
        if self._payload is None:
            return None
        if not self._value_loaded:
            self._value = serialization.loads(
                self._payload, secret_key=load_settings().secret_key, what=f"return value of job {self.job_id!r}"
            )
            self._value_loaded = True
        return self._value

    @property
    def execution_started_at(self) -> datetime | None:
        """Alias of ``started_at``, the name RQ uses."""
        return self.started_at

    @property
    def execution_ended_at(self) -> datetime | None:
        """Alias of ``ended_at``, the name RQ uses."""
        return self.ended_at

    @property
    def duration_s(self) -> float | None:
        """Seconds the execution took, when its start and end are known."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and (self.job_id, self.id) == (other.job_id, other.id)

    def __hash__(self) -> int:
        return hash((self.job_id, self.id))

    def __repr__(self) -> str:
        return f"Result(id={self.id!r}, job_id={self.job_id!r}, type={self.type.name})"


def encode_fields(
    result_type: Result.Type,
    *,
    worker_name: str,
    started_at: float | None,
    ended_at: float | None,
    exc_string: str | None = None,
    return_value_payload: bytes | list[bytes] | None = None,
) -> list[Any]:
    """Return the field/value list of one result's stream entry."""
    fields: list[Any] = ["type", str(result_type.value), "worker", worker_name]
    if started_at is not None:
        fields += ["started_at", repr(started_at)]
    if ended_at is not None:
        fields += ["ended_at", repr(ended_at)]
    if exc_string is not None:
        fields += ["exc", exc_string]
    if return_value_payload is not None:
        fields += ["value", return_value_payload]
    return fields


def decode_entries(job_id: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Result]:
    """Turn stream entries into Results in the order given, skipping discard markers."""
    results = []
    for entry_id, fields in entries:
        type_code = fields.get(b"type", b"")
        if type_code == DISCARDED_MARKER:
            continue
        stream_id = entry_id.decode()
        exc = fields.get(b"exc")
        results.append(
            Result(
                id=stream_id,
                job_id=job_id,
                type=Result.Type(int(type_code)),
                created_at=_from_stream_id(stream_id),
                worker_name=fields.get(b"worker", b"").decode(),
                started_at=_from_epoch(fields.get(b"started_at")),
                ended_at=_from_epoch(fields.get(b"ended_at")),
                exc_string=exc.decode(errors="replace") if exc is not None else None,
                return_value_payload=fields.get(b"value"),
            )
        )
    return results


def _from_stream_id(stream_id: str) -> datetime:
    milliseconds = int(stream_id.partition("-")[0])
    return datetime.fromtimestamp(milliseconds / 1000, tz=timezone.utc)


def _from_epoch(raw: bytes | None) -> datetime | None:
    if raw is None:
        return None
    return datetime.fromtimestamp(float(raw), tz=timezone.utc)
