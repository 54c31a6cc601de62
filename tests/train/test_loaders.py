"""The training transform: every image of an epoch comes out, whatever the augmentation draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

import adnify
from adnify.train.loaders import build_transforms
from adnify.train.recipes import load_recipe


@pytest.mark.parametrize("recipe", ["deit", "swin"])
def test_randaugment_at_its_top_magnitude_keeps_the_loader_running(recipe):
    """Increasing-magnitude RandAugment asks posterize to keep 0 bits at magnitude 10, which Pillow 13
    refuses; the recipes' RandAugment must give an image (black, as older Pillow did) instead."""
    config = load_recipe(recipe, {"aa": "rand-m10-n3-mstd0-inc1", "reprob": 0.0, "input_size": [3, 32, 32]})
    net = adnify.convert("resnet18", num_classes=10, channels=(8, 16, 32, 64), stem_width=8)
    transform = build_transforms(net, config).train
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    for seed in range(200):  # 3 of about 15 ops each time: posterize comes up in about a fifth of them
        random.seed(seed)
        torch.manual_seed(seed)
        out = transform(image)
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
    rand_augment = next(t for t in transform.transforms if hasattr(t, "ops"))
    assert any("Posterize" in op.name for op in rand_augment.ops)


def test_keeping_zero_bits_gives_a_black_image():
    from adnify.train.loaders import _posterize

    image = Image.new("RGB", (4, 4), (200, 100, 50))
    assert np.asarray(_posterize(image, 0)).max() == 0
    assert np.asarray(_posterize(image, 1)).tolist() == np.asarray(image.point(lambda v: v & 0x80)).tolist()
