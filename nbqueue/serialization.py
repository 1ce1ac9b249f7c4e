"""The payload envelope: cloudpickle data with a header of versions and an optional HMAC signature.

Layout: ``b"NBQ1"``, a 4-byte big-endian header length, a JSON header, then the pickle. The header records
the Python and cloudpickle versions that wrote the pickle and, when ``NBQUEUE_SECRET_KEY`` is set, an
HMAC-SHA256 of the pickle, so that a reader can refuse a payload before unpickling it. A job payload's
header also records, under ``modules``, the installed distributions that the pickle imports, with their
versions (see :mod:`nbqueue.environment`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from nbqueue import environment
from nbqueue.errors import DeserializationError, PayloadTooLargeError, SerializationError

MAGIC = b"NBQ1"
_HEADER_LENGTH = struct.Struct(">I")
PYTHON_VERSION = "{}.{}.{}".format(*sys.version_info[:3])
CLOUDPICKLE_VERSION = cloudpickle.__version__


def dumps(
    obj: Any, *, max_bytes: int, secret_key: bytes | None, what: str = "payload", join: bool = True
) -> bytes | list[bytes]:
    """Pickle ``obj`` into an envelope; raise :class:`SerializationError` if it cannot be pickled.

    With ``join=False`` the envelope is returned as a list of buffers (header, then pickle), which saves a
    copy of a large pickle where the buffers can be sent as they are (see :func:`nbqueue.wire.pack_command`).
    """
    register_local_modules()
    try:
        body = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"Cannot pickle the {what}: {type(exc).__name__}: {exc}") from exc
    return _wrap(body, max_bytes=max_bytes, secret_key=secret_key, what=what, join=join)


def dumps_call(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    max_bytes: int,
    secret_key: bytes | None,
) -> bytes:
    """Pickle a call; on failure, name the function or argument that cannot be pickled."""
    return dumps_calls(func, [(args, kwargs)], max_bytes=max_bytes, secret_key=secret_key)[0]


def dumps_calls(
    func: Callable[..., Any],
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    max_bytes: int,
    secret_key: bytes | None,
) -> list[bytes]:
    """Pickle several calls of one function, pickling the function once.

    The body of each envelope is the function's pickle followed by the pickle of ``(args, kwargs)``; the
    header's ``func`` field gives the length of the first part.
    """
    register_local_modules()
    try:
        func_body = cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"Cannot pickle the function {getattr(func, '__qualname__', func)!r} for the job: "
            f"{type(exc).__name__}: {exc}. Define it at the top level of a cell or module."
        ) from exc
    payloads = []
    for args, kwargs in calls:
        try:
            call_body = cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            culprit = _find_unpicklable(func, args, kwargs)
            raise SerializationError(
                f"Cannot pickle {culprit} for the job: {type(exc).__name__}: {exc}. "
                "Pass a picklable value, or create the object inside the job function."
            ) from exc
        payloads.append(
            _wrap([func_body, call_body], max_bytes=max_bytes, secret_key=secret_key, what="job payload",
                  extra={"func": len(func_body), "modules": environment.describe_imports(func_body, call_body)})
        )
    return payloads


def loads_call(data: bytes, *, secret_key: bytes | None, what: str = "payload") -> tuple[Any, tuple, dict]:
    """Unpickle a call written by :func:`dumps_calls`: return ``(func, args, kwargs)``."""
    header, body = read_envelope(data, secret_key=secret_key, what=what)
    return unpickle_call(header, body, what=what)


def unpickle_call(header: dict[str, Any], body: memoryview, *, what: str = "payload") -> tuple[Any, tuple, dict]:
    """Unpickle the call in an envelope that :func:`read_envelope` has checked."""
    try:
        func_length = header.get("func")
        if isinstance(func_length, int):
            func = pickle.loads(body[:func_length])
            args, kwargs = pickle.loads(body[func_length:])
        else:
            func, args, kwargs = pickle.loads(body)
    except Exception as exc:
        raise DeserializationError(f"Cannot unpickle the {what}: {type(exc).__name__}: {exc}") from exc
    return func, args, kwargs


def loads(data: bytes, *, secret_key: bytes | None, what: str = "payload") -> Any:
    """Unpickle an envelope after checking its format, versions and signature."""
    _, body = read_envelope(data, secret_key=secret_key, what=what)
    return unpickle(body, what=what)


def unpickle(body: bytes | memoryview, *, what: str = "payload") -> Any:
    """Unpickle the pickle of an envelope that :func:`read_envelope` has checked."""
    try:
        return pickle.loads(body)
    except Exception as exc:
        raise DeserializationError(f"Cannot unpickle the {what}: {type(exc).__name__}: {exc}") from exc


def read_envelope(data: bytes, *, secret_key: bytes | None, what: str = "payload") -> tuple[dict[str, Any], memoryview]:
    """Return the header and a view of the pickle, checking everything that can be checked unpickled."""
    view = memoryview(data)
    if len(view) < len(MAGIC) + _HEADER_LENGTH.size or bytes(view[: len(MAGIC)]) != MAGIC:
        raise DeserializationError(f"The {what} is not an nbqueue payload: it does not start with {MAGIC!r}")
    (header_length,) = _HEADER_LENGTH.unpack_from(view, len(MAGIC))
    start = len(MAGIC) + _HEADER_LENGTH.size
    if start + header_length > len(view):
        raise DeserializationError(f"The {what} is truncated: its header needs {header_length} bytes")
    try:
        header = json.loads(bytes(view[start : start + header_length]))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, RecursionError) as exc:
        raise DeserializationError(f"The {what} has a corrupt header: {type(exc).__name__}: {exc}") from exc
    body = view[start + header_length :]
    _check_versions(header, what)
    _check_signature(header, body, secret_key, what)
    return header, body


def _wrap(
    parts: bytes | list[bytes],
    *,
    max_bytes: int,
    secret_key: bytes | None,
    what: str,
    extra: dict[str, Any] | None = None,
    join: bool = True,
) -> Any:
    """Join the magic, header and body parts into one envelope, copying the body once (none if not ``join``)."""
    body_parts = [parts] if isinstance(parts, bytes) else parts
    header: dict[str, Any] = {"python": PYTHON_VERSION, "cloudpickle": CLOUDPICKLE_VERSION, **(extra or {})}
    if secret_key is not None:
        signature = hmac.new(secret_key, digestmod=hashlib.sha256)
        for part in body_parts:
            signature.update(part)
        header["hmac"] = signature.hexdigest()
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    size = len(MAGIC) + _HEADER_LENGTH.size + len(header_bytes) + sum(len(part) for part in body_parts)
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"The {what} is {size:,} bytes, over the limit of {max_bytes:,} bytes: pass a smaller value "
            "(for example a file path the worker can read) or raise NBQUEUE_MAX_PAYLOAD_BYTES"
        )
    head = b"".join((MAGIC, _HEADER_LENGTH.pack(len(header_bytes)), header_bytes))
    if not join:
        return [head, *body_parts]
    return b"".join((head, *body_parts))


def _check_versions(header: dict[str, Any], what: str) -> None:
    python = str(header.get("python", "unknown"))
    writer_cloudpickle = str(header.get("cloudpickle", "unknown"))
    if python.split(".")[:2] != PYTHON_VERSION.split(".")[:2]:
        raise DeserializationError(
            f"The {what} was pickled by Python {python} (cloudpickle {writer_cloudpickle}), but this process runs "
            f"Python {PYTHON_VERSION} (cloudpickle {CLOUDPICKLE_VERSION}): run the worker and the notebook "
            f"with the same Python minor version"
        )
    if writer_cloudpickle.split(".")[0] != CLOUDPICKLE_VERSION.split(".")[0]:
        raise DeserializationError(
            f"The {what} was pickled by cloudpickle {writer_cloudpickle} (Python {python}), but this process has "
            f"cloudpickle {CLOUDPICKLE_VERSION} (Python {PYTHON_VERSION}): install the same cloudpickle major "
            f"version on both sides"
        )


def _check_signature(header: dict[str, Any], body: memoryview, secret_key: bytes | None, what: str) -> None:
    if secret_key is None:
        return
    signature = header.get("hmac")
    if not isinstance(signature, str):
        raise DeserializationError(
            f"The {what} is unsigned but NBQUEUE_SECRET_KEY is set: it was not written by a client with the same "
            f"key, so it is refused unread"
        )
    expected = hmac.new(secret_key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        raise DeserializationError(
            f"The {what} has an invalid signature: it was written with another NBQUEUE_SECRET_KEY or altered, "
            f"so it is refused unread"
        )


def _find_unpicklable(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Name the first part of a call that cloudpickle cannot pickle."""
    parts: list[tuple[str, Any]] = [(f"the function {getattr(func, '__qualname__', func)!r}", func)]
    parts += [(f"argument {index} ({type(arg).__name__})", arg) for index, arg in enumerate(args)]
    parts += [(f"keyword argument {name!r} ({type(arg).__name__})", arg) for name, arg in kwargs.items()]
    for label, part in parts:
        try:
            cloudpickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return label
    return "the call"


