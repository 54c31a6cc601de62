"""FLOP formulas for the attention kernels that ``torch.utils.flop_counter`` leaves uncounted.

``F.scaled_dot_product_attention`` dispatches to one of several fused kernels. torch counts some
(flash and efficient on CUDA, cuDNN) and, on the versions adnify supports, not others: on the CPU
torch >= 2.5 dispatches to ``_scaled_dot_product_flash_attention_for_cpu``, which counts 0, so every
attention matmul of a ViT, DeiT or Swin went missing (about 4% of ViT-B's MACs at 224 px).
:data:`ATTENTION_FORMULAS` fills those gaps; :func:`uncounted_attention_ops` names any attention
kernel a newer torch adds that neither torch nor adnify counts (a test fails on it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import flop_counter as fc

__all__ = ["ATTENTION_FORMULAS", "uncounted_attention_ops"]

_aten = torch.ops.aten


def _sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """(batch, heads, length, dim) inputs, the layout of ``F.scaled_dot_product_attention``."""
    return fc.sdpa_flop_count(query, key, value)


def _sdpa_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def _blhd(shape: Any) -> tuple[int, int, int, int]:
    b, length, h, d = shape
    return b, h, length, d


def _flash_inplace(out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """The flash kernel's own (batch, length, heads, dim) layout."""
    return fc.sdpa_flop_count(_blhd(query), _blhd(key), _blhd(value))


def _native_mha(query: Any, key: Any, value: Any, embed_dim: int, num_heads: int, *args: Any, **kwargs: Any) -> int:
    """``nn.MultiheadAttention``'s inference fast path: input and output projections plus attention."""
    b, lq, e = query
    lk = key[1]
    macs = b * e * e * (2 * lq + 2 * lk) + 2 * b * lq * lk * e  # q, out (lq); k, v (lk); QK^T and AV
    return 2 * macs


def _op(name: str) -> Any:
    return getattr(_aten, name, None)


_CANDIDATES: dict[str, Callable[..., int]] = {
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa,
    "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward,
    "_scaled_dot_product_attention_math_for_mps": _sdpa,
    "_flash_attention_forward_no_dropout_inplace": _flash_inplace,
    "_native_multi_head_attention": _native_mha,
    "_triton_multi_head_attention": _native_mha,
    "_triton_scaled_dot_attention": _sdpa,
    "_cudnn_attention_forward": _sdpa,
    "_cudnn_attention_backward": _sdpa_backward,
}

#: ``custom_mapping`` for ``FlopCounterMode``: the attention ops of this torch that torch itself does not count.
ATTENTION_FORMULAS: dict[Any, Callable[..., int]] = {
    _op(name): formula for name, formula in _CANDIDATES.items()
    if _op(name) is not None and _op(name) not in fc.flop_registry
}


def uncounted_attention_ops() -> list[str]:
    """Names of this torch's attention kernels counted neither by torch nor by :data:`ATTENTION_FORMULAS`.

    Composite ops (``scaled_dot_product_attention`` itself, the math fallback) are left out: they
    decompose into the matmuls or kernels that are counted.
    """
    counted = set(fc.flop_registry) | set(ATTENTION_FORMULAS)
    missing = set()
    for qualified in torch._C._dispatch_get_all_op_names():
        name = qualified.removeprefix("aten::").split(".")[0]
        if not qualified.startswith("aten::") or "attention" not in name:
            continue
        if torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CompositeImplicitAutograd"):
            continue
        if _op(name) not in counted:
            missing.add(name)
    return sorted(missing)
