"""Rebuilding a saved adaptive model: the architecture, then the stored plan, then the weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..adaptive import AdaptiveNet
from ..conversion.plan import Plan
from ..errors import AdnifyError, first_line
from .checkpoint import describe_file
from .storage import FORMAT_VERSION, STATISTICS_NAME, WEIGHTS_NAME, model_dir, read_config

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
        try:
            model = timm.create_model(source["model"], pretrained=False, **kwargs)
        except Exception as e:  # an unknown name or arguments this timm refuses
            raise AdnifyError(f"{directory}/adnify.json names a model this timm ({timm.__version__}) cannot build: "
                              f"{source['model']}({_kwargs_text(kwargs)}): {first_line(e)}") from e
    try:
        net = AdaptiveNet(model, Plan.from_dict(config["plan"]), source=source,
                          shared_norms=config.get("shared_norms", False))
    except ValueError as e:  # the plan names modules the model lacks: an edited file, or other model arguments
        what = source.get("model") or source.get("class") or "the given model"
        raise AdnifyError(f"the plan in {directory}/adnify.json does not fit {what}"
                          f"({_kwargs_text(source.get('kwargs', {}))}): {first_line(e)}; "
                          f"re-convert the model rather than editing adnify.json") from e
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise AdnifyError(f"{directory} has no {WEIGHTS_NAME}")
    try:
        missing, unexpected = load_model(net.model, str(weights), strict=False)
    except Exception as e:  # SafetensorError, or a header that parses but lies about the tensors
        if "size mismatch" in str(e) or "shape" in str(e).lower():
            raise AdnifyError(f"{weights} does not fit the model {directory}/adnify.json describes: "
                              f"{first_line(e)}") from e
        raise AdnifyError(f"{weights} is damaged: {describe_file(weights)}; re-save the model or restore the file "
                          f"({first_line(e)})") from e
    if missing or unexpected:
        missing, unexpected = sorted(missing), sorted(unexpected)
        raise AdnifyError(f"{weights} does not fit the model {directory}/adnify.json describes: "
                          f"{len(missing)} tensors missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    if config.get("pattern_statistics"):
        _load_statistics(net, directory, config["pattern_statistics"])
    net.eval()
    return net


def _load_statistics(net: AdaptiveNet, directory: Path, entry: dict[str, Any]) -> None:
    """Attach the per-pattern BatchNorm statistics ``adnify.json`` names, with a clear error for a bad file."""
    from safetensors.torch import load_file

    from ..statistics import PatternStatistics

    path = directory / str(entry.get("file", STATISTICS_NAME))
    if not path.is_file():
        raise AdnifyError(f"{directory}/adnify.json names per-pattern statistics in {path.name}, which is missing; "
                          f"restore the file, or delete the \"pattern_statistics\" entry to use the shared statistics")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # SafetensorError and friends
        raise AdnifyError(f"{path} is damaged: {describe_file(path)} ({first_line(e)})") from e
    info = {k: v for k, v in entry.items() if k != "file"}
    try:
        net.set_pattern_statistics(PatternStatistics.from_tensors(tensors, info))
    except ValueError as e:
        raise AdnifyError(f"{path} does not fit the model {directory}/adnify.json describes: {e}") from e


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
