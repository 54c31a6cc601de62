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
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..adaptive import AdaptiveNet
from ..errors import AdnifyError
from .losses import LossConfig, LossParts, base_loss, channel_kl, super_loss
from .shared_prefix import SharedPrefix

__all__ = ["AdnPair", "GradProbe", "LossConfig", "adn_step", "drop_path_off", "freeze_bn_stats", "plain_step"]


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

    def forward(self, x: Tensor, which: str = "both", second: str | None = None) -> Any:
        """``second``: the pattern of the base-net pass (default the base-net, ``T...T``), e.g. a
        sub-network between the ends (``middle_prob``)."""
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
                outputs.append(self._run(x, second or self.base_pattern))
        return tuple(outputs) if which == "both" else outputs[0]


class GradProbe:
    """Measures the gradient norm that each loss term sends into the shared weights (logging steps only).

    The shared weights are those that terms of both ends reach, except the skip-aware norm copies:
    not the skippable blocks (super-net only) nor either copy of a norm pair. Each term costs one extra
    backward through its own graph, so probe only on logged steps. In the sequential order with
    ``share_prefix`` the super-net's gradient reaches the layers before the first adaptive stage only
    with the base pass, so those layers are not counted there.
    """

    def __init__(self, named_params: Sequence[tuple[str, nn.Parameter]]) -> None:
        trained = [(n, p) for n, p in named_params if p.requires_grad]
        self.params = [p for _, p in trained]
        self._copies = [".skip_copy." in n for n, _ in trained]
        self._used: dict[str, list[bool]] = {}
        self._squares: dict[str, list[float]] = {}

    def measure(self, parts: LossParts, side: str) -> None:
        """Record each term's per-parameter squared gradient norms; ``side`` is ``super`` or ``base``."""
        for name, (weight, value) in parts.terms.items():
            if weight <= 0 or not value.requires_grad:
                continue
            grads = torch.autograd.grad(weight * value, self.params, retain_graph=True, allow_unused=True)
            self._squares[name] = [0.0 if g is None else float(g.detach().float().pow(2).sum()) for g in grads]
            used = self._used.setdefault(side, [False] * len(grads))
            self._used[side] = [u or g is not None for u, g in zip(used, grads)]

    def norms(self) -> dict[str, float]:
        """``term -> L2 norm`` over the shared weights, then reset."""
        sides = list(self._used.values())
        both = [all(col) for col in zip(*sides)] if sides else []
        shared = [keep and not copy for keep, copy in zip(both, self._copies)]
        out = {name: sum(v for v, keep in zip(sq, shared) if keep) ** 0.5 for name, sq in self._squares.items()}
        self._used, self._squares = {}, {}
        return out


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
    original_logits: Tensor | None = None,
    super_is_teacher: bool = False,
    kd_scale: float = 1.0,
    probe: GradProbe | None = None,
    second: str | None = None,
) -> LossParts:
    """Forward and backward of one mini-batch; gradients are left in ``.grad`` for the caller's step.

    Args:
        accelerator: the ``accelerate.Accelerator`` (``backward``, ``no_sync``, ``autocast``).
        model: the prepared :class:`AdnPair`.
        x, target: the batch (``target``: class indices or mixup's soft targets; None label-free).
        loss: weights and forms of the loss terms.
        order: ``joint`` or ``sequential``.
        criterion: supervised loss, default cross-entropy.
        teacher_logits: label-free fine-tuning: ``KL(y_teacher || y_super)`` replaces the CE term.
        original_logits: the frozen original model's logits, for ``teacher_weight > 0`` (with labels).
        super_is_teacher: label-free, with no super-net parameter training (``train_params:
            skip_norms``): the super-net computes the converted model, so it is its own teacher. Its
            term is zero and no frozen copy has to run.
        kd_scale: the distillation warm-up factor (0..1) for this step.
        probe: when given, each term's gradient norm into the shared weights is measured first.
        second: the pattern of the second pass (default the base-net): a sub-network between the
            ends learns from the same terms as the base-net would (``middle_prob``).
    """
    if super_is_teacher and (teacher_logits is not None or target is not None):
        raise ValueError("super_is_teacher is label-free: pass neither target nor teacher_logits")
    common = dict(criterion=criterion, original_logits=original_logits)
    if super_is_teacher and not loss.reads_super:
        # Nothing reads the frozen super-net (IM on the base-net alone): its pass would be wasted.
        with accelerator.autocast():
            b_logits, b_feats = model(x, "base", second)
            b_feats, b_pre = loss.split(b_feats)
            parts = base_loss(b_logits, b_feats, b_logits.detach(), [], None, loss, base_pre=b_pre,
                              kd_scale=kd_scale, **common)
        if probe is not None:
            probe.measure(parts, "base")
        accelerator.backward(parts.total)
        return _detached(parts)
    if order == "joint":
        with accelerator.autocast():
            (s_logits, s_feats), (b_logits, b_feats) = model(x, "both", second)
            teacher_logits = s_logits.detach() if super_is_teacher else teacher_logits
            (s_feats, s_pre), (b_feats, b_pre) = loss.split(s_feats), loss.split(b_feats)
            first = super_loss(s_logits, target, loss, teacher_logits=teacher_logits, **common)
            rest = base_loss(b_logits, b_feats, s_logits, s_feats, target, loss, teacher_logits=teacher_logits,
                             super_pre=s_pre, base_pre=b_pre, kd_scale=kd_scale, **common)
        if probe is not None:
            probe.measure(first, "super")
            probe.measure(rest, "base")
        parts = first + rest
        accelerator.backward(parts.total)
        return _detached(parts)
    if order != "sequential":
        raise ValueError(f"order must be 'joint' or 'sequential', not {order!r}")
    # Super-net first, without gradient synchronisation: its gradient is reduced with the base-net's.
    with accelerator.no_sync(model):
        with accelerator.autocast():
            s_logits, s_feats = model(x, "super")
            teacher_logits = s_logits.detach() if super_is_teacher else teacher_logits
            first = super_loss(s_logits, target, loss, teacher_logits=teacher_logits, **common)
        if probe is not None:
            probe.measure(first, "super")
        if first.total.requires_grad:  # not when only the skip-aware norms train (train_params: skip_norms)
            accelerator.backward(first.total)
    first = _detached(first)
    s_logits, s_feats = s_logits.detach(), [f.detach() for f in s_feats]  # frees the super-net graph
    s_feats, s_pre = loss.split(s_feats)
    with accelerator.autocast():
        b_logits, b_feats = model(x, "base", second)
        b_feats, b_pre = loss.split(b_feats)
        rest = base_loss(b_logits, b_feats, s_logits, s_feats, target, loss, teacher_logits=teacher_logits,
                           super_pre=s_pre, base_pre=b_pre, kd_scale=kd_scale, **common)
    if probe is not None:
        probe.measure(rest, "base")
    accelerator.backward(rest.total)
    return first + _detached(rest)


def _detached(parts: LossParts) -> LossParts:
    return LossParts(parts.total.detach(), {k: (w, v.detach()) for k, (w, v) in parts.terms.items()})


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
    return LossParts(total.detach(), {"ce": (1.0, total.detach())})
