"""Skip-aware self-distillation loss (Algorithm 1 of the ADN paper, see docs/method.md).

With ``alpha = 0.5`` and ``T = 1``::

    loss = alpha * CE(y_super, y)
         + (1 - alpha) * (w_f * sum_s KL(h_super^s || h_base^s) + KL(y_super || y_base))

The super-net (teacher) side of every KL term is detached, so the super-net learns only from the
labels (or, label-free, from an external teacher) and the base-net from the super-net.
:func:`adn_loss` computes everything at once (the *joint* order); :func:`super_loss` and
:func:`base_loss` are its two halves for the *sequential* order, and ``adn_loss == super_loss +
base_loss``.

``kd_weight_pre_logits`` (default 0, off as in the paper) adds ``w_p * MSE(z_base, z_super)`` of
the classifier's input features to the distillation terms. ``im_weight`` (default 0, not in the
paper) adds ``w_im * IM(y_base)``, information maximisation on the base-net's own predictions
(:func:`information_maximisation`): label-free adaptation of the base-net to the user's images,
which the ``finetune`` recipe uses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LossParts", "adn_loss", "base_loss", "channel_kl", "information_maximisation", "pre_logits_mse",
           "super_loss"]

Criterion = Callable[[Tensor, Tensor], Tensor]


def channel_kl(student: Tensor, teacher: Tensor, *, channel_dim: int, temperature: float = 1.0,
               compiled: bool = False) -> Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T^2`` over the channel dimension.

    The KL divergence is summed over ``channel_dim`` at each position (pixel, token, or the single
    position of a ``(B, C)`` logit tensor), then averaged over all remaining positions and the batch,
    so the value does not grow with the resolution or the number of tokens. The teacher is detached.
    Computed in float32 so that mixed precision does not underflow the softmax.

    Args:
        student: tensor that receives the gradient.
        teacher: target distribution, same shape as ``student``.
        channel_dim: 1 for NCHW maps, -1 for ``(B, N, C)`` tokens, NHWC maps and ``(B, C)`` logits.
        temperature: softmax temperature ``T``; the ``T^2`` factor keeps gradient scales comparable.
        compiled: fuse value and gradient into one kernel with ``torch.compile`` (same result; needs a
            C++ compiler on the CPU or Triton on CUDA, else it falls back to eager with one warning).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"channel_kl needs tensors of one shape, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    return _ChannelKL.apply(student, teacher.detach(), channel_dim, float(temperature), compiled)


def _kl_value_and_grad(student: Tensor, teacher: Tensor, dim: int, t: float) -> tuple[Tensor, Tensor]:
    """``sum p_t * (log p_t - log p_s)`` over all positions, and ``p_s - p_t`` (the gradient / T)."""
    log_student = F.log_softmax(student / t, dim=dim)
    log_teacher = F.log_softmax(teacher / t, dim=dim)
    p_teacher = log_teacher.exp()
    total = (p_teacher * (log_teacher - log_student)).sum()
    return total, log_student.exp() - p_teacher


def _kl_value_and_grad_eager(student: Tensor, teacher: Tensor, dim: int, t: float) -> tuple[Tensor, Tensor]:
    """:func:`_kl_value_and_grad` with as few elementwise passes as eager mode allows."""
    if t != 1.0:
        student, teacher = student / t, teacher / t
    log_student = F.log_softmax(student, dim=dim)
    log_teacher = F.log_softmax(teacher, dim=dim)
    p_teacher = log_teacher.exp()
    # The difference in place, then one BLAS dot: no per-position KL tensor. (Two dots, p.log_t - p.log_s,
    # would save that pass but cancel catastrophically when the KL is near 0, as at the start of training.)
    total = torch.dot(p_teacher.reshape(-1), log_teacher.sub_(log_student).reshape(-1))
    return total, log_student.exp_().sub_(p_teacher)


_compiled_kl: Callable[..., tuple[Tensor, Tensor]] | None = None
_compile_failed = False


def _fused_kl(student: Tensor, teacher: Tensor, dim: int, t: float) -> tuple[Tensor, Tensor]:
    """The compiled kernel, built on first use; eager if compiling is not possible here."""
    global _compiled_kl, _compile_failed
    if not _compile_failed:
        try:
            if _compiled_kl is None:
                _compiled_kl = torch.compile(_kl_value_and_grad)
            return _compiled_kl(student, teacher, dim, t)
        except Exception as err:  # a missing compiler or Triton shows up only at the first call
            _compile_failed = True
            warnings.warn(f"compiling the KL loss failed, using eager mode instead: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}", RuntimeWarning, stacklevel=3)
    return _kl_value_and_grad_eager(student, teacher, dim, t)


class _ChannelKL(torch.autograd.Function):
    """:func:`channel_kl` with its gradient written out, ``T * (softmax(s/T) - softmax(t/T)) / positions``.

    These are the largest tensors of a step, so every elementwise pass counts: the forward computes
    the value and the unscaled gradient together and keeps only the gradient (one tensor instead of
    two), and the backward is one multiplication.
    """

    @staticmethod
    def forward(ctx: Any, student: Tensor, teacher: Tensor, dim: int, t: float, compiled: bool) -> Tensor:
        ctx.dtype = student.dtype
        with torch.autocast(student.device.type, enabled=False):
            kernel = _fused_kl if compiled else _kl_value_and_grad_eager
            total, grad = kernel(student.float(), teacher.float(), dim, t)
        positions = max(grad.numel() // max(grad.shape[dim], 1), 1)
        ctx.save_for_backward(grad)
        ctx.scale = t / positions
        return total * (t * t / positions)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (unscaled,) = ctx.saved_tensors
        return (unscaled * (grad * ctx.scale)).to(ctx.dtype), None, None, None, None


@dataclass
class LossParts:
    """The loss to back-propagate and its unweighted parts (detached) for logging.

    Attributes:
        total: the weighted loss; call ``backward()`` on it.
        ce: the supervised term: ``CE(super, y)``, or ``KL(teacher || super)`` label-free;
            with ``distill=False`` the mean of the super and base terms.
        feature_kd: ``sum_s KL(h_super^s || h_base^s)`` (before ``kd_weight_features``); 0 when off.
        logit_kd: ``KL(y_super || y_base)``; 0 when off.
        pre_logits_kd: ``MSE(z_base, z_super)`` of the classifier's inputs; None when off.
        im: :func:`information_maximisation` of the base-net's logits; None when off.
    """

    total: Tensor
    ce: Tensor
    feature_kd: Tensor
    logit_kd: Tensor
    pre_logits_kd: Tensor | None = None
    im: Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        """Python floats for a log line (synchronises with the device once per value)."""
        out = {
            "loss": float(self.total.detach()),
            "ce": float(self.ce),
            "feature_kd": float(self.feature_kd),
            "logit_kd": float(self.logit_kd),
        }
        if self.pre_logits_kd is not None:
            out["pre_logits_kd"] = float(self.pre_logits_kd)
        if self.im is not None:
            out["im"] = float(self.im)
        return out


def information_maximisation(logits: Tensor) -> Tensor:
    """Mean entropy of the predictions minus the entropy of their batch mean (SHOT's IM loss).

    Low when each prediction is confident while the batch's predictions spread over the classes:
    fitting a network to unlabelled images of a new domain without collapsing onto a few classes
    (Liang et al., 2020, "Do we really need to access the source data?"). Computed in float32.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1).mean()
    mean_p = p.mean(0)
    return entropy + (mean_p * mean_p.clamp_min(1e-12).log()).sum()


