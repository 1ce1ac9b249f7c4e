"""The notebook session a job is submitted from, used to tag jobs so a restarted kernel finds them again."""

from __future__ import annotations

import os
import sys

from nbqueue.settings import Settings

#: Prefix of the tag naming a notebook by its path.
NOTEBOOK_TAG_PREFIX = "notebook:"
#: Prefix of the tag naming a kernel by its id, when the notebook's path is unknown.
KERNEL_TAG_PREFIX = "kernel:"


def session_tag(settings: Settings) -> str | None:
    """Return the tag of the notebook this process runs, or None outside a Jupyter kernel.

    The notebook's path (``JPY_SESSION_NAME``) survives kernel restarts; without it the kernel id does
    too, since a restarted kernel keeps its id. ipykernel is only looked at when it is already imported.
    """
    if settings.notebook_session:
        return NOTEBOOK_TAG_PREFIX + settings.notebook_session
    kernel_app = sys.modules.get("ipykernel.kernelapp")
    if kernel_app is None:
        return None
    app = getattr(kernel_app, "IPKernelApp", None)
    if app is None or not app.initialized():
        return None
    connection_file = os.path.basename(app.instance().connection_file or "")
    kernel_id = connection_file.removeprefix("kernel-").removesuffix(".json")
    return KERNEL_TAG_PREFIX + kernel_id if kernel_id else None
