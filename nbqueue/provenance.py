"""Job provenance: the path of the notebook, the id of the cell and a hash of the cell's source.

Jobs enqueued from a Jupyter kernel get these job hash fields:

- ``notebook_path``: ``JPY_SESSION_NAME``, which Jupyter Server 2 sets in its kernels' environment;
- ``cell_id``: the ``cellId`` that JupyterLab and Notebook 7 send in an execute request's metadata;
- ``cell_source_hash``: ``sha256:`` and the hex SHA-256 digest of the executing cell's UTF-8 source.

A field is left out when its value is unknown (a front end that sends no cell id, or code that runs
outside a cell). ipykernel is only looked at when it is already imported, so the core never imports it.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

from nbqueue.settings import Settings

#: Job hash fields that record provenance, in the order they are shown.
PROVENANCE_FIELDS = ("notebook_path", "cell_id", "cell_source_hash")


def collect_provenance(settings: Settings) -> dict[str, str]:
    """Return the provenance fields of a job enqueued now, from this process."""
    fields: dict[str, str] = {}
    if settings.notebook_session:
        fields["notebook_path"] = settings.notebook_session
    request = _execute_request()
    if request is None:
        return fields
    metadata = request.get("metadata") or {}
    cell_id = metadata.get("cellId") if isinstance(metadata, dict) else None
    if isinstance(cell_id, str) and cell_id:
        fields["cell_id"] = cell_id
    content = request.get("content") or {}
    code = content.get("code") if isinstance(content, dict) else None
    if isinstance(code, str):
        fields["cell_source_hash"] = source_hash(code)
    return fields


def source_hash(source: str) -> str:
    """Return the hash recorded for a cell's source: ``sha256:`` and the hex digest of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def _execute_request() -> dict[str, Any] | None:
    """Return the execute request the kernel is running, or None outside a kernel or outside a cell."""
    kernel_app = sys.modules.get("ipykernel.kernelapp")
    if kernel_app is None:
        return None
    app_class = getattr(kernel_app, "IPKernelApp", None)
    if app_class is None or not app_class.initialized():
        return None
    kernel = getattr(app_class.instance(), "kernel", None)
    get_parent = getattr(kernel, "get_parent", None)
    if get_parent is None:
        return None
    try:
        parent = get_parent("shell")
    except (LookupError, AttributeError):
        return None
    if not isinstance(parent, dict) or parent.get("header", {}).get("msg_type") != "execute_request":
        return None
    return parent
