"""The layers before the first adaptive stage, computed once per step for both sub-networks.

Super-net and base-net differ only from the first adaptive stage on: the stem (and any other layer
before it) computes the same tensor ``z`` from the same images in both passes. On the CPU the stem of
a ResNet-50 is about 5% of a training step, so the base-net pass replays the super-net's ``z``
instead of recomputing it. Its gradient is the same, because the prefix receives the sum of both
passes' gradients in one backward:

- joint order: both passes are one autograd graph, and ``z`` is simply used twice;
- sequential order: the super-net pass continues from a detached copy of ``z``, so its backward
  stops there; the base-net pass adds that gradient to its own at ``z`` (:class:`_AddGrad`), so
  the prefix is back-propagated once, inside the base-net backward (the one DDP synchronises).

BatchNorm layers in the prefix update their running statistics once per step, as in plain training,
and a dropout layer there (a ViT's ``pos_drop``) draws one mask for both passes.

A model that feeds a prefix output to later layers too (a long skip from the stem) cannot stop the
super-net's backward at ``z``. The first sequential pass finds this in the autograd graph; that
step's base-net pass then recomputes the prefix (still adding the super-net's gradient at ``z``), and
sharing stays off from then on, with one warning.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import Tensor, nn

__all__ = ["SharedPrefix"]


class _AddGrad(torch.autograd.Function):
    """Identity forward; the backward adds a gradient computed earlier (the super-net's at ``z``)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, extra: Tensor) -> Tensor:
        ctx.save_for_backward(extra)
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (extra,) = ctx.saved_tensors
        return grad + extra, None


def _reaches(roots: list[Any], targets: set[int]) -> bool:
    """Whether a walk of the autograd graph from ``roots`` meets a node whose id is in ``targets``."""
    seen: dict[int, Any] = {}  # holding the nodes keeps their ids unique during the walk
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if id(node) in targets:
            return True
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(n for n, _ in node.next_functions if n is not None)
    return False


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class SharedPrefix:
    """Records the prefix during a super-net pass and replays it in the following base-net pass.

    Args:
        model: the wrapped timm model (``AdaptiveNet.model``).
        first_block: the first mandatory block of the first adaptive stage: where ``z`` enters.
            None turns sharing off: both passes compute the prefix.
    """

    def __init__(self, model: nn.Module, first_block: nn.Module | None) -> None:
        self.first_block = first_block
        self._parents = {id(child): parent for parent in model.modules() for child in parent.children()}
        self._model = model
        self._outermost: list[nn.Module] | None = None  # found on the first recorded pass
        self._checked = False  # whether a sequential pass has looked for later uses of the prefix
        self._reused = False
        self._clear()

    def _clear(self) -> None:
        self._images: Tensor | None = None
        self._z: Tensor | None = None
        self._z_leaf: Tensor | None = None
        self._outputs: dict[int, Any] = {}

    @contextlib.contextmanager
    def record(self, x: Tensor, *, detach: bool) -> Iterator[None]:
        """Run a super-net pass inside: remember ``z`` (and the prefix layers' outputs) for ``x``.

        ``detach=True`` (sequential order) makes the pass continue from a leaf copy of ``z``.
        """
        self._clear()
        if self.first_block is None:
            yield
            return
        calls: dict[int, int] = {}
        finished: list[nn.Module] = []
        watched = self._outermost if self._outermost is not None else list(self._model.modules())
        in_prefix = [True]

        def after(module: nn.Module, _args: Any, output: Any) -> None:
            if in_prefix[0]:
                calls[id(module)] = calls.get(id(module), 0) + 1
                self._outputs[id(module)] = output
                finished.append(module)

        def enter(_module: nn.Module, args: tuple) -> tuple | None:
            if not in_prefix[0]:
                return None
            in_prefix[0] = False
            if not args or not isinstance(args[0], Tensor):
                return None
            z = args[0]
            self._z, self._images = z, x
            if detach and torch.is_grad_enabled() and z.requires_grad:
                self._z_leaf = z.detach().requires_grad_()
                return (self._z_leaf, *args[1:])
            return None

        handles = [m.register_forward_hook(after) for m in watched if m is not self._model]
        handles.append(self.first_block.register_forward_pre_hook(enter))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if self._outermost is None and self._z is not None:
            seen = {id(m) for m in finished}
            self._outermost = [m for m in finished if id(self._parents.get(id(m))) not in seen]
        if self._z is None or any(calls.get(id(m), 0) != 1 for m in self._outermost or ()):
            self._clear()  # a layer ran twice in the prefix (or never): replaying it would be wrong

    def check_reuse(self, outputs: Any) -> None:
        """After the first detached super-net pass: do its ``outputs`` depend on the prefix other
        than through ``z``? Then this step's base-net pass recomputes the prefix, and sharing ends."""
        if self._checked or self._z_leaf is None:
            return
        self._checked = True
        targets = {id(t.grad_fn) for t in _tensors(list(self._outputs.values())) if t.grad_fn is not None}
        if self._z is not None and self._z.grad_fn is not None:
            targets.add(id(self._z.grad_fn))
        if _reaches([t.grad_fn for t in _tensors(outputs)], targets):
            self._reused = True
            warnings.warn(f"{type(self._model).__name__} uses the output of its layers before the first adaptive "
                          "stage again later; the two passes of a sequential step compute them separately "
                          "(share_prefix is off for this model)", RuntimeWarning, stacklevel=3)

    @contextlib.contextmanager
    def replay(self, x: Tensor) -> Iterator[None]:
        """Run a base-net pass inside: the prefix layers return what they returned for ``x`` before."""
        if self._images is not x or self._z is None or not self._outermost:
            self._clear()
            yield
            return
        z, leaf, outputs, recompute = self._z, self._z_leaf, self._outputs, self._reused
        outermost, first_block = self._outermost, self.first_block
        self._clear()
        if recompute:
            self.first_block = None  # from the next step on, both passes compute the prefix
        in_prefix = [True]

        def enter(_module: nn.Module, args: tuple) -> tuple:
            in_prefix[0] = False
            start = args[0] if recompute else z
            if leaf is not None and leaf.grad is not None:
                return (_AddGrad.apply(start, leaf.grad), *args[1:])
            return (start, *args[1:])

        def replaying(module: nn.Module) -> Any:
            real = module.forward

            def forward(*args: Any, **kwargs: Any) -> Any:
                return outputs[id(module)] if in_prefix[0] else real(*args, **kwargs)

            return forward

        replayed = [] if recompute else outermost
        for m in replayed:
            m.forward = replaying(m)  # an instance attribute shadows the class's forward
        handle = first_block.register_forward_pre_hook(enter)
        try:
            yield
        finally:
            handle.remove()
            for m in replayed:
                del m.forward
