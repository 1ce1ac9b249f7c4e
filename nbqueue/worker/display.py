"""``IPython.display.display`` inside jobs: displayed objects go to the job's output stream.

Without a kernel, IPython's ``display`` prints a plain repr. The work horse replaces it with
:func:`display`, which stores the object's rich representations (HTML, PNG, ...) so that the notebook that
submitted the job shows them. The replacement happens when IPython's display module is imported, so a
worker without IPython installed never imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

from nbqueue.worker.capture import OutputCapture, mimebundle

_current: OutputCapture | None = None
_MODULES = ("IPython.core.display_functions", "IPython.display", "IPython.core.display")


def display(*objs: Any, raw: bool = False, metadata: dict[str, Any] | None = None, **_ignored: Any) -> None:
    """Store each object's mimebundle in the running job's output; print them when no job runs."""
    capture = _current
    if capture is None:
        print(*objs)
        return
    for obj in objs:
        if raw and isinstance(obj, dict):
            capture.write_display(obj, metadata)
        else:
            data, object_metadata = mimebundle(obj)
            capture.write_display(data, {**object_metadata, **(metadata or {})})


def set_capture(capture: OutputCapture | None) -> None:
    """Send displayed objects to ``capture`` (None: print them)."""
    global _current
    _current = capture


def patch_loaded_modules() -> None:
    """Replace ``display`` in IPython's display modules that are already imported."""
    for name in _MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "display", None) is not display:
            module.display = display


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds IPython's display modules with the other finders and patches them right after they load."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader)
                return spec
            if spec is not None:
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        if hasattr(module, "display"):
            module.display = display


def install() -> None:
    """Patch IPython's ``display`` now if IPython is loaded, and on import otherwise."""
    patch_loaded_modules()
    if not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
