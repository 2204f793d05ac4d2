"""Deferred imports of the heavy compute modules (torch, JAX), so that loading the code location
— which every Dagster step and check subprocess does — stays fast and small: the module is
imported on first attribute access, i.e. inside the asset body that needs it.

A plain proxy object, not a module in ``sys.modules`` (``importlib.util.LazyLoader`` modules get
loaded by anything that walks ``sys.modules``, e.g. ``inspect.getmodule`` inside torch's own
import, and then import in the middle of another import)."""

from __future__ import annotations

import importlib
from types import ModuleType


class DeferredModule:
    """Stands for module ``name``; the first attribute lookup imports it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


def lazy_module(name: str) -> DeferredModule:
    return DeferredModule(name)
