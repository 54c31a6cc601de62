"""Re-estimate the BatchNorm statistics of the skip-aware norm copies on the user's images.

A skipped sub-path changes the distribution every later layer sees; the copies start with the
original statistics, which no longer fit. Running the base-net over unlabelled images with only the
copies in train mode (a cumulative average, no gradients) re-estimates them: the cheapest large
lever of label-free fine-tuning (docs/finetune.md). The super-net never runs a copy, so it is untouched.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..adaptive import AdaptiveNet
from ..io.images import BROKEN

__all__ = ["calibrate_skip_norms", "reestimate_batchnorms", "skip_norm_batchnorms"]


def skip_norm_batchnorms(net: AdaptiveNet) -> list[nn.modules.batchnorm._BatchNorm]:
    """The skip-aware norm copies that are BatchNorm layers (the ones with running statistics)."""
    return [norm.skip_copy for norms in net._norms for norm in norms
            if isinstance(norm.skip_copy, nn.modules.batchnorm._BatchNorm) and norm.skip_copy.track_running_stats]


def calibrate_skip_norms(net: AdaptiveNet, batches: Iterable[Any], *, max_images: int,
                         device: torch.device | str = "cpu", on_batch: Any = None,
                         patterns: Sequence[str] = ("base",)) -> int:
    """Replace the copies' running statistics by their average over up to ``max_images`` images.

    Args:
        net: the adaptive net; its training mode is restored afterwards.
        batches: ``(images, labels)`` batches, with evaluation transforms; rows labelled
            :data:`~adnify.io.images.BROKEN` (undecodable images) are left out.
        max_images: how many images to average over.
        device: where the images go.
        on_batch: called with the number of images after each batch (a progress bar).
        patterns: the sub-networks the copies are estimated under, one per batch in turn (default
            the base-net): e.g. every pattern, so the statistics fit the mixture a deployed network meets.

    Returns:
        The number of images used. A batch of one image is dropped: BatchNorm cannot take statistics
        of a single value per channel (the last stage of a small input), and one image adds little.
    """
    return reestimate_batchnorms(net, skip_norm_batchnorms(net), batches, max_images=max_images, device=device,
                                 on_batch=on_batch, patterns=patterns)


def reestimate_batchnorms(net: AdaptiveNet, norms: Sequence[nn.modules.batchnorm._BatchNorm], batches: Iterable[Any],
                          *, max_images: int, device: torch.device | str = "cpu", on_batch: Any = None,
                          patterns: Sequence[str] = ("base",)) -> int:
    """Replace the running statistics of ``norms`` (any of ``net``'s BatchNorms) by their cumulative
    average over up to ``max_images`` images, as :func:`calibrate_skip_norms` does for the copies;
    the other layers stay in evaluation mode and nothing gets a gradient."""
    if not norms or max_images <= 0:
        return 0
    was_training = net.training
    momenta = [m.momentum for m in norms]
    seen = 0
    try:
        net.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        with torch.no_grad():
            for i, (images, labels) in enumerate(batches):
                images = images[labels != BROKEN][: max_images - seen].to(device)
                if images.shape[0] < 2:
                    continue
                net(images, skip=patterns[i % len(patterns)])
                seen += images.shape[0]
                if on_batch is not None:
                    on_batch(images.shape[0])
                if seen >= max_images:
                    break
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.train(was_training)
    return seen
