"""Find the residual stages of a model and plan how to make them adaptive.

The analysis is read-only: it traces the model with torch.fx (:mod:`.tracing`), runs one forward
pass on a dummy input to learn the block structure (:mod:`.blocks`), groups the blocks into
stages (:mod:`.stages`) and returns a :class:`~adnify.conversion.plan.Plan`.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import AdnifyError
from .blocks import block_lists, probe_shapes, residual_blocks
from .plan import Plan
from .stages import counted_blocks, plan_stages, same_shape_runs
from .tracing import trace

__all__ = ["analyse", "default_input_size"]


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The input size a ViT-like model was built for (``img_size=``), else what timm's pretrained
    config declares, else 3x224x224."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(int(s) for s in (cfg.get("input_size") or cfg.get("test_input_size") or (3, 224, 224)))
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # the config keeps 224
    if isinstance(built, (tuple, list)) and len(built) == 2 and all(isinstance(s, int) for s in built):
        size = (size[0], *built)
    return size  # type: ignore[return-value]


def analyse(
    model: nn.Module,
    *,
    split: float | Sequence[int] | None = None,
    groups: int = 4,
    stages: Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
) -> Plan:
    """Plan the adaptive stages of ``model``.

    Args:
        model: any module; timm models work best (their notrace registry seeds the tracer).
        split: mandatory part of each stage: ``None`` for the paper's rule
            ``min(L - 1, ceil(L / 2))``, a fraction of ``L``, or one block count per stage.
        groups: number of stages an isotropic model (ViT, Mixer...) is cut into.
        stages: indices of the stages to make adaptive (default: all found).
        input_size: ``(C, H, W)`` of the dummy input (default: the model's pretrained config).

    Raises:
        AdnifyError: the model cannot be traced or has nothing adaptive.
    """
    inner = getattr(model, "model", None)
    if type(model).__name__ == "FeatureGetterNet" and isinstance(inner, nn.Module):
        # timm's backbone wrapper for ViT and kin loops over forward_intermediates' indices, which
        # does not trace; the wrapped network's own forward does, through the same blocks.
        plan = analyse(inner, split=split, groups=groups, stages=stages, input_size=input_size)
        return _prefixed(plan, "model.")
    was_training = model.training
    model.eval()
    try:
        graph = trace(model)
        modules = dict(model.named_modules())
        children = block_lists(model)
        probes = probe_shapes(model, children, input_size or default_input_size(model))
        blocks = residual_blocks(graph, modules, children, probes)
        segments = same_shape_runs(model, children, probes)
        plan = plan_stages(graph, modules, blocks, segments, probes, children, split=split, groups=groups)
    finally:
        model.train(was_training)
    if not plan.stages:
        raise AdnifyError(_nothing_adaptive_message(model, blocks, segments))
    if stages is not None:
        bad = [s for s in stages if not 0 <= s < plan.num_stages]
        if bad:
            raise AdnifyError(f"--stages {bad} out of range: the model has {plan.num_stages} adaptive stages (0..{plan.num_stages - 1})")
        plan.stages = [s for i, s in enumerate(plan.stages) if i in set(stages)]
    return plan


def _prefixed(plan: Plan, prefix: str) -> Plan:
    """The plan of a submodule, named from its parent."""
    for stage in plan.stages:
        stage.name = prefix + stage.name
        stage.mandatory, stage.skippable, stage.norms = ([prefix + n for n in names] for names in
                                                        (stage.mandatory, stage.skippable, stage.norms))
    return plan


def _nothing_adaptive_message(model: nn.Module, blocks: set[str], segments: list[list[str]]) -> str:
    name = type(model).__name__
    if not blocks:
        return (
            f"nothing to adapt in {name}: no residual block found (a repeated block whose output is its "
            f"input plus a branch, with only activations, norms or constant scales on the identity path)"
        )
    modules = dict(model.named_modules())
    innermost = {b for b in blocks if not any(o.startswith(b + ".") for o in blocks)}
    # the longest run of same-shape blocks that ends in a residual block
    longest = max((len(counted_blocks(s[: i + 1], modules)) for s in segments for i, b in enumerate(s) if b in blocks),
                  default=0)
    return (
        f"nothing to adapt in {name}: found {len(innermost)} residual blocks with identity shortcuts, but no "
        f"stage of 2 or more same-shape blocks ends in them (longest: {longest} block{'s' if longest != 1 else ''})"
    )
