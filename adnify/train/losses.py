"""Skip-aware self-distillation loss (Algorithm 1 of the ADN paper, see docs/method.md), term by term.

The loss of one mini-batch is a weighted sum of named terms (:class:`LossConfig` holds the weights)::

    loss = w_label * CE(y_super, y)                                   "ce"
         + w_base_label * CE(y_base, y)                               "base_ce"
         + r * w_distill * ( w_f * sum_s KL_f(h_super^s || h_base^s)  "feature_kd"
                           + KL_K(y_super || y_base)                  "logit_kd"
                           + w_p * MSE(z_base, z_super) )             "pre_logits_kd"
         + w_teacher * (KL(y_orig || y_super) + KL(y_orig || y_base)) "teacher_kd", "base_teacher_kd"
         + w_im * IM(y_base)                                          "im"

``r`` ramps from 0 to 1 over the distillation warm-up. ``KL_f`` is ``none`` (off), ``pooled`` (each
stage output globally average-pooled to ``(B, C)`` first: the official code's ``--fpn`` form) or
``dense`` (a channel KL at every position, averaged over positions). ``KL_K`` is restricted to the
super-net's top-K classes when ``kd_topk`` is set (the official code uses 500). The paper's
parametrisation is ``w_label = alpha``, ``w_distill = 1 - alpha`` with ``alpha = 0.5``.

The super-net (teacher) side of every KL term is detached, so the super-net learns only from the
labels (label-free: from the original model) and the base-net from the super-net. :func:`adn_loss`
computes everything at once (the *joint* order); :func:`super_loss` and :func:`base_loss` are its
two halves for the *sequential* order, and ``adn_loss == super_loss + base_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kl import channel_kl

__all__ = ["FEATURE_KD", "LossConfig", "LossParts", "adn_loss", "base_loss", "channel_kl", "information_maximisation",
           "pooled", "pre_logits_mse", "super_loss", "topk_kl"]

NO_BASE_TERM = ("the base-net has no loss term: set base_label_weight, distill_weight (with feature_kd or logit_kd), "
                "teacher_weight or im_weight above 0")

#: The forms of the stage-feature term.
FEATURE_KD = ("none", "pooled", "dense")

Criterion = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LossConfig:
    """Weights and switches of every loss term, and the channel dimension of every stage output.

    Built from a recipe by :meth:`from_config`; the module docstring gives the formula. All weights
    are non-negative; a term whose weight is 0 is not computed.
    """

    channel_dims: tuple[int, ...] = ()
    label_weight: float = 1.0
    distill_weight: float = 1.0
    base_label_weight: float = 0.0
    distill: bool = True
    feature_kd: str = "none"
    feature_kd_stages: tuple[int, ...] | None = None  # 1-based stage numbers; None = every stage
    kd_weight_features: float = 1.0
    logit_kd: bool = True
    kd_topk: int | None = None
    temperature: float = 1.0
    teacher_weight: float = 0.0
    kd_weight_pre_logits: float = 0.0
    im_weight: float = 0.0
    compiled_kl: bool = False

    def __post_init__(self) -> None:
        if self.feature_kd not in FEATURE_KD:
            raise ValueError(f"feature_kd must be one of {', '.join(FEATURE_KD)}, not {self.feature_kd!r}")
        for name in ("label_weight", "distill_weight", "base_label_weight", "kd_weight_features", "teacher_weight",
                     "kd_weight_pre_logits", "im_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        if self.kd_topk is not None and self.kd_topk < 1:
            raise ValueError(f"kd_topk must be at least 1 (or None for every class), not {self.kd_topk}")

    @classmethod
    def from_config(cls, config: dict[str, Any], net: Any = None) -> "LossConfig":
        """The loss of a resolved recipe (:func:`adnify.train.recipes.load_recipe`) for ``net``."""
        label, distill = loss_weights(config)
        stages = config.get("feature_kd_stages")
        return cls(
            channel_dims=tuple(s.channel_dim for s in net.plan.stages) if net is not None else (),
            label_weight=label, distill_weight=distill, base_label_weight=config["base_label_weight"],
            distill=config["distill"], feature_kd=config["feature_kd"],
            feature_kd_stages=tuple(stages) if stages is not None else None,
            kd_weight_features=config["kd_weight_features"], logit_kd=config["logit_kd"], kd_topk=config["kd_topk"],
            temperature=config["temperature"], teacher_weight=config["teacher_weight"],
            kd_weight_pre_logits=config["kd_weight_pre_logits"], im_weight=config["im_weight"],
            compiled_kl=config["compile_loss"],
        )

    @property
    def reads_super(self) -> bool:
        """Whether any term distils the super-net into the base-net, so the base-net's loss needs the
        super-net's outputs (False: e.g. IM alone)."""
        return self.distill and self.distill_weight > 0 and (
            self.feature_kd != "none" or self.logit_kd or self.kd_weight_pre_logits > 0)

    @property
    def base_supervised_weight(self) -> float:
        """Weight of the base-net's own label term: without distillation it learns from the labels
        with the super-net's weight (the paper's ablation ``(CE(super) + CE(base)) / 2`` at alpha 0.5)."""
        if self.distill:
            return self.base_label_weight
        return self.base_label_weight or self.label_weight

    @property
    def trains_base(self) -> bool:
        """Whether any term reaches the base-net (else :func:`base_loss` raises)."""
        return self.base_supervised_weight > 0 or self.reads_super or self.teacher_weight > 0 or self.im_weight > 0

    def stage_indices(self) -> list[int]:
        """0-based indices of the stages the feature term reads."""
        n = len(self.channel_dims)
        if self.feature_kd_stages is None:
            return list(range(n))
        return [s - 1 for s in self.feature_kd_stages]

    def split(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        """Stage outputs and, when the pass returned one more tensor, its pre-logit features
        (an :class:`~adnify.train.steps.AdnPair` built with ``pre_logits=True``)."""
        if len(feats) == len(self.channel_dims) + 1:
            return feats[:-1], feats[-1]
        return feats, None


def loss_weights(config: dict[str, Any]) -> tuple[float, float]:
    """``(label weight, distillation weight)`` of a recipe: ``(alpha, 1 - alpha)`` when ``alpha`` is set
    (the paper's parametrisation), else ``label_weight`` and ``distill_weight``."""
    alpha = config.get("alpha")
    if alpha is not None:
        return float(alpha), 1.0 - float(alpha)
    return float(config["label_weight"]), float(config["distill_weight"])


@dataclass
class LossParts:
    """The loss to back-propagate and its named terms.

    Attributes:
        total: the weighted sum; call ``backward()`` on it (detached once a step has run backward).
        terms: ``name -> (weight, unweighted value)``; the values keep their graph until the step's
            backward, so that :func:`adnify.train.steps.adn_step` can measure each term's gradient.
    """

    total: Tensor
    terms: dict[str, tuple[float, Tensor]] = field(default_factory=dict)

    def value(self, name: str) -> float | None:
        """The unweighted value of a term, or None when the term is off."""
        found = self.terms.get(name)
        return None if found is None else float(found[1].detach())

    def as_floats(self) -> dict[str, float]:
        """Python floats for a log line: ``loss`` and every term, unweighted."""
        return {"loss": float(self.total.detach()), **{k: float(v.detach()) for k, (_, v) in self.terms.items()}}

    def __add__(self, other: "LossParts") -> "LossParts":
        return LossParts(self.total + other.total, {**self.terms, **other.terms})


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


def pooled(feature: Tensor, channel_dim: int) -> Tensor:
    """A stage output globally average-pooled to ``(B, C)``: every dimension but batch and channels."""
    dim = channel_dim % feature.dim()
    rest = [d for d in range(1, feature.dim()) if d != dim]
    return feature.mean(dim=rest) if rest else feature


def topk_kl(student: Tensor, teacher: Tensor, k: int | None, *, temperature: float = 1.0,
            compiled: bool = False) -> Tensor:
    """``KL(teacher || student)`` over the logits, restricted to each image's top-``k`` teacher classes
    (the softmax is taken over those ``k`` only, as in the official code); ``k=None``: every class."""
    if k is not None and k < student.shape[-1]:
        index = teacher.detach().topk(k, dim=-1).indices
        student, teacher = student.gather(-1, index), teacher.gather(-1, index)
    return channel_kl(student, teacher, channel_dim=-1, temperature=temperature, compiled=compiled)


def _supervised(logits: Tensor, target: Tensor | None, criterion: Criterion | None, teacher_logits: Tensor | None,
                cfg: LossConfig) -> Tensor:
    """CE against the labels, or, label-free, KL from the original model's logits."""
    if teacher_logits is not None:
        return channel_kl(logits, teacher_logits, channel_dim=-1, temperature=cfg.temperature,
                          compiled=cfg.compiled_kl)
    if target is None:
        raise ValueError("a target is needed when no teacher_logits are given (labels: none needs a teacher)")
    # nn.CrossEntropyLoss accepts class indices (B,) and probabilities (B, C), i.e. mixup's soft targets.
    return (criterion if criterion is not None else nn.CrossEntropyLoss())(logits, target)


def _feature_term(base_feats: Sequence[Tensor], super_feats: Sequence[Tensor], cfg: LossConfig) -> Tensor:
    if len(super_feats) != len(base_feats):
        raise ValueError(f"got {len(super_feats)} super-net features but {len(base_feats)} base-net features")
    if not base_feats:
        raise ValueError("the feature term needs the stage outputs: got no features (set feature_kd: none)")
    dims = list(cfg.channel_dims) if cfg.channel_dims else [1] * len(base_feats)
    if len(dims) != len(base_feats):
        raise ValueError(f"got {len(dims)} channel_dims for {len(base_feats)} features")
    picked = cfg.stage_indices()
    if any(not 0 <= i < len(base_feats) for i in picked):
        raise ValueError(f"feature_kd_stages {list(cfg.feature_kd_stages or [])} name stages beyond the "
                         f"{len(base_feats)} of this network")
    terms = []
    for i in picked:  # a sum over stages, as in Algorithm 1 (not a mean): every stage is pulled equally hard
        b, s, d = base_feats[i], super_feats[i], dims[i]
        if cfg.feature_kd == "pooled":
            b, s, d = pooled(b, d), pooled(s, d), -1
        terms.append(channel_kl(b, s, channel_dim=d, temperature=cfg.temperature, compiled=cfg.compiled_kl))
    return torch.stack(terms).sum()


def super_loss(
    super_logits: Tensor,
    target: Tensor | None,
    cfg: LossConfig,
    *,
    criterion: Criterion | None = None,
    teacher_logits: Tensor | None = None,
    original_logits: Tensor | None = None,
) -> LossParts:
    """The super-net half of :func:`adn_loss`: the label term and the original model's term.

    For the sequential order: back-propagate it right after the super-net forward, then pass the
    super-net outputs (they are detached inside) to :func:`base_loss`.
    """
    terms: dict[str, tuple[float, Tensor]] = {}
    if cfg.label_weight > 0:
        terms["ce"] = (cfg.label_weight, _supervised(super_logits, target, criterion, teacher_logits, cfg))
    if cfg.teacher_weight > 0:
        if original_logits is None:
            raise ValueError("teacher_weight > 0 needs the original model's logits")
        terms["teacher_kd"] = (cfg.teacher_weight, channel_kl(super_logits, original_logits, channel_dim=-1,
                                                              temperature=cfg.temperature, compiled=cfg.compiled_kl))
    return LossParts(_weighted(terms, super_logits), terms)


def base_loss(
    base_logits: Tensor,
    base_feats: Sequence[Tensor],
    super_logits: Tensor,
    super_feats: Sequence[Tensor],
    target: Tensor | None,
    cfg: LossConfig,
    *,
    criterion: Criterion | None = None,
    teacher_logits: Tensor | None = None,
    original_logits: Tensor | None = None,
    base_pre: Tensor | None = None,
    super_pre: Tensor | None = None,
    kd_scale: float = 1.0,
) -> LossParts:
    """The base-net half of :func:`adn_loss`; ``kd_scale`` is the distillation warm-up factor (0..1)."""
    terms: dict[str, tuple[float, Tensor]] = {}
    if cfg.base_supervised_weight > 0:
        terms["base_ce"] = (cfg.base_supervised_weight,
                            _supervised(base_logits, target, criterion, teacher_logits, cfg))
    if cfg.reads_super:
        w = cfg.distill_weight * kd_scale
        if cfg.feature_kd != "none":
            terms["feature_kd"] = (w * cfg.kd_weight_features, _feature_term(base_feats, super_feats, cfg))
        if cfg.logit_kd:
            terms["logit_kd"] = (w, topk_kl(base_logits, super_logits, cfg.kd_topk, temperature=cfg.temperature,
                                            compiled=cfg.compiled_kl))
        if cfg.kd_weight_pre_logits > 0:
            terms["pre_logits_kd"] = (w * cfg.kd_weight_pre_logits, pre_logits_mse(base_pre, super_pre))
    if cfg.teacher_weight > 0:
        if original_logits is None:
            raise ValueError("teacher_weight > 0 needs the original model's logits")
        terms["base_teacher_kd"] = (cfg.teacher_weight, channel_kl(base_logits, original_logits, channel_dim=-1,
                                                                   temperature=cfg.temperature,
                                                                   compiled=cfg.compiled_kl))
    if cfg.im_weight > 0:
        terms["im"] = (cfg.im_weight, information_maximisation(base_logits))
    if not terms:
        raise ValueError(NO_BASE_TERM)
    return LossParts(_weighted(terms, base_logits), terms)


def _weighted(terms: dict[str, tuple[float, Tensor]], like: Tensor) -> Tensor:
    total = like.new_zeros((), dtype=torch.float32)
    for weight, value in terms.values():
        total = total + weight * value
    return total


def adn_loss(
    super_logits: Tensor,
    base_logits: Tensor,
    super_feats: Sequence[Tensor],
    base_feats: Sequence[Tensor],
    target: Tensor | None,
    cfg: LossConfig,
    *,
    criterion: Criterion | None = None,
    teacher_logits: Tensor | None = None,
    original_logits: Tensor | None = None,
    super_pre: Tensor | None = None,
    base_pre: Tensor | None = None,
    kd_scale: float = 1.0,
) -> LossParts:
    """Skip-aware self-distillation loss for one mini-batch (joint order): ``super_loss + base_loss``.

    Args:
        super_logits, base_logits: ``(B, C)`` outputs of the super-net (FF..F) and base-net (TT..T).
        super_feats, base_feats: stage outputs ``h^s`` of both passes, in stage order.
        target: class indices ``(B,)`` or soft targets ``(B, C)`` (mixup); unused with ``teacher_logits``.
        cfg: the weights and forms of the terms.
        criterion: ``criterion(logits, target)``, e.g. timm's ``SoftTargetCrossEntropy`` with mixup;
            default ``nn.CrossEntropyLoss()``.
        teacher_logits: label-free: ``KL(y_teacher || y)`` replaces ``CE(y, target)``.
        original_logits: the frozen original model's logits (``teacher_weight > 0``).
        super_pre, base_pre: the classifier's inputs of both passes (``kd_weight_pre_logits > 0``).
        kd_scale: the distillation warm-up factor.
    """
    first = super_loss(super_logits, target, cfg, criterion=criterion, teacher_logits=teacher_logits,
                       original_logits=original_logits)
    second = base_loss(base_logits, base_feats, super_logits, super_feats, target, cfg, criterion=criterion,
                       teacher_logits=teacher_logits, original_logits=original_logits, base_pre=base_pre,
                       super_pre=super_pre, kd_scale=kd_scale)
    return first + second
