"""Top-1 accuracy of several sub-networks in one pass over the validation data.

A small private helper for the per-epoch evaluation and ``adnify demo``. It shards the data
over the processes and gathers predictions with ``gather_for_metrics`` (duplicates of the last
uneven batch dropped), so every process returns the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

Predict = Callable[[Tensor], Tensor]


@torch.no_grad()
def evaluate(
    models: Mapping[str, Predict],
    loader: Any,
    accelerator: Any,
    *,
    teacher: Predict | None = None,
) -> dict[str, dict[str, float | None]]:
    """Accuracy of every named model on ``loader`` (labels ``-1`` mean unlabelled).

    Args:
        models: name -> function from images to logits, e.g. ``{"FFFF": lambda x: net(x, skip="FFFF")}``.
        loader: a prepared evaluation DataLoader of ``(images, labels)``.
        accelerator: the ``Accelerator`` (``autocast``, ``gather_for_metrics``).
        teacher: optional reference model; adds ``agreement``, the % of images where a model's
            top-1 class equals the teacher's (useful without labels).

    Returns:
        ``{name: {"acc1": % or None without labels, "agreement": % or None}}``.
    """
    correct = {name: 0 for name in models}
    agree = {name: 0 for name in models}
    labelled = seen = 0
    # Data-loader iterators draw seeds from the global RNG: keep training's random streams untouched.
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for images, labels in loader:
            with accelerator.autocast():
                preds = {name: fn(images).argmax(-1) for name, fn in models.items()}
                ref = teacher(images).argmax(-1) if teacher is not None else labels
            preds, labels, ref = accelerator.gather_for_metrics((preds, labels, ref))
            mask = labels >= 0
            labelled += int(mask.sum())
            seen += labels.numel()
            for name, pred in preds.items():
                correct[name] += int((pred[mask] == labels[mask]).sum())
                agree[name] += int((pred == ref).sum())
    return {
        name: {
            "acc1": 100.0 * correct[name] / labelled if labelled else None,
            "agreement": 100.0 * agree[name] / seen if teacher is not None and seen else None,
        }
        for name in models
    }
