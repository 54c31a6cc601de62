"""The skip-aware self-distillation loss, checked against docs/method.md and hand computations."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adnify.train import kl as losses  # the KL kernel and its compile state
from adnify.train.losses import LossConfig, LossParts, adn_loss, base_loss, channel_kl, super_loss, topk_kl

torch.manual_seed(0)
B, C, K = 4, 6, 5  # batch, feature channels, classes


def _case(requires_grad: bool = True):
    g = torch.Generator().manual_seed(1)

    def t(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    return {
        "super_logits": t(B, K),
        "base_logits": t(B, K),
        # one NCHW stage and one token stage
        "super_feats": [t(B, C, 3, 3), t(B, 7, C)],
        "base_feats": [t(B, C, 3, 3), t(B, 7, C)],
        "target": torch.randint(0, K, (B,), generator=g),
    }


DIMS = [1, -1]


def _kl_by_hand(student, teacher, dim, temperature=1.0):
    """Per-position KL via F.kl_div, averaged over positions."""
    s = (student / temperature).movedim(dim, -1).reshape(-1, student.shape[dim])
    t = (teacher / temperature).movedim(dim, -1).reshape(-1, teacher.shape[dim])
    kl = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    return kl * temperature**2


# -- channel_kl ---------------------------------------------------------------------------------

def test_kl_zero_for_identical_and_positive_otherwise():
    x = torch.randn(B, C, 4, 4)
    assert channel_kl(x, x.clone(), channel_dim=1).item() == pytest.approx(0.0, abs=1e-6)
    assert channel_kl(x + 0.1, x, channel_dim=1).item() == pytest.approx(0.0, abs=1e-6)  # softmax shift-invariant
    assert channel_kl(torch.randn(B, C, 4, 4), x, channel_dim=1).item() > 0


def test_kl_matches_kl_div_by_hand():
    student, teacher = torch.randn(2, 3), torch.randn(2, 3)
    p = teacher.softmax(-1)
    manual = (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()
    assert channel_kl(student, teacher, channel_dim=-1).item() == pytest.approx(manual.item(), rel=1e-5)
    assert channel_kl(student, teacher, channel_dim=-1).item() == pytest.approx(
        F.kl_div(student.log_softmax(-1), p, reduction="batchmean").item(), rel=1e-5)
    fs, ft = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    for T in (1.0, 2.0):
        assert channel_kl(fs, ft, channel_dim=1, temperature=T).item() == pytest.approx(
            _kl_by_hand(fs, ft, 1, T).item(), rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("dim", [1, -1])
def test_kl_gradient_matches_autograd_of_the_formula(T, dim):
    s, t = torch.randn(2, 4, 3, 5, dtype=torch.float64), torch.randn(2, 4, 3, 5, dtype=torch.float64)
    mine, ref = s.clone().requires_grad_(), s.clone().requires_grad_()
    channel_kl(mine, t, channel_dim=dim, temperature=T).backward()
    _kl_by_hand(ref, t, dim, T).backward()
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-4, atol=1e-6)  # computed in float32
    low = torch.randn(2, 4, 3, 5, dtype=torch.bfloat16, requires_grad=True)
    channel_kl(low, t.bfloat16(), channel_dim=dim, temperature=T).backward()
    assert low.grad.dtype == torch.bfloat16  # the gradient comes back in the input's precision


@pytest.mark.parametrize("shape,dim,T", [((2, 6, 5, 7), 1, 1.0), ((2, 9, 6), -1, 2.0)])
def test_compiled_kl_gives_the_eager_value_and_gradient(shape, dim, T):
    """compile_loss: the fused kernel computes the same loss and gradient as the eager code."""
    s, t = torch.randn(*shape), torch.randn(*shape)
    eager, fused = s.clone().requires_grad_(), s.clone().requires_grad_()
    value = channel_kl(eager, t, channel_dim=dim, temperature=T)
    value.backward()
    compiled = channel_kl(fused, t, channel_dim=dim, temperature=T, compiled=True)
    if losses._compile_failed:
        pytest.skip("torch.compile cannot build kernels on this machine (eager fallback tested separately)")
    compiled.backward()
    assert compiled.item() == pytest.approx(value.item(), rel=1e-5)
    torch.testing.assert_close(fused.grad, eager.grad, rtol=1e-5, atol=1e-7)


def test_compiled_kl_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(fn):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(losses, "_compiled_kl", None)
    monkeypatch.setattr(losses, "_compile_failed", False)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        first = channel_kl(s, t, channel_dim=-1, compiled=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the first call warns
        second = channel_kl(s, t, channel_dim=-1, compiled=True)
    assert first.item() == pytest.approx(channel_kl(s, t, channel_dim=-1).item()) == second.item()


def test_channel_dim_1_and_last_agree_after_permute():
    s, t = torch.randn(B, C, 3, 5), torch.randn(B, C, 3, 5)
    nchw = channel_kl(s, t, channel_dim=1)
    nhwc = channel_kl(s.permute(0, 2, 3, 1), t.permute(0, 2, 3, 1), channel_dim=-1)
    tokens = channel_kl(s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2), channel_dim=-1)
    assert nchw.item() == pytest.approx(nhwc.item(), rel=1e-6)
    assert nchw.item() == pytest.approx(tokens.item(), rel=1e-6)


def test_kl_teacher_detached_and_float32():
    s = torch.randn(B, K, requires_grad=True)
    t = torch.randn(B, K, requires_grad=True)
    channel_kl(s, t, channel_dim=-1).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    half = channel_kl(s.detach().half(), t.detach().half(), channel_dim=-1)
    assert half.dtype == torch.float32


def test_kl_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        channel_kl(torch.zeros(2, 3), torch.zeros(2, 4), channel_dim=-1)


# -- adn_loss -----------------------------------------------------------------------------------

def cfg(**kw) -> LossConfig:
    return LossConfig(channel_dims=tuple(DIMS), **kw)


def paper(alpha=0.5, **kw) -> LossConfig:
    """Algorithm 1 in the paper's parametrisation, with the dense feature term (loss_preset: paper)."""
    return cfg(**{"label_weight": alpha, "distill_weight": 1 - alpha, "feature_kd": "dense", **kw})


