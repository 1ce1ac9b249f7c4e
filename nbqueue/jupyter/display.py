"""The mimebundle of a displayed Job: a live widget, with HTML and text of the state it was displayed in."""

from __future__ import annotations

import importlib.util
from typing import Any

from nbqueue.jupyter.refresher import in_kernel

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def job_mimebundle(job: Any, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """Return the widget view, HTML summary and text of ``job``, filtered by ``include`` and ``exclude``.

    The widget view is there only in an IPython kernel with ipywidgets installed. The HTML and text are
    always there, so a saved notebook, nbviewer or a terminal shows the state at the time of display.
    """
    from nbqueue.jupyter.html import job_html, job_text

    bundle: dict[str, Any] = {}
    if _wants(WIDGET_VIEW_MIME, include, exclude) and in_kernel() and importlib.util.find_spec("ipywidgets"):
        from nbqueue.jupyter.widgets import JobWidget

        widget_bundle = JobWidget(job)._repr_mimebundle_()
        bundle[WIDGET_VIEW_MIME] = widget_bundle[WIDGET_VIEW_MIME]
    if _wants("text/html", include, exclude):
        bundle["text/html"] = job_html(job)
    bundle["text/plain"] = job_text(job)
    return bundle


def _wants(mime: str, include: Any, exclude: Any) -> bool:
    if include and mime not in include:
        return False
    return not (exclude and mime in exclude)
