"""MACs and parameters of every sub-network, counted with ``torch.utils.flop_counter``.

One counted forward pass of the super-net gives the MACs of every block; because skipping
removes whole shape-preserving blocks and changes nothing else, a pattern's MACs are the
super-net's minus those of its skipped blocks (exact, not an estimate: tests compare with a
full count of the static export). MACs are FLOPs / 2, the unit timm and the paper call "GFLOPs".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..adaptive import AdaptiveNet, Pattern
from ..conversion.plan import parse_pattern
from .attention_flops import ATTENTION_FORMULAS

MACS_METHOD = "torch.utils.flop_counter: one super-net pass, per-block MACs subtracted for skipped blocks"


@dataclass
class Cost:
    """What one sub-network costs."""

    pattern: str
    macs: int
    params: int
    skipped_blocks: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _counted_pass(model: nn.Module, x: torch.Tensor) -> FlopCounterMode:
    """One eval-mode forward pass under ``FlopCounterMode``.

    Parameters are frozen for the pass: the counter's module tracker otherwise fails on
    views of parameters taken under ``no_grad`` (CaiT's class token).
    """
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=ATTENTION_FORMULAS) as counter:
            model(x)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return counter


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``x`` (the whole batch)."""
    return _counted_pass(model, x).get_total_flops() // 2


def _module_macs(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> tuple[int, dict[str, int]]:
    counter = _counted_pass(model, x)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_module = {n: sum(counts.get(f"{root}.{n}", {}).values()) // 2 for n in names}
    return counter.get_total_flops() // 2, per_module


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def original_params(net: AdaptiveNet) -> int:
    """Parameters of the super-net, i.e. the model before conversion (twins not counted)."""
    twins = sum(_num_params(norm.skip_copy) for norms in net._norms for norm in norms)
    return _num_params(net.model) - twins


def pattern_costs(net: AdaptiveNet, patterns: Sequence[Pattern], *, input_size: Sequence[int] | None = None,
                  batch_size: int = 1) -> list[Cost]:
    """MACs and used parameters of each pattern, from one counted pass of the super-net."""
    x = torch.randn(batch_size, *net.input_size(input_size))
    blocks = [n for s in net.plan.stages for n in s.skippable]
    with net.subnet("super"):
        total, per_block = _module_macs(net.model, x, blocks)
    modules = dict(net.model.named_modules())
    block_params = {n: _num_params(modules[n]) for n in blocks}
    params = original_params(net)
    costs = []
    for p in patterns:
        flags = parse_pattern(p, net.num_stages)
        skipped = [n for skip, s in zip(flags, net.plan.stages) if skip for n in s.skippable]
        costs.append(Cost(
            pattern="".join("T" if f else "F" for f in flags),
            macs=total - sum(per_block[n] for n in skipped),
            params=params - sum(block_params[n] for n in skipped),
            skipped_blocks=len(skipped),
        ))
    return costs
