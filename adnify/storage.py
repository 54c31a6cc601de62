"""The adaptive model on disk: ``model.safetensors`` + ``adnify.json``; no pickle anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from .adaptive import AdaptiveNet
from .errors import AdnifyError
from .files import atomic_directory
from .plan import Plan

CONFIG_NAME = "adnify.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def save(net: AdaptiveNet, directory: str | os.PathLike, *, force: bool = False,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``net`` to ``directory`` atomically; an existing directory needs ``force``."""
    from safetensors.torch import save_model

    from . import __version__

    config = {
        "format_version": FORMAT_VERSION,
        "adnify_version": __version__,
        "source": net.source,
        "shared_norms": net.shared_norms,
        "plan": net.plan.to_dict(),
        **(extra or {}),
    }
    with atomic_directory(directory, force=force) as tmp:
        save_model(net.model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "adnify": __version__})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return Path(directory)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``adnify.json`` of a saved model, with a clear error for anything else."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AdnifyError(f"{directory} is not an adnify model directory (no {CONFIG_NAME})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdnifyError(f"{path} is not valid JSON: {e}") from e


def model_dir(path: str | os.PathLike) -> Path | None:
    """The directory holding ``adnify.json``: ``path`` itself or a training run's ``final``; else None."""
    for directory in (Path(path), Path(path) / "final"):
        if (directory / CONFIG_NAME).is_file():
            return directory
    return None


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
    missing, unexpected = load_model(net.model, str(weights), strict=False)
    if missing or unexpected:
        raise AdnifyError(f"{weights} does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    net.eval()
    return net
