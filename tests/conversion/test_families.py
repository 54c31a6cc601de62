"""Conversion is correct on one small model of every timm family that has residual stages.

For each model (random weights, eval mode, fp32) these must hold:

- the super-net computes exactly what the original model computed, also after save -> load;
- every sub-network runs (all ``2**N`` patterns when ``N <= 5``, else a sample) and keeps the
  output shape; skipped blocks keep their input's shape; skipping changes the output;
- the base-net costs fewer MACs than the super-net, and the MACs ``pattern_costs`` derives for
  the base-net equal a full count of its static export;
- ``net.export(p)`` computes what ``net(x, skip=p)`` computes;
- every stage has skip-aware norms (unless its mandatory part truly has none: said per model).

Families whose small test model has one block per stage raise the clear "nothing to adapt"
error. The identity-path rule (what a residual block may have between its input and output)
is specified with tiny modules at the end. Slow models run with ``-m slow``.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import timm
import torch
from torch import nn

import adnify
from adnify import AdnifyError
from adnify.conversion.norms import is_norm
from adnify.report.costs import count_macs, pattern_costs
from adnify.skipping import SkipAwareNorm

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
ALL_PATTERNS_UP_TO = 5  # stages; beyond, a sample of patterns runs


@dataclass(frozen=True)
class Case:
    """One model of one family, small enough for a CPU test."""

    family: str
    model: str
    size: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict)
    no_norms: str | None = None  # why a stage's mandatory part has no norm layer

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def create(self) -> nn.Module:
        return timm.create_model(self.model, **self.kwargs).eval()


def case(family: str, model: str, size: int = 64, *, slow: bool = False, no_norms: str | None = None,
         **kwargs: Any) -> Any:
    c = Case(family, model, size, kwargs, no_norms)
    return pytest.param(c, id=f"{family}-{model}-{size}", marks=[pytest.mark.slow] if slow else [])


# Shrunk widths/depths (timm keyword arguments) keep attention models cheap on small inputs.
TINY_VIT = dict(num_classes=10, embed_dims=(32, 64, 96, 128), depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4))
SWIN_SMALL = dict(img_size=64, window_size=2, embed_dim=32, num_heads=(1, 2, 4, 8))
NO_NORMS_NF = "normalizer-free network: NormFreeBlocks have no norm layers (scaled weight standardisation instead)"

CASES = [
    case("resnet", "resnet18"),
    case("resnet", "test_resnet", layers=(2, 2, 2, 2)),
    case("resnet", "resnet50", 224, slow=True),
    case("resnetv2", "resnetv2_18"),
    case("regnet", "regnetx_002"),  # blocks b1, b2... of a RegStage: a numbered block list, no Sequential
    case("efficientnet", "efficientnet_b0"),
    case("mobilenetv2", "mobilenetv2_035"),
    case("mobilenetv3", "mobilenetv3_small_050"),
    case("convnext", "test_convnext"),
    case("convnext", "convnext_atto", 224, slow=True),
    case("vit", "test_vit"),
    case("vit", "vit_base_patch16_224", 224, slow=True),
    case("deit", "deit_tiny_patch16_224", img_size=64),
    case("swin", "swin_tiny_patch4_window7_224", **SWIN_SMALL),
    case("swin", "swin_tiny_patch4_window7_224", 224, slow=True),
    case("swinv2", "swinv2_tiny_window8_256", **SWIN_SMALL),
    case("beit", "beit_base_patch16_224", img_size=64, embed_dim=64, depth=8, num_heads=2),
    case("eva", "eva02_tiny_patch14_224", 56, img_size=56),
    case("cait", "cait_xxs24_224", img_size=64),
    case("mlp_mixer", "mixer_s32_224", img_size=64),
    case("metaformer", "poolformer_s12"),
    case("metaformer", "caformer_s18"),  # res_scale: a learned scale on the identity path
    # EfficientFormer's attention biases are fixed to 7x7 tokens: 224 input, narrower widths.
    case("efficientformer", "efficientformer_l1", 224, embed_dims=(16, 32, 48, 64), depths=(2, 2, 3, 3), num_vit=2),
    case("edgenext", "edgenext_xx_small"),
    case("maxvit", "test_maxvit", img_size=64, depths=(1, 2, 2, 1)),
    case("coatnet", "test_coatnet", img_size=64),
    case("nfnet", "test_nfnet", depths=(1, 2, 2, 1), no_norms=NO_NORMS_NF),  # notrace NormFreeBlocks, sub-traced
    case("nfnet", "nf_regnet_b0", slow=True, no_norms=NO_NORMS_NF),
    case("byobnet", "repvgg_a0"),  # RepVGG: act(bn(x) + conv(x)), the identity passes a norm
    case("byobnet", "resnet32ts", slow=True),
    case("cspnet", "cs3darknet_focus_s"),
    case("ghostnet", "ghostnet_050"),
    case("repvit", "repvit_m0_9"),  # bn(x + dw(x)) token mixer; blocks with squeeze-excitation stay mandatory
    case("fastvit", "fastvit_t8"),
    case("tiny_vit", "tiny_vit_5m_224", **TINY_VIT),  # only its MBConv stage: see the TinyViT tests below
    case("hiera", "hiera_tiny_224", img_size=(64, 64)),  # one flat block list holding every stage
    case("pvt_v2", "pvt_v2_b0"),
    case("twins", "twins_svt_small", img_size=64),
    case("twins", "twins_pcpvt_small", img_size=64, slow=True),
    case("mambaout", "test_mambaout"),
    case("starnet", "starnet_s050"),
    case("efficientvit_msra", "efficientvit_m0", img_size=64),  # stages inside another stage's downsample
]


def randomize(model: nn.Module) -> None:
    """Give every branch something to compute.

    timm zero-initialises the last norm of many blocks, some heads and projections, and starts
    layer scales near zero (ConvNeXt: 1e-6, NFNet's skipinit gain: 0); with such weights
    skipping a block would change nothing and the checks below would prove little. Those
    parameters get random values (biases stay as they are).
    """
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.numel() == 0 or p.abs().max() >= 1e-3:
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.0, generator=g))



@dataclass
class Converted:
    case: Case
    original: nn.Module
    net: adnify.AdaptiveNet
    x: torch.Tensor
    reference: torch.Tensor  # the original model's output on x


@pytest.fixture(scope="module", params=CASES)
def converted(request: pytest.FixtureRequest) -> Converted:
    c: Case = request.param
    torch.manual_seed(0)
    original = c.create()
    randomize(original)
    net = adnify.convert(copy.deepcopy(original), input_size=c.input_size).eval()
    x = torch.randn(2, *c.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = original(x)
    assert torch.isfinite(reference).all()
    return Converted(c, original, net, x, reference)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()


def sample_patterns(n: int) -> list[str]:
    """All patterns for up to 5 stages; else super, base, each stage alone, and 3 random ones."""
    if n <= ALL_PATTERNS_UP_TO:
        return adnify.all_patterns(n)
    rng = random.Random(0)
    one_hot = ["".join("T" if i == s else "F" for i in range(n)) for s in range(n)]
    rand = ["".join(rng.choice("TF") for _ in range(n)) for _ in range(3)]
    return list(dict.fromkeys(["F" * n, "T" * n, *one_hot, *rand]))


def mixed_pattern(n: int) -> str:
    return "".join("T" if i % 2 == 0 else "F" for i in range(n)) if n > 1 else "T"


# --- the specification -----------------------------------------------------------------------------


@torch.no_grad()
def test_super_net_computes_exactly_what_the_original_computed(converted: Converted):
    net, x = converted.net, converted.x
    assert net.num_stages >= 1
    assert max_diff(net(x), converted.reference) <= TOL
    assert max_diff(net(x, skip="super"), converted.reference) <= TOL


@torch.no_grad()
def test_super_net_is_still_exact_after_save_and_load(converted: Converted, tmp_path):
    converted.net.save(tmp_path / "net")
    loaded = adnify.load(tmp_path / "net", model=converted.case.create())
    assert loaded.plan == converted.net.plan
    assert max_diff(loaded(converted.x), converted.reference) <= TOL
    mixed = mixed_pattern(loaded.num_stages)
    assert max_diff(loaded(converted.x, skip=mixed), converted.net(converted.x, skip=mixed)) <= TOL


@torch.no_grad()
def test_every_pattern_runs_and_keeps_the_output_shape(converted: Converted):
    net, x = converted.net, converted.x
    for pattern in sample_patterns(net.num_stages):
        out = net(x, skip=pattern)
        assert out.shape == converted.reference.shape, pattern
        assert torch.isfinite(out).all(), pattern
    scale = converted.reference.abs().max().item()
    assert max_diff(net(x, skip="base"), converted.reference) > 1e-3 * scale, "skipping changed nothing"


@torch.no_grad()
def test_skippable_blocks_keep_their_input_shape(converted: Converted):
    net = converted.net
    modules = dict(net.model.named_modules())
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = [
        modules[name].register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, (tuple(args[0].shape), tuple(out.shape))))
        for stage in net.plan.stages for name in stage.skippable
    ]
    try:
        net(converted.x, skip="super")
    finally:
        for h in hooks:
            h.remove()
    assert set(seen) == {n for s in net.plan.stages for n in s.skippable}
    for name, (before, after) in seen.items():
        assert before == after, f"{name} changes the shape {before} -> {after}"


def test_base_net_costs_less_and_its_macs_match_a_count_of_the_export(converted: Converted):
    net = converted.net
    sup, base = pattern_costs(net, ["super", "base"])
    assert base.macs < sup.macs
    assert base.params < sup.params
    one = torch.randn(1, *converted.case.input_size)
    assert sup.macs == count_macs(converted.original, one)
    assert base.macs == count_macs(net.export("base"), one)


@torch.no_grad()
def test_export_computes_what_dynamic_skipping_computes(converted: Converted):
    net, x = converted.net, converted.x
    for pattern in dict.fromkeys(["base", mixed_pattern(net.num_stages)]):
        static = net.export(pattern)
        assert not any(isinstance(m, SkipAwareNorm) for m in static.modules())
        assert max_diff(static(x), net(x, skip=pattern)) <= TOL, pattern


def test_every_stage_has_skip_aware_norms_in_its_mandatory_part(converted: Converted):
    net = converted.net
    modules = dict(net.model.named_modules())
    for stage in net.plan.stages:
        for name in stage.norms:
            assert isinstance(modules[name], SkipAwareNorm) and is_norm(modules[name].skip_copy), name
            assert not any(name.startswith(b + ".") for b in stage.skippable), f"{name} is in a skippable block"
            others = [b for o in net.plan.stages if o is not stage for b in o.mandatory + o.skippable]
            assert not any(name.startswith(b + ".") for b in others), f"{name} is in another stage's block"
        if converted.case.no_norms:  # then the mandatory blocks really hold no norm layer
            assert not any(is_norm(m) for b in stage.mandatory for m in modules[b].modules()), stage.name
        else:
            assert stage.norms, f"stage {stage.name} has no skip-aware norm"


# --- families whose test model has nothing adaptive ------------------------------------------------


@pytest.mark.parametrize("model", ["test_resnet", "test_efficientnet", "test_nfnet", "test_byobnet", "test_maxvit"])
def test_one_block_per_stage_is_a_clear_error(model):
    """timm's smallest test models have a single block per stage: no stage can be split."""
    kwargs = {"img_size": 64} if model == "test_maxvit" else {}
    with pytest.raises(AdnifyError, match="nothing to adapt"):
        adnify.convert(model, input_size=(3, 64, 64), **kwargs)


def test_tiny_vit_blocks_are_not_skippable_but_its_conv_stage_is():
    """A TinyVitBlock runs a depthwise conv *between* its two residual adds: dropping the block
    would drop that spatial filter too, a transform rather than a refinement, so only the
    MBConv stage is adaptive (the strict reading of the paper's rule)."""
    net = adnify.convert("tiny_vit_5m_224", input_size=(3, 64, 64), **TINY_VIT)
    assert [s.name for s in net.plan.stages] == ["stages.0"]


def test_blocks_fx_cannot_trace_are_analysed_with_make_fx():
    """TinyVitBlock is a timm notrace module that FX cannot trace either: make_fx looks inside.
    Without the local conv, its identity path is clean and every stage becomes adaptive."""
    model = timm.create_model("tiny_vit_5m_224", **TINY_VIT)
    for stage in model.stages[1:]:
        for block in stage.blocks:
            block.local_conv = nn.Identity()
    net = adnify.convert(model, input_size=(3, 64, 64))
    assert [s.skippable for s in net.plan.stages] == [[f"stages.{i}.blocks.1"] for i in range(4)]


# --- what counts as a residual block: the identity-path rule ---------------------------------------


class Block(nn.Module):
    """``post(x + branch(x))`` or ``x * scale + branch(x)``, to probe the identity-path rule."""

    def __init__(self, c: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.branch = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.post = {"relu": nn.ReLU(), "norm": nn.BatchNorm2d(c), "conv": nn.Conv2d(c, c, 3, padding=1)}.get(kind)
        self.scale = nn.Parameter(torch.full((c, 1, 1), 0.5))
        self.gate = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "scale":  # a learned per-channel scale of the shortcut (MetaFormer's res_scale)
            return x * self.scale + self.branch(x)
        if self.kind == "gate":  # a data-dependent gate on the shortcut (squeeze-excitation)
            return x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True))) + self.branch(x)
        return self.post(x + self.branch(x))


class Net(nn.Module):
    """A stem, three same-shape blocks in a non-container stage (``b1..b3``, as RegNet), a head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Module()
        for i in range(1, 4):
            self.stage.add_module(f"b{i}", Block(8, kind))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.stage.children():
            x = block(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("kind", ["relu", "norm", "scale"])
def test_identity_path_may_pass_activations_norms_and_constant_scales(kind):
    net = adnify.convert(Net(kind), input_size=(3, 8, 8))
    assert [(s.mandatory, s.skippable) for s in net.plan.stages] == [(["stage.b1", "stage.b2"], ["stage.b3"])]


@pytest.mark.parametrize("kind", ["conv", "gate"])
def test_identity_path_through_a_learned_transform_is_no_shortcut(kind):
    with pytest.raises(AdnifyError, match="no residual block"):
        adnify.convert(Net(kind), input_size=(3, 8, 8))
