"""One training step of Algorithm 1 (docs/method.md), in the joint or the sequential order.

Everything the loss needs comes out of *one* forward call of the (possibly DDP-wrapped) model:

- joint: ``model(x)`` runs the super-net and the base-net and returns both, then one backward;
- sequential: ``model(x, "super")`` + backward inside ``accelerator.no_sync(model)``, then
  ``model(x, "base")`` + backward, which frees the super-net's activations before the base pass.

Both orders give the same gradient (the teacher side is detached in every KL term). The caller
does the optimizer step, so clipping, EMA and scheduling are shared with the plain baseline step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from torch import Tensor, nn

from ..adaptive import AdaptiveNet
from ..errors import AdnifyError
from .losses import LossParts, adn_loss, base_loss, channel_kl, super_loss
from .shared_prefix import SharedPrefix

__all__ = ["AdnPair", "LossConfig", "adn_step", "drop_path_off", "freeze_bn_stats", "plain_step"]


def _drop_path_modules(module: nn.Module) -> list[nn.Module]:
    """timm ``DropPath`` (``drop_prob``) and torchvision ``StochasticDepth`` (``p``) modules."""
    found = []
    for m in module.modules():
        name = type(m).__name__
        if (name == "DropPath" and hasattr(m, "drop_prob")) or (name == "StochasticDepth" and hasattr(m, "p")):
            found.append(m)
    return found


@contextlib.contextmanager
def drop_path_off(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Disable stochastic depth inside the block (the base-net pass), restoring the rates after."""
    saved = [(m, "drop_prob" if hasattr(m, "drop_prob") else "p") for m in modules]
    rates = [getattr(m, attr) for m, attr in saved]
    try:
        for m, attr in saved:
            setattr(m, attr, 0.0)
        yield
    finally:
        for (m, attr), rate in zip(saved, rates):
            setattr(m, attr, rate)


