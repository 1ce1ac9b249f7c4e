"""Enabling nbqueue's Jupyter server extension and side panel for a Jupyter server that a test starts.

The tests run against this source tree, also when the package is installed in editable mode, where the
built side panel and the server config file are not copied to ``share/jupyter`` and ``etc/jupyter``. So
each test server gets its own config folder with a copy of the config file, and its own data folder with
a link to the built panel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The built side panel; scripts/build-extension creates it.
PREBUILT_PANEL = REPO / "nbqueue" / "labextension" / "prebuilt"
SERVER_CONFIG = REPO / "jupyter-config" / "jupyter_server_config.d" / "nbqueue.json"


def enable_extension(config_dir: Path, data_dir: Path) -> bool:
    """Enable the server extension in ``config_dir`` and link the built panel into ``data_dir``.

    Returns whether the panel has been built; without a build, only the REST handlers are available.
    """
    conf_d = config_dir / "jupyter_server_config.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    shutil.copy(SERVER_CONFIG, conf_d / SERVER_CONFIG.name)
    if not (PREBUILT_PANEL / "package.json").exists():
        return False
    labextensions = data_dir / "labextensions"
    labextensions.mkdir(parents=True, exist_ok=True)
    link = labextensions / "nbqueue"
    if not link.exists():
        link.symlink_to(PREBUILT_PANEL, target_is_directory=True)
    return True
