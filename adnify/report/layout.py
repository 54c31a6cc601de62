"""The memory layout and forward batch that evaluation and latency runs use on a device.

Measured with ``python benchmarks/report_speed.py --part layout`` (one thread of a busy 2-core CPU;
all patterns through the pattern tree, 32 images, CPU time), in sub-network images/s::

    images enter as          NCHW, 32   NCHW, 16 a pass   channels-last, 32   channels-last, 16 a pass
    tf_efficientnet_lite0    208        292               326                 399
    resnet50                 48         58                57                  68
    vit_small_patch16_224    27         30                28                  31

So a convolutional network (every adaptive stage's channels in dim 1) gets its images in channels-last
on every device, where PyTorch's convolutions then run channels-last too (the weights keep their
layout: converting them measured no faster, and a training run's weights stay as they are), and on
the CPU a batch is cut into forward passes of at most :data:`CPU_FORWARD_BATCH` images, which keeps
their activations in the caches (4 per pass measured slower, through the pattern tree's overhead).
Results differ from the NCHW batch only by float rounding. The choice is a fixed, tested rule rather
than a measurement per run, so a run's figures repeat exactly on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..adaptive import AdaptiveNet

__all__ = ["CPU_FORWARD_BATCH", "Layout", "fastest_layout", "is_convnet"]

CPU_FORWARD_BATCH = 16
_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


@dataclass(frozen=True)
class Layout:
    """How images enter the network.

    Attributes:
        memory_format: ``"channels_last"`` or ``"contiguous"`` (NCHW) for 4-D image batches.
        forward_batch: images per forward pass (a longer batch is split); None = the batch as given.
    """

    memory_format: str = "contiguous"
    forward_batch: int | None = None

    def __post_init__(self) -> None:
        if self.memory_format not in _FORMATS:
            raise ValueError(f"memory_format must be one of {', '.join(_FORMATS)}, not {self.memory_format!r}")
        if self.forward_batch is not None and self.forward_batch < 1:
            raise ValueError(f"forward_batch must be at least 1, not {self.forward_batch}")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in this layout (4-D batches only; anything else as is)."""
        if images.dim() != 4:
            return images
        return images.contiguous(memory_format=_FORMATS[self.memory_format])

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``images`` cut into forward passes of at most ``forward_batch`` images."""
        if self.forward_batch is None or len(images) <= self.forward_batch:
            return (images,)
        return images.split(self.forward_batch)

    def describe(self) -> str:
        per = "the whole batch" if self.forward_batch is None else f"at most {self.forward_batch} images"
        return f"{self.memory_format}, {per} per forward pass"


def is_convnet(net: "AdaptiveNet") -> bool:
    """Whether every adaptive stage of ``net`` outputs NCHW feature maps (a ViT's or Swin's: tokens)."""
    return all(stage.channel_dim == 1 for stage in net.plan.stages)


def fastest_layout(net: "AdaptiveNet", device: torch.device | str) -> Layout:
    """The tested default layout of ``net`` on ``device`` (see the module docstring)."""
    device = torch.device(device)
    fmt = "channels_last" if is_convnet(net) else "contiguous"
    return Layout(fmt, CPU_FORWARD_BATCH if device.type == "cpu" else None)
