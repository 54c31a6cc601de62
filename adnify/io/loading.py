"""Rebuilding a saved adaptive model: the architecture, then the stored plan, then the weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..adaptive import AdaptiveNet
from ..conversion.plan import Plan
from ..errors import AdnifyError
from .checkpoint import describe_file
from .storage import FORMAT_VERSION, WEIGHTS_NAME, model_dir, read_config

__all__ = ["load"]


def load(directory: str | os.PathLike, *, model: nn.Module | None = None,
         model_kwargs: dict[str, Any] | None = None) -> AdaptiveNet:
    """Rebuild a saved adaptive model offline: create the architecture, re-apply the plan, load weights.

    Args:
        directory: what :meth:`AdaptiveNet.save` wrote (or a training run directory).
        model: the un-converted module, for models that are not timm models.
        model_kwargs: ``timm.create_model`` arguments that override the saved ones (e.g. ``drop_path_rate``).
    """
    from safetensors.torch import load_model

    directory = model_dir(directory) or Path(directory)
    config = read_config(directory)
    if config.get("format_version", 1) > FORMAT_VERSION:
        raise AdnifyError(f"{directory} was written by a newer adnify ({config.get('adnify_version')}): upgrade adnify")
    source = config["source"]
    if model is None:
        if not source.get("model"):
            raise AdnifyError(f"{directory} holds a non-timm model ({source.get('class')}): pass model=<module> to load()")
        import timm

        kwargs = {**source.get("kwargs", {}), **(model_kwargs or {})}
        model = timm.create_model(source["model"], pretrained=False, **kwargs)
    net = AdaptiveNet(model, Plan.from_dict(config["plan"]), source=source, shared_norms=config.get("shared_norms", False))
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise AdnifyError(f"{directory} has no {WEIGHTS_NAME}")
    try:
        missing, unexpected = load_model(net.model, str(weights), strict=False)
    except Exception as e:  # SafetensorError, or a header that parses but lies about the tensors
        raise AdnifyError(f"{weights} is damaged: {describe_file(weights)}; re-save the model or restore the file "
                          f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from e
    if missing or unexpected:
        raise AdnifyError(f"{weights} does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    net.eval()
    return net
