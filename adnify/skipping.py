"""The run-time mechanics of skipping: skippable blocks and skip-aware norm pairs.

Both are made in place by swapping the instance's class for a subclass (as
``torch.nn.utils.parametrize`` does), so parameter names stay those of the original model:
an original checkpoint loads into the super-net as is, and the only new tensors are the
norms' second copies under ``<norm>.skip_copy``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

_SUBCLASSES: dict[tuple[type, type], type] = {}


class SkippableBlock:
    """Mixin: ``forward`` returns its first input unchanged while ``adnify_skip`` is set.

    The last block of a stage also writes its output into ``adnify_sink`` (the stage
    outputs ``h^s`` that self-distillation compares).
    """

    adnify_skip: bool = False
    adnify_sink: list | None = None
    adnify_stage: int = -1

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        flag = self.adnify_skip
        if isinstance(flag, torch.Tensor):  # a run-time flag (the dynamic-depth export): a real branch
            run = super().forward  # type: ignore[misc]
            out = torch.cond(flag, _passed_through, lambda t: run(t, *args, **kwargs), (x,))
        else:
            out = x if flag else super().forward(x, *args, **kwargs)  # type: ignore[misc]
        if self.adnify_sink is not None:
            self.adnify_sink[self.adnify_stage] = out
        return out


class SkipAwareNorm:
    """Mixin: a norm layer with a twin, ``skip_copy``, used while its stage is skipped."""

    adnify_skipped: bool = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flag = self.adnify_skipped
        if isinstance(flag, torch.Tensor):
            own, twin = super().forward, self.skip_copy  # type: ignore[misc, attr-defined]
            x, rest = args[0], args[1:]
            return torch.cond(flag, lambda t: twin(t, *rest, **kwargs), lambda t: own(t, *rest, **kwargs), (x,))
        if flag:
            return self.skip_copy(*args, **kwargs)  # type: ignore[attr-defined]
        return super().forward(*args, **kwargs)  # type: ignore[misc]


def _passed_through(x: Any) -> Any:
    # torch.cond's branches may not return their input itself: the skipped branch is one copy
    return x.clone()


def _swap_class(module: nn.Module, mixin: type) -> None:
    cls = type(module)
    key = (mixin, cls)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {"adnify_base": cls})
    module.__class__ = _SUBCLASSES[key]


def make_skippable(block: nn.Module) -> None:
    """Let ``block`` be skipped by a flag flip."""
    if not isinstance(block, SkippableBlock):
        _swap_class(block, SkippableBlock)
        block.adnify_skip = False


def make_skip_aware(norm: nn.Module) -> None:
    """Give ``norm`` a twin initialised from its current values and running statistics."""
    if not isinstance(norm, SkipAwareNorm):
        twin = copy.deepcopy(norm)
        _swap_class(norm, SkipAwareNorm)
        norm.add_module("skip_copy", twin)
        norm.adnify_skipped = False


def restore(module: nn.Module) -> nn.Module:
    """Turn a converted module back into its original class (the twin, if any, is dropped)."""
    base = getattr(type(module), "adnify_base", None)
    if base is not None:
        if isinstance(module, SkipAwareNorm):
            del module.skip_copy
            del module.adnify_skipped
        else:
            for attr in ("adnify_skip", "adnify_sink", "adnify_stage"):
                module.__dict__.pop(attr, None)
        module.__class__ = base
    return module
