"""``KL(softmax(teacher / T) || softmax(student / T))`` over one dimension, with its gradient written out.

The distillation terms' largest tensors pass through here, so the forward computes the value and the
unscaled gradient together and keeps only the gradient; ``compiled=True`` fuses both into one
``torch.compile`` kernel (eager fallback with one warning where compiling is impossible).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import first_line

__all__ = ["channel_kl"]


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
            warnings.warn(f"compiling the KL loss failed, using eager mode instead: {first_line(err, with_type=True)}",
                          RuntimeWarning, stacklevel=3)
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
