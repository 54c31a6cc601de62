"""The adaptive model on disk: ``model.safetensors`` + ``adnify.json``; no pickle anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AdnifyError
from .files import atomic_directory

if TYPE_CHECKING:  # the model imports this module to save itself; this one never imports the model
    from ..adaptive import AdaptiveNet

CONFIG_NAME = "adnify.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def save(net: "AdaptiveNet", directory: str | os.PathLike, *, force: bool = False,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``net`` to ``directory`` atomically; an existing directory needs ``force``."""
    from safetensors.torch import save_model

    from .. import __version__

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
