"""Optimizer, learning-rate schedule, loss criterion and EMA from timm's builders and the recipe."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["build_criterion", "build_ema", "build_optimizer", "build_scheduler"]


def _no_weight_decay(model: nn.Module) -> set[str]:
    """Names timm models exempt from weight decay (``pos_embed``, ``cls_token``...), prefixed for ``model``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def build_optimizer(model: nn.Module, config: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2``; norms, biases and the model's own exemptions get no weight decay."""
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    groups = param_groups_weight_decay(model, config["weight_decay"], no_weight_decay_list=_no_weight_decay(model))
    kwargs: dict[str, Any] = {}
    if config["opt_eps"] is not None:
        kwargs["eps"] = config["opt_eps"]
    return create_optimizer_v2(groups, opt=config["opt"], lr=lr, weight_decay=config["weight_decay"],
                               momentum=config["momentum"], **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any], updates_per_epoch: int) -> tuple[Any, int]:
    """``timm.scheduler.create_scheduler_v2`` stepped per update (smooth warm-up); returns it and the epochs."""
    from timm.scheduler import create_scheduler_v2

    return create_scheduler_v2(
        optimizer, sched=config["sched"], num_epochs=config["epochs"], decay_epochs=config["decay_epochs"],
        decay_milestones=list(config["decay_milestones"]), cooldown_epochs=config["cooldown_epochs"],
        decay_rate=config["decay_rate"], min_lr=config["min_lr"], warmup_lr=config["warmup_lr"],
        warmup_epochs=config["warmup_epochs"], step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )


def build_criterion(config: dict[str, Any], mixup: bool) -> nn.Module:
    """Soft-target CE with mixup/cutmix, label-smoothing CE, or plain CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup:
        return SoftTargetCrossEntropy()  # smoothing is already in mixup's targets
    if config["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(smoothing=config["smoothing"])
    return nn.CrossEntropyLoss()


def build_ema(model: nn.Module, config: dict[str, Any], device: torch.device) -> Any:
    """``timm.utils.ModelEmaV3`` of ``model`` when the recipe asks for it, else None."""
    if not config["model_ema"]:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=config["model_ema_decay"], device=device)
