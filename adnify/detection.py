"""Adaptive backbones inside torchvision detectors: an FPN over a features_only adaptive net.

>>> net = adnify.convert("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
>>> detector = torchvision.models.detection.FasterRCNN(fpn_backbone(net), num_classes=91)
>>> set_depth(detector, "TTTT")          # the base-net backbone from now on, nothing rebuilt
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .adaptive import AdaptiveNet, Pattern
from .errors import AdnifyError

__all__ = ["AdaptiveFPN", "backbone_kd", "fpn_backbone", "set_depth"]


class AdaptiveFPN(nn.Module):
    """An adaptive backbone followed by torchvision's ``FeaturePyramidNetwork``.

    The interface of torchvision's ``BackboneWithFPN``: ``forward(images)`` returns an ordered
    dict of feature maps (``"0"``, ``"1"``, ..., ``"pool"``), all with ``out_channels`` channels.
    ``body`` is the :class:`~adnify.AdaptiveNet`; its current pattern is the depth that runs.
    """

    def __init__(self, net: AdaptiveNet, out_channels: int = 256, extra_blocks: nn.Module | None = None) -> None:
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        super().__init__()
        if not net.features_only:
            raise AdnifyError(f"fpn_backbone needs a features_only backbone; {type(net.model).__name__} is a "
                              "classifier: convert it with features_only=True (adnify convert --features-only)")
        self.body = net
        self.fpn = FeaturePyramidNetwork(list(net.feature_info.channels()), out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks)
        self.out_channels = out_channels
        self.last_features: list[torch.Tensor] = []  # the backbone's maps of the last call (for distillation)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        feats = list(feats.values()) if isinstance(feats, dict) else list(feats)
        self.last_features = feats
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def fpn_backbone(net: AdaptiveNet, *, out_channels: int = 256, extra_blocks: nn.Module | None = None) -> AdaptiveFPN:
    """Wrap a features_only adaptive net for ``FasterRCNN`` / ``MaskRCNN`` / ``RetinaNet``.

    The FPN returns one map per backbone level plus ``"pool"``: give the detector an anchor
    generator with as many sizes (torchvision's default has 5, for 4 levels).
    """
    return AdaptiveFPN(net, out_channels, extra_blocks)


def set_depth(detector: nn.Module, pattern: Pattern) -> None:
    """Switch every adaptive backbone inside ``detector`` to sub-network ``pattern`` (``TTFF``, ``base``...)."""
    nets = [m for m in detector.modules() if isinstance(m, AdaptiveNet)]
    if not nets:
        raise AdnifyError(f"{type(detector).__name__} holds no adaptive backbone")
    for net in nets:
        net.set_subnet(pattern)


def backbone_kd(detector: nn.Module, images: torch.Tensor, teacher: list[torch.Tensor],
                pattern: Pattern = "base") -> torch.Tensor:
    """Skip-aware self-distillation on the backbone (Algorithm 1's feature term): run ``pattern``'s
    backbone on ``images`` (the detector's transformed batch) and sum the channel-wise
    ``KL(teacher || student)`` over the returned levels, the ``teacher`` maps detached."""
    from .train.losses import channel_kl

    body = detector.backbone.body
    with body.subnet(pattern):
        feats = body(images)
    feats = list(feats.values()) if isinstance(feats, dict) else list(feats)
    return sum(channel_kl(s, t.detach(), channel_dim=1) for s, t in zip(feats, teacher))