def pre_logits_mse(base_pre: Tensor | None, super_pre: Tensor | None) -> Tensor:
    """``MSE(z_base, z_super)`` of the pooled features the classifier reads; the super side is detached.

    Not part of the paper's loss: an option for data-poor fine-tuning, where matching the
    embedding transfers across classes better than matching the logits alone.
    """
    if base_pre is None or super_pre is None:
        raise ValueError("kd_weight_pre_logits > 0 needs the pre-logit features of both passes")
    return F.mse_loss(base_pre.float(), super_pre.detach().float())


def _supervised(
    logits: Tensor,
    target: Tensor | None,
    criterion: Criterion | None,
    teacher_logits: Tensor | None,
    temperature: float,
    compiled: bool = False,
) -> Tensor:
    """CE against the labels, or, label-free, KL from the external teacher's logits."""
    if teacher_logits is not None:
        return channel_kl(logits, teacher_logits, channel_dim=-1, temperature=temperature, compiled=compiled)
    if target is None:
        raise ValueError("a target is needed when no teacher_logits are given (labels: none needs a teacher)")
    # nn.CrossEntropyLoss accepts class indices (B,) and probabilities (B, C), i.e. mixup's soft targets.
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    return criterion(logits, target)


def _distill_terms(
    base_logits: Tensor,
    base_feats: Sequence[Tensor],
    super_logits: Tensor,
    super_feats: Sequence[Tensor],
    *,
    channel_dims: Sequence[int] | int,
    temperature: float,
    feature_kd: bool,
    logit_kd: bool,
    compiled: bool = False,
) -> tuple[Tensor, Tensor]:
    """Unweighted ``(sum of feature KLs, logit KL)``; a disabled term is a zero tensor."""
    if not (feature_kd or logit_kd):
        raise ValueError("feature_kd and logit_kd are both off: use distill=False for the no-distillation ablation")
    zero = base_logits.new_zeros((), dtype=torch.float32)
    feat = zero
    if feature_kd:
        if len(super_feats) != len(base_feats):
            raise ValueError(f"got {len(super_feats)} super-net features but {len(base_feats)} base-net features")
        if not base_feats:
            raise ValueError("feature_kd needs the stage outputs: got no features (set feature_kd=False)")
        dims = [channel_dims] * len(base_feats) if isinstance(channel_dims, int) else list(channel_dims)
        if len(dims) != len(base_feats):
            raise ValueError(f"got {len(dims)} channel_dims for {len(base_feats)} features")
        # Sum over stages, as in Algorithm 1 (not a mean): every stage is pulled equally hard.
        feat = sum(
            (channel_kl(b, s, channel_dim=d, temperature=temperature, compiled=compiled)
             for b, s, d in zip(base_feats, super_feats, dims)),
            start=zero,
        )
    logit = (channel_kl(base_logits, super_logits, channel_dim=-1, temperature=temperature, compiled=compiled)
             if logit_kd else zero)
    return feat, logit


