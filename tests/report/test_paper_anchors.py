"""The paper's numbers as tests (issue 2, item 11): MACs of the super- and base-net, parameter growth.

MACs are FLOPs / 2, the unit the paper and timm call "GFLOPs" (ResNet50-ADN 4.11 / 2.58,
ViT-b/16-ADN 17.58 / 11.76). Parameter growth is that of the skip-aware norm twins.
Random weights suffice (MACs and counts do not depend on them); the file runs in about 10 s.
"""

from __future__ import annotations

import pytest
import timm
from torch import nn

import adnify
from adnify.report.costs import pattern_costs


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _convert(name: str) -> tuple[adnify.AdaptiveNet, int, float, float]:
    """The converted model, the original's parameter count, and super/base GMACs at 224x224."""
    model = timm.create_model(name)
    before = _num_params(model)
    net = adnify.convert(model)
    sup, base = pattern_costs(net, ["super", "base"])
    return net, before, sup.gmacs, base.gmacs


@pytest.fixture(scope="module")
def resnet50():
    return _convert("resnet50")


@pytest.fixture(scope="module")
def vit_base():
    return _convert("vit_base_patch16_224")


def test_resnet50_has_four_adaptive_stages_and_the_papers_macs(resnet50):
    net, _, sup, base = resnet50
    assert net.num_stages == 4
    assert sup == pytest.approx(4.11, rel=0.02), f"super-net {sup:.3f} GMACs, paper 4.11"
    assert 2.56 <= base <= 2.58, f"base-net {base:.3f} GMACs, paper 2.58"


def test_resnet50_params_grow_by_less_than_half_a_percent(resnet50):
    net, before, _, _ = resnet50
    after = _num_params(net)
    assert before < after < before * 1.005, f"{before} -> {after} parameters ({(after / before - 1):.3%})"


def test_vit_base_has_the_papers_macs(vit_base):
    net, _, sup, base = vit_base
    assert net.num_stages == 4
    assert sup == pytest.approx(17.6, rel=0.01), f"super-net {sup:.3f} GMACs, paper 17.58"
    assert base == pytest.approx(11.8, rel=0.01), f"base-net {base:.3f} GMACs, paper 11.76"


def test_vit_base_params_grow_by_less_than_half_a_percent(vit_base):
    net, before, _, _ = vit_base
    after = _num_params(net)
    assert before < after < before * 1.005, f"{before} -> {after} parameters ({(after / before - 1):.3%})"