def _expected(c, alpha=0.5, T=1.0, feature=True, logit=True, w=1.0):
    ce = F.cross_entropy(c["super_logits"], c["target"])
    feat = sum(_kl_by_hand(b, s.detach(), d, T) for b, s, d in zip(c["base_feats"], c["super_feats"], DIMS))
    lg = _kl_by_hand(c["base_logits"], c["super_logits"].detach(), -1, T)
    return alpha * ce + (1 - alpha) * (w * feat * feature + lg * logit)


def _loss(c, config, **kw):
    return adn_loss(c["super_logits"], c["base_logits"], c["super_feats"], c["base_feats"], c["target"], config, **kw)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_paper_preset_matches_algorithm_1(alpha, T):
    c = _case(False)
    parts = _loss(c, paper(alpha, temperature=T))
    assert isinstance(parts, LossParts)
    assert parts.total.item() == pytest.approx(_expected(c, alpha, T).item(), rel=1e-5)
    assert parts.value("ce") == pytest.approx(F.cross_entropy(c["super_logits"], c["target"]).item(), rel=1e-6)
    recombined = alpha * parts.value("ce") + (1 - alpha) * (parts.value("feature_kd") + parts.value("logit_kd"))
    assert parts.total.item() == pytest.approx(recombined, rel=1e-5)
    assert set(parts.as_floats()) == {"loss", "ce", "feature_kd", "logit_kd"}


def test_default_loss_is_full_label_term_plus_logit_kl():
    """adnify's default: CE(super) at weight 1 plus KL(y_super || y_base) at weight 1, no feature term."""
    c = _case(False)
    parts = _loss(c, LossConfig())
    expected = F.cross_entropy(c["super_logits"], c["target"]) + _kl_by_hand(c["base_logits"], c["super_logits"], -1)
    assert parts.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts.terms) == {"ce", "logit_kd"}


def test_super_side_gets_gradient_only_from_ce():
    c = _case()
    _loss(c, paper()).total.backward()
    assert all(f.grad is None for f in c["super_feats"])  # features only appear as (detached) teachers
    s = c["super_logits"].detach().requires_grad_()
    (0.5 * F.cross_entropy(s, c["target"])).backward()
    torch.testing.assert_close(c["super_logits"].grad, s.grad)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in c["base_feats"])
    assert c["base_logits"].grad.abs().sum() > 0


