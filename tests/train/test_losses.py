"""The skip-aware self-distillation loss, checked against docs/method.md and hand computations."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adnify.train import losses
from adnify.train.losses import LossParts, adn_loss, base_loss, channel_kl, super_loss

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

def _expected(c, alpha=0.5, T=1.0, feature=True, logit=True, w=1.0):
    ce = F.cross_entropy(c["super_logits"], c["target"])
    feat = sum(_kl_by_hand(b, s.detach(), d, T) for b, s, d in zip(c["base_feats"], c["super_feats"], DIMS))
    lg = _kl_by_hand(c["base_logits"], c["super_logits"].detach(), -1, T)
    return alpha * ce + (1 - alpha) * (w * feat * feature + lg * logit)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_adn_loss_matches_algorithm_1(alpha, T):
    c = _case(False)
    parts = adn_loss(**c, channel_dims=DIMS, alpha=alpha, temperature=T)
    assert isinstance(parts, LossParts)
    assert parts.total.item() == pytest.approx(_expected(c, alpha, T).item(), rel=1e-5)
    assert parts.ce.item() == pytest.approx(F.cross_entropy(c["super_logits"], c["target"]).item(), rel=1e-6)
    recombined = alpha * parts.ce + (1 - alpha) * (parts.feature_kd + parts.logit_kd)
    assert parts.total.item() == pytest.approx(recombined.item(), rel=1e-5)
    assert set(parts.as_floats()) == {"loss", "ce", "feature_kd", "logit_kd"}


def test_super_side_gets_gradient_only_from_ce():
    c = _case()
    adn_loss(**c, channel_dims=DIMS, alpha=0.5).total.backward()
    assert all(f.grad is None for f in c["super_feats"])  # features only appear as (detached) teachers
    s = c["super_logits"].detach().requires_grad_()
    (0.5 * F.cross_entropy(s, c["target"])).backward()
    torch.testing.assert_close(c["super_logits"].grad, s.grad)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in c["base_feats"])
    assert c["base_logits"].grad.abs().sum() > 0


def test_alpha_one_trains_only_super_and_zero_only_base():
    c = _case()
    adn_loss(**c, channel_dims=DIMS, alpha=1.0).total.backward()
    assert c["base_logits"].grad.abs().sum() == 0
    c = _case()
    adn_loss(**c, channel_dims=DIMS, alpha=0.0).total.backward()
    assert c["super_logits"].grad.abs().sum() == 0 and c["base_logits"].grad.abs().sum() > 0


def test_feature_kd_off_is_logit_only():
    c = _case()
    parts = adn_loss(**c, channel_dims=DIMS, feature_kd=False)
    assert parts.feature_kd.item() == 0
    assert parts.total.item() == pytest.approx(_expected(c, feature=False).item(), rel=1e-5)
    parts.total.backward()
    assert all(f.grad is None for f in c["base_feats"])
    # Logit-only needs no features at all.
    c = _case(False)
    assert adn_loss(c["super_logits"], c["base_logits"], [], [], c["target"], channel_dims=[],
                    feature_kd=False).total.item() == pytest.approx(parts.total.item(), rel=1e-6)


def test_logit_kd_off_and_feature_weight():
    c = _case(False)
    parts = adn_loss(**c, channel_dims=DIMS, logit_kd=False, kd_weight_features=2.0)
    assert parts.logit_kd.item() == 0
    assert parts.total.item() == pytest.approx(_expected(c, logit=False, w=2.0).item(), rel=1e-5)
    with pytest.raises(ValueError, match="distill=False"):
        adn_loss(**c, channel_dims=DIMS, logit_kd=False, feature_kd=False)


def test_no_distillation_ablation():
    c = _case(False)
    parts = adn_loss(**c, channel_dims=DIMS, distill=False)
    expected = (F.cross_entropy(c["super_logits"], c["target"]) + F.cross_entropy(c["base_logits"], c["target"])) / 2
    assert parts.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts.feature_kd.item() == 0 and parts.logit_kd.item() == 0


def test_soft_targets_and_custom_criterion():
    from timm.loss import SoftTargetCrossEntropy

    c = _case(False)
    soft = F.one_hot(c["target"], K).float() * 0.7 + 0.3 / K
    c["target"] = soft
    default = adn_loss(**c, channel_dims=DIMS)
    timm_ce = adn_loss(**c, channel_dims=DIMS, criterion=SoftTargetCrossEntropy())
    hand = -(soft * c["super_logits"].log_softmax(-1)).sum(-1).mean()
    assert default.ce.item() == pytest.approx(hand.item(), rel=1e-5)
    assert timm_ce.total.item() == pytest.approx(default.total.item(), rel=1e-5)
    smoothed = adn_loss(**_case(False), channel_dims=DIMS, criterion=nn.CrossEntropyLoss(label_smoothing=0.1))
    assert smoothed.ce.item() != pytest.approx(adn_loss(**_case(False), channel_dims=DIMS).ce.item())


def test_label_free_teacher_replaces_ce():
    c = _case()
    c["target"] = None
    teacher = torch.randn(B, K, requires_grad=True)
    parts = adn_loss(**c, channel_dims=DIMS, teacher_logits=teacher, temperature=2.0)
    kd_teacher = _kl_by_hand(c["super_logits"], teacher.detach(), -1, 2.0)
    assert parts.ce.item() == pytest.approx(kd_teacher.item(), rel=1e-5)
    parts.total.backward()
    assert teacher.grad is None and c["super_logits"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="target"):
        adn_loss(**{**_case(), "target": None}, channel_dims=DIMS)


@pytest.mark.parametrize("flags", [
    {}, {"feature_kd": False}, {"logit_kd": False}, {"distill": False}, {"alpha": 0.2, "temperature": 3.0},
    {"kd_weight_features": 0.5},
])
@pytest.mark.parametrize("label_free", [False, True])
def test_adn_loss_is_super_plus_base(flags, label_free):
    c = _case()
    teacher = torch.randn(B, K) if label_free else None
    target = None if label_free else c["target"]
    common = {"alpha": flags.get("alpha", 0.5), "temperature": flags.get("temperature", 1.0),
              "distill": flags.get("distill", True)}
    joint = adn_loss(**{**c, "target": target}, channel_dims=DIMS, teacher_logits=teacher, **flags)
    s = super_loss(c["super_logits"], target, teacher_logits=teacher, **common)
    b, feat, logit, _, _ = base_loss(
        c["base_logits"], c["base_feats"], c["super_logits"].detach(), [f.detach() for f in c["super_feats"]],
        target, channel_dims=DIMS, feature_kd=flags.get("feature_kd", True), logit_kd=flags.get("logit_kd", True),
        kd_weight_features=flags.get("kd_weight_features", 1.0), teacher_logits=teacher, **common)
    torch.testing.assert_close(joint.total, s + b)
    torch.testing.assert_close(joint.feature_kd, feat)
    torch.testing.assert_close(joint.logit_kd, logit)
    # Sequential order: two backward passes give the joint gradient.
    joint.total.backward()
    leaves = [c["super_logits"], c["base_logits"], *c["super_feats"], *c["base_feats"]]
    joint_grads = [None if t.grad is None else t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    s.backward()
    b.backward()
    for t, g in zip(leaves, joint_grads):
        if g is None:
            assert t.grad is None
        else:
            torch.testing.assert_close(t.grad, g)
