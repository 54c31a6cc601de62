"""What a command can start from: a saved adaptive model, a training run, or a timm name."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from ..adaptive import AdaptiveNet
from ..errors import AdnifyError, UnknownModelError

__all__ = ["open_source"]


def is_model_dir(path: str | Path) -> bool:
    """A directory written by ``AdaptiveNet.save`` or a training run holding one."""
    from .storage import model_dir

    return model_dir(path) is not None


def require_name(source: str) -> None:
    """Raise unless ``source``, which is no model directory, reads as a model name rather than a path."""
    if Path(source).exists() or source.startswith((".", "/", "~")):
        raise AdnifyError(f"{source} is neither an adnify model directory nor a training run (no adnify.json)")


def open_source(source: str, **convert_options: Any) -> AdaptiveNet:
    """Load a saved model or run directory, or convert a timm model on the fly."""
    from .. import convert, load

    if is_model_dir(source):
        return load(source)
    require_name(source)
    with named_source(source):
        return convert(source, **convert_options)


@contextlib.contextmanager
def named_source(source: str) -> Iterator[None]:
    """Say, when ``source`` is no timm model, that it is no directory here either (a typo'd path)."""
    try:
        yield
    except UnknownModelError as e:
        raise UnknownModelError(f"{e}; no model directory named {source!r} exists here either") from None