# Module names already classified as local (pickled by value) or not.
_module_is_local: dict[str, bool] = {}
_installed_top_levels: set[str] | None = None


def register_local_modules() -> None:
    """Pickle by value the imported modules that live beside the notebook and are not installed.

    A module counts as local when its file is below the current working folder (the notebook's folder in
    a kernel), outside every site-packages folder, and it belongs to no installed distribution. Such a
    module does not exist on a remote worker, so it travels inside the payload.
    """
    global _installed_top_levels
    if _module_is_local.keys() >= sys.modules.keys():
        return
    if _installed_top_levels is None:
        _installed_top_levels = set(environment.distributions_by_module())
    cwd = os.path.realpath(os.getcwd()) + os.sep
    prefixes = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    for name, module in list(sys.modules.items()):
        if name in _module_is_local:
            continue
        top = name.partition(".")[0]
        path = getattr(module, "__file__", None)
        local = (
            name != "__main__"
            and "." not in name
            and isinstance(path, str)
            and top not in _installed_top_levels
            and top not in sys.stdlib_module_names
            and os.path.realpath(path).startswith(cwd)
            and not os.path.realpath(path).startswith(prefixes)
            and "site-packages" not in path
        )
        _module_is_local[name] = local
        if local:
            cloudpickle.register_pickle_by_value(module)
