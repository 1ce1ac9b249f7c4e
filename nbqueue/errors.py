"""The exceptions nbqueue raises. Every one subclasses :class:`NbqueueError`."""

from __future__ import annotations

from typing import Any


class NbqueueError(Exception):
    """Base class of every error nbqueue raises."""


class ConfigurationError(NbqueueError, ValueError):
    """Raised when a setting or environment variable has an invalid value."""


class ConnectionResolutionError(NbqueueError):
    """Raised when no Redis connection can be made from the argument, the environment or the embedded server."""


class EmbeddedServerError(ConnectionResolutionError):
    """Raised when the embedded ``redis-server`` cannot be found, started or reached."""


class InvalidOptionError(NbqueueError, ValueError):
    """Raised by ``enqueue`` and friends for an invalid option value; nothing is written to Redis."""


class TimeoutFormatError(InvalidOptionError):
    """Raised when a timeout or TTL is not a whole number of seconds or a string like ``"90s"``."""


class SerializationError(NbqueueError):
    """Raised at enqueue when the function, an argument or the job's meta cannot be pickled."""


class PayloadTooLargeError(SerializationError):
    """Raised at enqueue when a pickled payload is larger than the configured limit."""


class DeserializationError(NbqueueError):
    """Raised when a payload cannot be read: corrupt, unsigned, forged, or from another Python version."""


class NoSuchJobError(NbqueueError, KeyError):
    """Raised when a job id has no job in Redis (never created, deleted, or expired)."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class InvalidJobOperation(NbqueueError):
    """Raised when an operation does not fit the job's state, such as stopping a job that is not running."""


class JobTimeoutException(NbqueueError):
    """The exception recorded in a job's FAILED result when it ran past its timeout and was killed."""


class AbandonedJobError(NbqueueError):
    """The exception recorded in a job's FAILED result when its worker died without recording an outcome."""


class WorkHorseDiedError(NbqueueError):
    """The exception recorded when the process running a job exited without recording an outcome."""


class WaitOutcomeError(NbqueueError):
    """Base of the errors of :func:`nbqueue.wait` and :meth:`Queue.map`, which carry what the wait saw.

    ``values`` lists the return values in input order, with None for the items without one. ``failures``
    maps the index of each failed item to its final :class:`~nbqueue.Result`. ``jobs`` lists the jobs in
    input order.
    """

    def __init__(
        self,
        message: str,
        *,
        values: list[Any] | None = None,
        failures: dict[int, Any] | None = None,
        jobs: list[Any] | None = None,
    ):
        # The attributes have defaults so that pickle, which calls the class with the message only, works.
        super().__init__(message)
        self.values = values if values is not None else []
        self.failures = failures if failures is not None else {}
        self.jobs = jobs if jobs is not None else []


class JobsFailedError(WaitOutcomeError):
    """Raised by :func:`nbqueue.wait` and :meth:`Queue.map` when every job ended but some failed or were stopped."""


class WaitTimeoutError(WaitOutcomeError, TimeoutError):
    """Raised by :func:`nbqueue.wait` and :meth:`Queue.map` when the timeout passes before every job ended.

    The jobs keep running, and ``values`` contains the return values of the jobs that finished.
    """