def test_label_and_distillation_weights_are_independent():
    c = _case()
    _loss(c, cfg(label_weight=1.0, distill_weight=0.0, base_label_weight=1.0)).total.backward()
    # No distillation: the base-net's gradient is its own CE's.
    b = c["base_logits"].detach().requires_grad_()
    F.cross_entropy(b, c["target"]).backward()
    torch.testing.assert_close(c["base_logits"].grad, b.grad)
    c = _case(False)
    double = _loss(c, cfg(label_weight=2.0, distill_weight=3.0)).total.item()
    ce = F.cross_entropy(c["super_logits"], c["target"]).item()
    kl = _kl_by_hand(c["base_logits"], c["super_logits"], -1).item()
    assert double == pytest.approx(2 * ce + 3 * kl, rel=1e-5)


def test_base_label_term_adds_ce_of_the_base_net():
    c = _case(False)
    with_base = _loss(c, cfg(base_label_weight=0.5))
    without = _loss(c, cfg())
    assert with_base.total.item() == pytest.approx(
        without.total.item() + 0.5 * F.cross_entropy(c["base_logits"], c["target"]).item(), rel=1e-5)
    assert with_base.value("base_ce") == pytest.approx(F.cross_entropy(c["base_logits"], c["target"]).item(), rel=1e-6)


def test_pooled_feature_term_is_the_official_form():
    """Each stage output globally average-pooled to (B, C), then a KL over channels, summed over stages."""
    c = _case(False)
    parts = _loss(c, cfg(feature_kd="pooled", logit_kd=False, distill_weight=1.0))
    pooled_nchw = lambda t: t.mean(dim=(2, 3))  # noqa: E731
    pooled_tokens = lambda t: t.mean(dim=1)  # noqa: E731
    hand = (_kl_by_hand(pooled_nchw(c["base_feats"][0]), pooled_nchw(c["super_feats"][0]), -1)
            + _kl_by_hand(pooled_tokens(c["base_feats"][1]), pooled_tokens(c["super_feats"][1]), -1))
    assert parts.value("feature_kd") == pytest.approx(hand.item(), rel=1e-5)


def test_feature_stages_pick_which_stage_outputs_are_distilled():
    c = _case(False)
    first = _loss(c, cfg(feature_kd="dense", feature_kd_stages=(1,))).value("feature_kd")
    second = _loss(c, cfg(feature_kd="dense", feature_kd_stages=(2,))).value("feature_kd")
    both = _loss(c, cfg(feature_kd="dense")).value("feature_kd")
    assert first == pytest.approx(_kl_by_hand(c["base_feats"][0], c["super_feats"][0], 1).item(), rel=1e-5)
    assert first + second == pytest.approx(both, rel=1e-5)
    with pytest.raises(ValueError, match="beyond"):
        _loss(c, cfg(feature_kd="dense", feature_kd_stages=(3,)))


def test_topk_logit_kl_uses_the_super_nets_top_classes():
    c = _case(False)
    k = 3
    index = c["super_logits"].topk(k, dim=-1).indices
    hand = _kl_by_hand(c["base_logits"].gather(-1, index), c["super_logits"].gather(-1, index), -1)
    assert topk_kl(c["base_logits"], c["super_logits"], k).item() == pytest.approx(hand.item(), rel=1e-5)
    assert _loss(c, cfg(kd_topk=k)).value("logit_kd") == pytest.approx(hand.item(), rel=1e-5)
    everything = _kl_by_hand(c["base_logits"], c["super_logits"], -1).item()
    assert _loss(c, cfg(kd_topk=K)).value("logit_kd") == pytest.approx(everything, rel=1e-5)


def test_distillation_warm_up_scales_only_the_distillation_terms():
    c = _case(False)
    config = cfg(feature_kd="dense", base_label_weight=0.3)
    full, none, half = (_loss(c, config, kd_scale=s) for s in (1.0, 0.0, 0.5))
    labels = full.terms["ce"][0] * full.value("ce") + full.terms["base_ce"][0] * full.value("base_ce")
    assert none.total.item() == pytest.approx(labels, rel=1e-5)
    assert half.total.item() == pytest.approx((full.total.item() + labels) / 2, rel=1e-5)


