"""Capturing a job's stdout, stderr, warnings and displayed objects into its output stream in Redis.

Entries of the stream ``nbqueue:output:<job id>`` are flat maps:

- ``kind=stream``, ``name`` (``stdout`` or ``stderr``), ``text``;
- ``kind=display``, ``data`` (a JSON mimebundle: mime type to text, binary data base64-encoded, as in
  Jupyter's message protocol), ``metadata`` (JSON).

A background thread writes buffered text every ``FLUSH_INTERVAL_S`` so that output appears while the job
runs; a job that writes nothing costs no Redis command. The stream keeps about the last ``MAX_ENTRIES``
entries and each entry at most ``MAX_TEXT_CHARS`` characters.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import sys
import threading
from typing import Any, TextIO

import redis

from nbqueue import keys

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
MAX_ENTRIES = 2000
MAX_TEXT_CHARS = 64 * 1024

# Rich representations looked up on displayed objects, in the order Jupyter front ends prefer them.
_REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
)


class OutputCapture:
    """Buffers the running job's output and appends it to that job's output stream.

    One instance serves a work horse for its lifetime; :meth:`begin` and :meth:`end` bracket each job.
    """

    def __init__(self, connection: redis.Redis):
        self._connection = connection
        self._key: str | None = None
        self._wrote = False
        self._lock = threading.Lock()
        self._pending: list[tuple[str, dict[str, str]]] = []
        self._wakeup = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbqueue-output", daemon=True)
        self._thread.start()

    def begin(self, job_id: str) -> None:
        self._key = keys.output(job_id)
        self._wrote = False

    def end(self) -> bool:
        """Write what the job left in the buffer and return whether the job wrote any output.

        Later writes are dropped until the next :meth:`begin`.
        """
        self.flush()
        self._key = None
        return self._wrote

    def write_stream(self, name: str, text: str) -> None:
        key = self._key
        if not text or key is None:
            return
        self._wrote = True
        with self._lock:
            last_key, last = self._pending[-1] if self._pending else (None, None)
            if (
                last is not None and last_key == key and last["kind"] == "stream" and last["name"] == name
                and len(last["text"]) < MAX_TEXT_CHARS
            ):
                last["text"] += text
            else:
                self._pending.append((key, {"kind": "stream", "name": name, "text": text}))

    def write_display(self, data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        key = self._key
        if key is None:
            return
        entry = {"kind": "display", "data": json.dumps(data), "metadata": json.dumps(metadata or {})}
        self._wrote = True
        with self._lock:
            self._pending.append((key, entry))
        self._wakeup.set()

    def flush(self) -> None:
        with self._lock:
            entries, self._pending = self._pending, []
        if not entries:
            return
        pipe = self._connection.pipeline(transaction=False)
        for key, entry in entries:
            if entry["kind"] == "stream":
                text = entry["text"]
                for start in range(0, len(text), MAX_TEXT_CHARS):
                    chunk = {**entry, "text": text[start : start + MAX_TEXT_CHARS]}
                    pipe.xadd(key, chunk, maxlen=MAX_ENTRIES, approximate=True)
            else:
                pipe.xadd(key, entry, maxlen=MAX_ENTRIES, approximate=True)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("Lost %d output entries of a job: %s", len(entries), exc)

    def _run(self) -> None:
        while True:
            self._wakeup.wait(FLUSH_INTERVAL_S)
            self._wakeup.clear()
            self.flush()


class CapturedStream(io.TextIOBase):
    """A text stream that sends what is written to an :class:`OutputCapture`, and optionally to another stream."""

    def __init__(self, capture: OutputCapture, name: str, tee: TextIO | None):
        self._capture = capture
        self.name = name
        self._tee = tee

    def write(self, text: str) -> int:
        self._capture.write_stream(self.name, text)
        if self._tee is not None:
            try:
                self._tee.write(text)
            except (OSError, ValueError):
                pass
        return len(text)

    def flush(self) -> None:
        if self._tee is not None:
            try:
                self._tee.flush()
            except (OSError, ValueError):
                pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"


def mimebundle(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return Jupyter's (data, metadata) for ``obj`` from its ``_repr_*_`` methods, without IPython."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            bundle = method(include=None, exclude=None)
        except Exception:
            bundle = None
        if isinstance(bundle, tuple):
            bundle, metadata = bundle[0], dict(bundle[1] or {})
        if isinstance(bundle, dict):
            data.update(bundle)
    for name, mime in _REPR_METHODS:
        repr_method = getattr(obj, name, None)
        if mime in data or not callable(repr_method) or isinstance(obj, type):
            continue
        try:
            value = repr_method()
        except Exception:
            continue
        if isinstance(value, tuple):
            value, metadata[mime] = value
        if value is not None:
            data[mime] = value
    if "image/png" not in data and _is_matplotlib_figure(obj):
        buffer = io.BytesIO()
        obj.savefig(buffer, format="png", bbox_inches="tight")
        data["image/png"] = buffer.getvalue()
    for mime, value in list(data.items()):
        if isinstance(value, bytes):
            data[mime] = base64.b64encode(value).decode()
        elif mime.endswith("json") or isinstance(value, str):
            continue
        else:
            data[mime] = str(value)
    data["text/plain"] = _safe_repr(obj)
    return data, metadata


def _is_matplotlib_figure(obj: Any) -> bool:
    module = sys.modules.get("matplotlib.figure")
    return module is not None and isinstance(obj, module.Figure)


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception as exc:
        return f"<{type(obj).__name__}: repr failed: {exc}>"
