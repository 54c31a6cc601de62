"""Which modules are normalization layers, and how many channels they normalize."""

from __future__ import annotations

import re

from torch import nn

# timm's FrozenBatchNorm2d/EvoNorm/FilterResponseNorm/RmsNorm/SimpleNorm are not subclasses
# of torch's norm bases, so classes are also recognised by name.
_NORM_NAME = re.compile(r"(Batch|Layer|Group|Rms|RMS|Instance|Simple|Evo|FilterResponse|Frozen\w*)Norm")
_NOT_NORM_NAME = re.compile(r"(Head|Mlp|Conv|Block|Attention|Stage)")
_TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


def is_norm(module: nn.Module | None) -> bool:
    """True for every normalization layer class timm and torch use (incl. fused norm+act)."""
    if module is None:
        return False
    if isinstance(module, _TORCH_NORMS):
        return True
    name = type(module).__name__
    return bool(_NORM_NAME.search(name)) and not _NOT_NORM_NAME.search(name)


def norm_channels(module: nn.Module) -> int | None:
    """Number of channels a norm layer normalizes, or ``None`` for other modules."""
    if not is_norm(module):
        return None
    for attr in ("num_features", "num_channels", "dim", "channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1]) if not isinstance(shape, int) else shape
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.dim() == 1 else None