def super_loss(
    super_logits: Tensor,
    target: Tensor | None,
    *,
    alpha: float = 0.5,
    criterion: Criterion | None = None,
    teacher_logits: Tensor | None = None,
    temperature: float = 1.0,
    distill: bool = True,
    compiled_kl: bool = False,
) -> Tensor:
    """The super-net half of :func:`adn_loss`: ``alpha * CE(super, y)`` (``CE / 2`` without distillation).

    For the sequential order: back-propagate it right after the super-net forward, then pass the
    super-net outputs (they are detached inside) to :func:`base_loss`.
    """
    term = _supervised(super_logits, target, criterion, teacher_logits, temperature, compiled_kl)
    return term * (alpha if distill else 0.5)


def base_loss(
    base_logits: Tensor,
    base_feats: Sequence[Tensor],
    super_logits: Tensor,
    super_feats: Sequence[Tensor],
    target: Tensor | None,
    *,
    channel_dims: Sequence[int] | int,
    alpha: float = 0.5,
    temperature: float = 1.0,
    feature_kd: bool = True,
    logit_kd: bool = True,
    distill: bool = True,
    criterion: Criterion | None = None,
    teacher_logits: Tensor | None = None,
    kd_weight_features: float = 1.0,
    kd_weight_pre_logits: float = 0.0,
    base_pre: Tensor | None = None,
    super_pre: Tensor | None = None,
    compiled_kl: bool = False,
    im_weight: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The base-net half of :func:`adn_loss`, plus ``im_weight * IM(y_base)``.

    Returns:
        ``(weighted total, feature_kd, logit_kd, pre_logits_kd, im)``; the last four unweighted and
        detached. With ``distill=False`` the total is ``CE(base, y) / 2`` (+ IM) and the KD parts are 0.
    """
    zero = base_logits.new_zeros((), dtype=torch.float32)
    im = information_maximisation(base_logits) if im_weight else zero
    if not distill:
        supervised = _supervised(base_logits, target, criterion, teacher_logits, temperature, compiled_kl)
        return supervised * 0.5 + im_weight * im, zero, zero, zero, im.detach()
    if feature_kd or logit_kd or not (im_weight or kd_weight_pre_logits):  # the latter raises: nothing to learn
        feat, logit = _distill_terms(
            base_logits, base_feats, super_logits, super_feats, channel_dims=channel_dims, temperature=temperature,
            feature_kd=feature_kd, logit_kd=logit_kd, compiled=compiled_kl,
        )
    else:
        feat = logit = zero
    pre = pre_logits_mse(base_pre, super_pre) if kd_weight_pre_logits else zero
    total = (1.0 - alpha) * (kd_weight_features * feat + logit + kd_weight_pre_logits * pre) + im_weight * im
    return total, feat.detach(), logit.detach(), pre.detach(), im.detach()


def adn_loss(
    super_logits: Tensor,
    base_logits: Tensor,
    super_feats: Sequence[Tensor],
    base_feats: Sequence[Tensor],
    target: Tensor | None,
    *,
    channel_dims: Sequence[int] | int,
    alpha: float = 0.5,
    temperature: float = 1.0,
    feature_kd: bool = True,
    logit_kd: bool = True,
    distill: bool = True,
    teacher_logits: Tensor | None = None,
    criterion: Criterion | None = None,
    kd_weight_features: float = 1.0,
    kd_weight_pre_logits: float = 0.0,
    super_pre: Tensor | None = None,
    base_pre: Tensor | None = None,
    compiled_kl: bool = False,
    im_weight: float = 0.0,
) -> LossParts:
    """Skip-aware self-distillation loss for one mini-batch (joint order).

    Args:
        super_logits, base_logits: ``(B, C)`` outputs of the super-net (FF..F) and base-net (TT..T).
        super_feats, base_feats: stage outputs ``h^s`` of both passes, in stage order.
        target: class indices ``(B,)`` or soft targets ``(B, C)`` (mixup); unused with ``teacher_logits``.
        channel_dims: channel dimension of each feature (1 for NCHW, -1 for tokens); one int for all.
        alpha: weight of the supervised term; the distillation terms get ``1 - alpha``.
        temperature: softmax temperature of every KL term.
        feature_kd: include the per-stage feature KLs (False: logit-only ablation).
        logit_kd: include ``KL(y_super || y_base)``.
        distill: False gives the no-self-distillation ablation ``(CE(super) + CE(base)) / 2``.
        teacher_logits: label-free fine-tuning: ``KL(y_teacher || y_super)`` replaces ``CE(super, y)``.
        criterion: ``criterion(logits, target)``, e.g. timm's ``SoftTargetCrossEntropy`` with mixup or
            ``LabelSmoothingCrossEntropy``; default ``nn.CrossEntropyLoss()``.
        kd_weight_features: weight of the summed feature KLs relative to the logit KL.
        kd_weight_pre_logits: weight of :func:`pre_logits_mse` (an extension; 0 in the paper).
        super_pre, base_pre: the classifier's inputs of both passes, needed when that weight is set.
        compiled_kl: compute every KL term with the fused kernel (see :func:`channel_kl`).
        im_weight: weight of :func:`information_maximisation` of the base-net's logits (0: off).
    """
    if not distill:
        ce_super = _supervised(super_logits, target, criterion, teacher_logits, temperature, compiled_kl)
        ce_base = _supervised(base_logits, target, criterion, teacher_logits, temperature, compiled_kl)
        total = 0.5 * ce_super + 0.5 * ce_base
        zero = total.new_zeros(())
        im = information_maximisation(base_logits) if im_weight else None
        return LossParts(total=total + im_weight * im if im is not None else total, ce=total.detach(),
                         feature_kd=zero, logit_kd=zero, im=None if im is None else im.detach())
    ce = _supervised(super_logits, target, criterion, teacher_logits, temperature, compiled_kl)
    distilled, feat, logit, pre, im = base_loss(
        base_logits, base_feats, super_logits, super_feats, target, channel_dims=channel_dims, alpha=alpha,
        temperature=temperature, feature_kd=feature_kd, logit_kd=logit_kd, kd_weight_features=kd_weight_features,
        kd_weight_pre_logits=kd_weight_pre_logits, base_pre=base_pre, super_pre=super_pre, compiled_kl=compiled_kl,
        im_weight=im_weight,
    )
    return LossParts(total=alpha * ce + distilled, ce=ce.detach(), feature_kd=feat, logit_kd=logit,
                     pre_logits_kd=pre if kd_weight_pre_logits else None, im=im if im_weight else None)
