"""Module paths from before the package was grouped into folders (0.1.0) keep importing.

``import adnify.costs`` or ``from adnify.data import load_image_data`` in user code resolve to the
new modules (``adnify.report.costs``, ``adnify.io.data``), the very same module objects, imported
only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

MOVED = {
    "tracing": "conversion.tracing", "residuals": "conversion.residuals", "analysis": "conversion.analysis",
    "plan": "conversion.plan", "norms": "conversion.norms",
    "storage": "io.storage", "checkpoint": "io.checkpoint", "files": "io.files", "hub": "io.hub",
    "models": "io.models", "sources": "io.sources", "data": "io.data",
    "recipes": "train.recipes", "losses": "train.losses",
    "costs": "report.costs", "attention_flops": "report.attention_flops", "latency": "report.latency",
    "evaluate": "report.evaluate", "report_output": "report.output",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(self.target)
        self.saved = {k: module.__dict__[k] for k in ("__name__", "__spec__", "__loader__", "__package__")}
        return module

    def exec_module(self, module: Any) -> None:
        module.__dict__.update(self.saved)  # already executed under its new name: keep that name


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds ``adnify.<old>`` and hands back ``adnify.<new>``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.partition(".")
        if package != "adnify" or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"adnify.{MOVED[name]}"))


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