def freeze_bn_stats(module: nn.Module) -> int:
    """Put every BatchNorm layer in eval mode (running statistics fixed, used for normalising).

    Call it after each ``module.train()``. Returns how many layers it froze.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            count += 1
    return count


class AdnPair(nn.Module):
    """The module that gets prepared (DDP-wrapped): one call returns super- and base-net outputs.

    ``forward(x)`` returns ``((super_logits, super_feats), (base_logits, base_feats))``;
    ``forward(x, "super")`` / ``forward(x, "base")`` return one of them (the sequential order).
    Stochastic depth is off on the base-net pass. With ``pre_logits=True`` each ``feats`` list
    ends with the classifier's input (timm's ``get_classifier()``), after the stage outputs: it has
    to come out of the forward call itself to be DDP-safe. With ``share_prefix=True`` a base-net
    pass right after a super-net pass on the same images reuses the layers before the first
    adaptive stage (:mod:`adnify.train.shared_prefix`): the same gradients, one stem computation less.
    """

    def __init__(self, net: AdaptiveNet, *, pre_logits: bool = False, share_prefix: bool = True) -> None:
        super().__init__()
        self.net = net
        self.super_pattern = "F" * net.num_stages
        self.base_pattern = "T" * net.num_stages
        self._drop_paths = _drop_path_modules(net)
        self._classifier: tuple[nn.Module, ...] = ()  # a tuple: not registered as a second copy of the head
        if pre_logits:
            classifier = net.model.get_classifier() if hasattr(net.model, "get_classifier") else None
            if not isinstance(classifier, nn.Module) or isinstance(classifier, nn.Identity):
                raise AdnifyError(f"kd_weight_pre_logits needs a classifier layer; {type(net.model).__name__} "
                                  "has none (timm get_classifier())")
            self._classifier = (classifier,)
        first = net.plan.stages[0] if share_prefix and net.plan.stages else None
        self._prefix = SharedPrefix(
            net.model, net.model.get_submodule((first.mandatory + first.skippable)[0]) if first else None)

    def _run(self, x: Tensor, pattern: str) -> tuple[Tensor, list[Tensor]]:
        if not self._classifier:
            return self.net(x, skip=pattern, return_stages=True)
        # The hook lives only for this call: copies of the net (EMA, teacher) must not carry it.
        seen: list[Tensor] = []
        handle = self._classifier[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            logits, feats = self.net(x, skip=pattern, return_stages=True)
        finally:
            handle.remove()
        return logits, [*feats, seen[-1]]

    def forward(self, x: Tensor, which: str = "both") -> Any:
        if which not in ("both", "super", "base"):
            raise ValueError(f"which must be 'both', 'super' or 'base', not {which!r}")
        outputs = []
        if which != "base":
            # Alone (the sequential order), the super-net's backward stops at the prefix output.
            with self._prefix.record(x, detach=which == "super"):
                outputs.append(self._run(x, self.super_pattern))
            self._prefix.check_reuse(outputs[0])
        if which != "super":
            with self._prefix.replay(x), drop_path_off(self._drop_paths):
                outputs.append(self._run(x, self.base_pattern))
        return tuple(outputs) if which == "both" else outputs[0]


@dataclass(frozen=True)
class LossConfig:
    """The recipe keys of the loss, and the channel dimension of every stage output."""

    channel_dims: tuple[int, ...]
    alpha: float = 0.5
    temperature: float = 1.0
    distill: bool = True
    feature_kd: bool = True
    logit_kd: bool = True
    kd_weight_features: float = 1.0
    kd_weight_pre_logits: float = 0.0
    compiled_kl: bool = False
    im_weight: float = 0.0

    @property
    def reads_super(self) -> bool:
        """Whether the base-net's loss needs the super-net's outputs (False: IM alone)."""
        return self.distill and (self.feature_kd or self.logit_kd or self.kd_weight_pre_logits > 0)

    @classmethod
    def from_config(cls, config: dict[str, Any], net: AdaptiveNet) -> "LossConfig":
        return cls(
            channel_dims=tuple(s.channel_dim for s in net.plan.stages),
            alpha=config["alpha"], temperature=config["temperature"], distill=config["distill"],
            feature_kd=config["feature_kd"], logit_kd=config["logit_kd"],
            kd_weight_features=config["kd_weight_features"],
            kd_weight_pre_logits=config["kd_weight_pre_logits"], compiled_kl=config["compile_loss"],
            im_weight=config["im_weight"],
        )

    def kwargs(self) -> dict[str, Any]:
        return dict(channel_dims=list(self.channel_dims), alpha=self.alpha, temperature=self.temperature,
                    feature_kd=self.feature_kd, logit_kd=self.logit_kd, distill=self.distill,
                    kd_weight_features=self.kd_weight_features, kd_weight_pre_logits=self.kd_weight_pre_logits,
                    compiled_kl=self.compiled_kl, im_weight=self.im_weight)

    def split(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        """Stage outputs and, when the pass returned one more tensor, its pre-logit features
        (an :class:`AdnPair` built with ``pre_logits=True``)."""
        if len(feats) == len(self.channel_dims) + 1:
            return feats[:-1], feats[-1]
        return feats, None


def adn_step(
    accelerator: Any,
    model: nn.Module,
    x: Tensor,
    target: Tensor | None,
    loss: LossConfig,
    *,
    order: str = "joint",
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    teacher_logits: Tensor | None = None,
    super_is_teacher: bool = False,
) -> LossParts:
    """Forward and backward of one mini-batch; gradients are left in ``.grad`` for the caller's step.

    Args:
        accelerator: the ``accelerate.Accelerator`` (``backward``, ``no_sync``, ``autocast``).
        model: the prepared :class:`AdnPair`.
        x, target: the batch (``target``: class indices or mixup's soft targets; None label-free).
        loss: weights and switches of the loss.
        order: ``joint`` or ``sequential``.
        criterion: supervised loss, default cross-entropy.
        teacher_logits: label-free fine-tuning: ``KL(y_teacher || y_super)`` replaces the CE term.
        super_is_teacher: label-free, with no super-net parameter training (``train_params:
            skip_norms``): the super-net computes the converted model, so it is its own teacher. Its
            term is zero and no frozen copy has to run.
    """
    if super_is_teacher and (teacher_logits is not None or target is not None):
        raise ValueError("super_is_teacher is label-free: pass neither target nor teacher_logits")
    if super_is_teacher and not loss.reads_super:
        # Nothing reads the frozen super-net (IM on the base-net alone): its pass would be wasted.
        with accelerator.autocast():
            b_logits, b_feats = model(x, "base")
            b_feats, b_pre = loss.split(b_feats)
            b_total, feat, logit, pre, im = base_loss(b_logits, b_feats, b_logits.detach(), [], None,
                                                      base_pre=b_pre, **loss.kwargs())
        accelerator.backward(b_total)
        zero = b_total.detach().new_zeros(())
        return LossParts(total=b_total.detach(), ce=zero, feature_kd=feat, logit_kd=logit, im=im)
    if order == "joint":
        with accelerator.autocast():
            (s_logits, s_feats), (b_logits, b_feats) = model(x)
            teacher_logits = s_logits.detach() if super_is_teacher else teacher_logits
            (s_feats, s_pre), (b_feats, b_pre) = loss.split(s_feats), loss.split(b_feats)
            parts = adn_loss(s_logits, b_logits, s_feats, b_feats, target, teacher_logits=teacher_logits,
                             criterion=criterion, super_pre=s_pre, base_pre=b_pre, **loss.kwargs())
        accelerator.backward(parts.total)
        return parts
    if order != "sequential":
        raise ValueError(f"order must be 'joint' or 'sequential', not {order!r}")
    # Super-net first, without gradient synchronisation: its gradient is reduced with the base-net's.
    with accelerator.no_sync(model):
        with accelerator.autocast():
            s_logits, s_feats = model(x, "super")
            teacher_logits = s_logits.detach() if super_is_teacher else teacher_logits
            ce = super_loss(s_logits, target, alpha=1.0, criterion=criterion, teacher_logits=teacher_logits,
                            temperature=loss.temperature, compiled_kl=loss.compiled_kl)
        weight = loss.alpha if loss.distill else 0.5
        if ce.requires_grad:  # not when only the skip-aware norms train (train_params: skip_norms)
            accelerator.backward(ce * weight)
    s_logits, s_feats = s_logits.detach(), [f.detach() for f in s_feats]  # frees the super-net graph
    s_feats, s_pre = loss.split(s_feats)
    with accelerator.autocast():
        b_logits, b_feats = model(x, "base")
        b_feats, b_pre = loss.split(b_feats)
        b_total, feat, logit, pre, im = base_loss(b_logits, b_feats, s_logits, s_feats, target, criterion=criterion,
                                              teacher_logits=teacher_logits, super_pre=s_pre, base_pre=b_pre,
                                              **loss.kwargs())
    accelerator.backward(b_total)
    total = (ce.detach() * weight + b_total.detach())
    return LossParts(total=total, ce=total if not loss.distill else ce.detach(), feature_kd=feat, logit_kd=logit,
                     pre_logits_kd=pre if loss.kd_weight_pre_logits else None, im=im if loss.im_weight else None)


def plain_step(
    accelerator: Any,
    model: nn.Module,
    x: Tensor,
    target: Tensor | None,
    *,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    teacher_logits: Tensor | None = None,
    temperature: float = 1.0,
) -> LossParts:
    """The baseline: one network, cross-entropy (or ``KL(y_teacher || y)`` label-free)."""
    with accelerator.autocast():
        logits = model(x)
        if teacher_logits is not None:
            total = channel_kl(logits, teacher_logits, channel_dim=-1, temperature=temperature)
        else:
            total = (criterion or nn.CrossEntropyLoss())(logits, target)
    accelerator.backward(total)
    zero = total.detach().new_zeros(())
    return LossParts(total=total, ce=total.detach(), feature_kd=zero, logit_kd=zero)