def test_frozen_original_teaches_both_ends():
    c = _case()
    original = torch.randn(B, K, requires_grad=True)
    parts = _loss(c, cfg(teacher_weight=0.5), original_logits=original)
    hand = 0.5 * (_kl_by_hand(c["super_logits"], original, -1) + _kl_by_hand(c["base_logits"], original, -1))
    assert parts.value("teacher_kd") * 0.5 + parts.value("base_teacher_kd") * 0.5 == pytest.approx(hand.item(), rel=1e-5)
    parts.total.backward()
    assert original.grad is None
    with pytest.raises(ValueError, match="original"):
        _loss(_case(), cfg(teacher_weight=0.5))


def test_no_distillation_ablation():
    c = _case(False)
    parts = _loss(c, paper(distill=False))
    expected = (F.cross_entropy(c["super_logits"], c["target"]) + F.cross_entropy(c["base_logits"], c["target"])) / 2
    assert parts.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts.terms) == {"ce", "base_ce"}


def test_a_base_net_without_any_term_is_refused():
    with pytest.raises(ValueError, match="no loss term"):
        _loss(_case(False), cfg(logit_kd=False))


@pytest.mark.parametrize("bad,match", [
    (dict(feature_kd="all"), "feature_kd must be one of none, pooled, dense"),
    (dict(label_weight=-1.0), "label_weight must be at least 0"),
    (dict(kd_topk=0), "kd_topk must be at least 1"),
    (dict(temperature=0.0), "temperature must be positive"),
])
def test_loss_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        cfg(**bad)


def test_soft_targets_and_custom_criterion():
    from timm.loss import SoftTargetCrossEntropy

    c = _case(False)
    soft = F.one_hot(c["target"], K).float() * 0.7 + 0.3 / K
    c["target"] = soft
    default = _loss(c, cfg())
    timm_ce = _loss(c, cfg(), criterion=SoftTargetCrossEntropy())
    hand = -(soft * c["super_logits"].log_softmax(-1)).sum(-1).mean()
    assert default.value("ce") == pytest.approx(hand.item(), rel=1e-5)
    assert timm_ce.total.item() == pytest.approx(default.total.item(), rel=1e-5)
    smoothed = _loss(_case(False), cfg(), criterion=nn.CrossEntropyLoss(label_smoothing=0.1))
    assert smoothed.value("ce") != pytest.approx(_loss(_case(False), cfg()).value("ce"))


def test_label_free_teacher_replaces_ce():
    c = _case()
    c["target"] = None
    teacher = torch.randn(B, K, requires_grad=True)
    parts = _loss(c, paper(temperature=2.0), teacher_logits=teacher)
    kd_teacher = _kl_by_hand(c["super_logits"], teacher.detach(), -1, 2.0)
    assert parts.value("ce") == pytest.approx(kd_teacher.item(), rel=1e-5)
    parts.total.backward()
    assert teacher.grad is None and c["super_logits"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="target"):
        _loss({**_case(), "target": None}, cfg())


@pytest.mark.parametrize("config", [
    paper(), paper(feature_kd="none"), paper(logit_kd=False), paper(distill=False),
    paper(0.2, temperature=3.0), paper(kd_weight_features=0.5), cfg(), cfg(base_label_weight=1.0, kd_topk=2),
    cfg(feature_kd="pooled", feature_kd_stages=(2,)),
])
@pytest.mark.parametrize("label_free", [False, True])
def test_adn_loss_is_super_plus_base(config, label_free):
    c = _case()
    teacher = torch.randn(B, K) if label_free else None
    target = None if label_free else c["target"]
    joint = adn_loss(c["super_logits"], c["base_logits"], c["super_feats"], c["base_feats"], target, config,
                     teacher_logits=teacher)
    s = super_loss(c["super_logits"], target, config, teacher_logits=teacher)
    b = base_loss(c["base_logits"], c["base_feats"], c["super_logits"].detach(), [f.detach() for f in c["super_feats"]],
                  target, config, teacher_logits=teacher)
    torch.testing.assert_close(joint.total, s.total + b.total)
    assert joint.as_floats() == pytest.approx({**s.as_floats(), **b.as_floats(), "loss": joint.total.item()})
    # Sequential order: two backward passes give the joint gradient.
    joint.total.backward()
    leaves = [c["super_logits"], c["base_logits"], *c["super_feats"], *c["base_feats"]]
    joint_grads = [None if t.grad is None else t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    s.total.backward()
    b.total.backward()
    for t, g in zip(leaves, joint_grads):
        if g is None:
            assert t.grad is None
        else:
            torch.testing.assert_close(t.grad, g)
