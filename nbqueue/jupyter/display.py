"""The mimebundle of a displayed Job."""

from __future__ import annotations

from typing import Any


def job_mimebundle(job: Any, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """Return the HTML summary and text of ``job``."""
    from nbqueue.jupyter.html import job_html, job_text

    return {"text/plain": job_text(job), "text/html": job_html(job)}
