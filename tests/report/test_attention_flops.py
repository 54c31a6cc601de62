"""Attention is counted in every MACs figure, whichever kernel torch dispatches to (issue 14).

The reference is the textbook formula: QK^T and AV are each ``batch * heads * Lq * Lk * dim`` MACs.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import adnify
from adnify.report.attention_flops import ATTENTION_FORMULAS, uncounted_attention_ops
from adnify.report.costs import count_macs, pattern_costs


def attention_macs(b: int, h: int, lq: int, lk: int, d: int) -> int:
    return 2 * b * h * lq * lk * d


class Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = x.unbind(0)
        return F.scaled_dot_product_attention(q, k, v)


def test_every_attention_kernel_of_this_torch_is_counted():
    missing = uncounted_attention_ops()
    assert not missing, (f"torch {torch.__version__} has attention kernels that adnify's MACs would count as 0: "
                         f"{missing}; add their formulas to adnify/report/attention_flops.py")


@pytest.mark.parametrize("backend", [None, SDPBackend.MATH, SDPBackend.FLASH_ATTENTION],
                         ids=["default", "math", "flash-cpu"])
def test_a_bare_sdpa_call_counts_both_matmuls(backend):
    x = torch.randn(3, 1, 12, 197, 64)  # q, k, v of ViT-B at 224 px
    if backend is None:  # whatever this torch chooses by itself
        assert count_macs(Attention(), x) == attention_macs(1, 12, 197, 197, 64)
        return
    with sdpa_kernel([backend]):
        assert count_macs(Attention(), x) == attention_macs(1, 12, 197, 197, 64)


@pytest.mark.parametrize("name", sorted(str(op) for op in ATTENTION_FORMULAS))
def test_each_added_formula_matches_the_textbook_count(name):
    """Formulas for kernels this CPU cannot run (CUDA, MPS, XPU) are checked on shapes alone."""
    formula = {str(op): f for op, f in ATTENTION_FORMULAS.items()}[name]
    b, h, lq, lk, d = 2, 4, 10, 7, 16
    q, k = torch.Size((b, h, lq, d)), torch.Size((b, h, lk, d))
    if "no_dropout_inplace" in name:  # the flash kernel's (batch, length, heads, dim) layout
        blhd = torch.Size((b, lq, h, d)), torch.Size((b, lk, h, d))
        assert formula(blhd[0], blhd[0], blhd[1], blhd[1]) == 2 * attention_macs(b, h, lq, lk, d)
    elif "multi_head" in name:  # native and triton
        e = h * d
        projections = b * e * e * (2 * lq + 2 * lk)
        got = formula(torch.Size((b, lq, e)), torch.Size((b, lk, e)), torch.Size((b, lk, e)), e, h)
        assert got == 2 * (projections + attention_macs(b, 1, lq, lk, e))
    elif "backward" in name:
        # torch's backward formula: the scores recomputed, then the gradients of Q, K, V and the scores
        assert formula(q, q, k, k) == 2 * 5 * b * h * lq * lk * d
    else:
        assert formula(q, k, k) == 2 * attention_macs(b, h, lq, lk, d)


def test_multi_head_attention_fast_path_is_counted():
    """``nn.MultiheadAttention`` in eval under no_grad runs one fused op on the CPU."""
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    b, length, e = 2, 9, 64
    expected = b * length * e * e * 4 + attention_macs(b, 1, length, length, e)
    assert count_macs(SelfAttention(), torch.randn(b, length, e)) == expected


def test_vit_macs_equal_an_independent_formula():
    """ViT-B/16 at 224 px from its shapes alone: linear layers, patch embedding and attention."""
    net = adnify.convert(timm.create_model("vit_base_patch16_224"))
    tokens, dim, depth, mlp, heads = 197, 768, 12, 3072, 12
    per_block = tokens * (4 * dim * dim + 2 * dim * mlp) + attention_macs(1, heads, tokens, tokens, dim // heads)
    patch_embed = 196 * 3 * 16 * 16 * dim
    head = dim * 1000
    sup, base = pattern_costs(net, ["super", "base"])
    assert sup.macs == depth * per_block + patch_embed + head
    assert base.macs == (depth - 4) * per_block + patch_embed + head  # 4 of 12 blocks skipped
