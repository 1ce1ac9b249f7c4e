"""The JupyterLab side panel: a Jupyter server extension with REST handlers, and the prebuilt front end.

Only this subpackage imports jupyter_server. The front end's source is in ``extension/``;
``scripts/build-extension`` builds it into ``prebuilt/`` here, and installing the package copies that
folder to ``share/jupyter/labextensions/nbqueue``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Folder of the built front end (package.json, static/, schemas/), present once it has been built.
PREBUILT_DIR = Path(__file__).parent / "prebuilt"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbqueue.labextension"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Tell ``jupyter labextension develop`` where the built front end is."""
    return [{"src": "prebuilt", "dest": "nbqueue"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Add the ``/nbqueue/api/`` handlers to the running Jupyter server."""
    from nbqueue.labextension.handlers import handlers

    web_app = server_app.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    server_app.log.info("nbqueue: side panel API registered at %snbqueue/api/", web_app.settings["base_url"])
