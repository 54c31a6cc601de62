"""A torch.fx tracer for timm models.

Seeded with timm's registry of modules and functions that must not be traced (window
partitions, position embeddings, "same" padding...), and keeping every module that reads
``self.training`` (DropPath, dropout, DropBlock) as a leaf so the graph does not bake it in.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..errors import AdnifyError, first_line

try:  # timm >= 0.9 keeps the registry here
    from timm.layers._fx import get_notrace_functions, get_notrace_modules
except ImportError:  # pragma: no cover - older timm
    from timm.models.fx_features import get_notrace_functions, get_notrace_modules  # type: ignore


def _training_sensitive_types() -> tuple[type, ...]:
    from timm.layers import DropBlock2d, DropPath

    return (DropPath, DropBlock2d, nn.modules.dropout._DropoutNd)


class TimmTracer(fx.Tracer):
    """Tracer that treats timm's notrace modules and training-sensitive layers as leaves."""

    def __init__(self, extra_leaf_types: tuple[type, ...] = ()) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self.leaf_types = tuple(get_notrace_modules()) + _training_sensitive_types() + tuple(extra_leaf_types)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, tracer: fx.Tracer | None = None) -> fx.Graph:
    """Trace ``model`` into an FX graph whose nodes carry ``meta['nn_module_stack']``."""
    tracer = tracer or TimmTracer()
    try:
        return tracer.trace(model)
    except Exception as e:  # FX raises many types for untraceable code
        name = type(model).__name__
        raise AdnifyError(
            f"torch.fx could not trace {name}: {first_line(e, with_type=True)} "
            f"(Hint: register the offending module with timm.layers.register_notrace_module)"
        ) from e
