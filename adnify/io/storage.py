"""The adaptive model on disk: ``model.safetensors`` + ``adnify.json``; no pickle anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..conversion.plan import Plan
from ..errors import AdnifyError
from ..statistics import PatternStatistics
from .files import atomic_directory

CONFIG_NAME = "adnify.json"
WEIGHTS_NAME = "model.safetensors"
STATISTICS_NAME = "pattern_statistics.safetensors"
FORMAT_VERSION = 1


def save(model: nn.Module, plan: Plan, source: dict[str, Any], directory: str | os.PathLike, *,
         shared_norms: bool = False, force: bool = False, extra: dict[str, Any] | None = None,
         statistics: PatternStatistics | None = None) -> Path:
    """Write an adaptive model's parts to ``directory`` atomically; an existing directory needs ``force``.

    Args:
        model: the converted module (its weights go to ``model.safetensors``).
        plan, source, shared_norms: what rebuilding it needs (``adnify.json``).
        extra: more keys for ``adnify.json`` (a training run's results, say).
        statistics: each sub-network's BatchNorm statistics, written to ``pattern_statistics.safetensors``
            and named in ``adnify.json``.
    """
    from safetensors.torch import save_file, save_model

    from .. import __version__

    config = {
        "format_version": FORMAT_VERSION,
        "adnify_version": __version__,
        "source": source,
        "shared_norms": shared_norms,
        "plan": plan.to_dict(),
        **(extra or {}),
    }
    if statistics is not None:
        config["pattern_statistics"] = {"file": STATISTICS_NAME, **statistics.info}
    with atomic_directory(directory, force=force) as tmp:
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "adnify": __version__})
        if statistics is not None:
            save_file(statistics.to_tensors(), str(tmp / STATISTICS_NAME), metadata={"format": "pt"})
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
