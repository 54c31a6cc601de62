"""Stages from block runs: which runs of same-shape blocks become adaptive stages, where each
stage's mandatory part ends, which norms it owns and where its channels are.

Consecutive blocks of one list that keep the same shape form a stage; only its trailing residual
blocks can be skippable, and parameter-free glue (a reshape) does not count as a block. A model
whose only stage is its whole trunk (ViT, Mixer...) is isotropic: that stage is cut into ``groups``
stages.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch.fx as fx
from torch import nn

from ..errors import AdnifyError
from .blocks import CONTAINERS, Probe, is_torch_leaf, parent_name
from .norms import is_norm, norm_channels
from .plan import Plan, StagePlan
from .residuals import module_regions

__all__ = ["counted_blocks", "plan_stages", "same_shape_runs"]


def same_shape_runs(model: nn.Module, children: dict[str, list[str]], probes: dict[str, Probe]) -> list[list[str]]:
    """Runs of block-list children that keep one shape; a shape change starts a new run.

    In a numbered group (``key`` ending in ``*``) a child must also take the previous one's
    output as its input: DaViT's ``cpe1``/``cpe2`` have an attention between them, no loop.
    """
    segments: list[list[str]] = []
    for key, names in children.items():
        numbered = key.endswith("*")
        current: list[str] = []
        prev_out = None
        for name in names:
            p = probes.get(name)
            if p is None or p.calls != 1 or p.out_shape is None:
                if current:
                    segments.append(current)
                current, prev_out = [], None
                continue
            starts_new = p.in_shape != p.out_shape or p.in_shape != prev_out or (numbered and not p.chained)
            if starts_new and current:
                segments.append(current)
                current = []
            current.append(name)
            prev_out = p.out_shape
        if current:
            segments.append(current)
    return segments


def _mandatory_count(length: int, split: float | Sequence[int] | None, index: int) -> int:
    if split is None:
        m = math.ceil(length / 2)
    elif isinstance(split, (int, float)) and not isinstance(split, bool):
        m = round(length * float(split))
    else:
        counts = list(split)
        if index >= len(counts):
            raise AdnifyError(f"--split gives {len(counts)} block counts but there are more stages: give one per stage")
        m = int(counts[index])
    return max(1, min(length - 1, m))


def plan_stages(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    blocks: set[str],
    segments: list[list[str]],
    probes: dict[str, Probe],
    children: dict[str, list[str]],
    *,
    split: float | Sequence[int] | None,
    groups: int,
) -> Plan:
    """The adaptive stages: runs of 2 or more counted blocks ending in residual blocks, each split into
    a mandatory head and a skippable tail of residual blocks, with the norms the stage owns."""
    candidates = _outermost_stages([s for s in segments if len(counted_blocks(s, modules)) >= 2 and s[-1] in blocks],
                                   blocks, modules)
    outer_blocks = {b for b in blocks if not any(b.startswith(o + ".") for o in blocks)}
    # Isotropic (ViT, Mixer...): one run of residual blocks is the model's trunk: it starts with a
    # residual block (no downsampling), holds every residual block of the model and most parameters.
    isotropic = (groups > 1 and len(candidates) == 1 and all(b in blocks for b in candidates[0])
                 and outer_blocks <= set(candidates[0]) and _is_trunk(candidates[0], modules))
    units: list[tuple[list[str], str | None]] = []  # (blocks of the stage, root module of its mandatory path)
    if isotropic:
        seg = candidates[0]
        n = min(groups, len(seg) // 2)
        if len(seg) % n:  # uneven groups would silently make stages of different depths
            fits = [g for g in range(2, len(seg) // 2 + 1) if len(seg) % g == 0]
            works = (f"groups {', '.join(map(str, fits))} (divisors of {len(seg)})" if fits
                     else "groups 1 (the trunk as one stage)")
            raise AdnifyError(f"the model's {len(seg)} blocks do not divide into {groups} groups: use {works}, "
                              f"or a depth that {groups} divides")
        bounds = [round(i * len(seg) / n) for i in range(n + 1)]
        units = [(seg[a:b], None) for a, b in zip(bounds, bounds[1:])]
    else:
        units = [(seg, _stage_root(seg, modules) or None) for seg in candidates]  # the model itself is no root

    owner = {child: key for key, names in children.items() for child in names}
    order = {node: i for i, node in enumerate(graph.nodes)}
    regions = module_regions(graph)
    first = {name: min(order[n] for n in nodes) for name, nodes in regions.items()}
    stages: list[StagePlan] = []
    spans: list[list[str]] = []
    for seg, root in units:
        counted = counted_blocks(seg, modules)
        if len(counted) < 2:
            continue
        m = _mandatory_count(len(counted), split, len(stages))
        tail = seg[counted[m - 1] + 1:]
        while tail and any(b not in blocks for b in tail):
            tail = tail[1:]
        if not tail:
            continue
        mandatory = seg[: len(seg) - len(tail)]
        first_of_container = next(s for s in segments if owner.get(s[0]) == owner.get(seg[0])) is seg
        start_name = root if root is not None and first_of_container else seg[0]
        start = first.get(start_name, first.get(seg[0], 0))
        end = first.get(tail[0], len(order))
        prefix = root if root is not None else None
        norms = _norms_between(graph, modules, order, start, end, prefix, mandatory)
        out_shape = probes[tail[-1]].out_shape or ()
        name = root if root is not None and not isotropic else _span_name(seg)
        stages.append(StagePlan(name=name, mandatory=mandatory, skippable=tail, norms=norms,
                                channel_dim=_channel_dim(out_shape, [modules[n] for n in norms] + [modules[b] for b in seg])))
        spans.append(seg)
    _drop_nested_norms(stages)
    names = [s.name for s in stages]
    for stage, seg in zip(stages, spans):
        if names.count(stage.name) > 1:  # several stages in one container (Hiera, GhostNet)
            stage.name = _span_name(seg)
    return Plan(stages=stages, isotropic=isotropic)


def _drop_nested_norms(stages: list[StagePlan]) -> None:
    """A norm inside another stage's blocks follows that stage's flag, not this one's.

    A stage's own downsample can hold whole stages (EfficientViT's ``downsample.res1``): their
    norms were claimed twice, and skipping the inner stage left the outer one's twin dangling.
    """
    for stage in stages:
        others = [b for other in stages if other is not stage for b in other.mandatory + other.skippable]
        stage.norms = [n for n in stage.norms if not any(n == b or n.startswith(b + ".") for b in others)]


def _outermost_stages(candidates: list[list[str]], blocks: set[str], modules: dict[str, nn.Module]) -> list[list[str]]:
    """Resolve stages nested in the blocks of other stages.

    A stage's blocks repeat one design. When the blocks of an outer run hold runs of their own,
    the inner runs are the stages if each repeats one block type (VOLO's same-shape stages of
    transformer blocks); if an inner run mixes types it is one composite block (DaViT's
    spatial + channel pair) and the outer run is the stage.
    """

    def inside(inner: list[str], outer: list[str]) -> bool:
        return any(b.startswith(o + ".") for b in inner for o in outer)

    def repeats_one_type(seg: list[str]) -> bool:
        return len({type(modules[b]) for b in seg if b in blocks}) == 1

    dropped: set[int] = set()
    by_depth = sorted(range(len(candidates)), key=lambda i: candidates[i][0].count("."))
    for i in by_depth:
        if i in dropped:
            continue
        inner = [j for j in range(len(candidates))
                 if j != i and j not in dropped and inside(candidates[j], candidates[i])]
        if not inner:
            continue
        if all(repeats_one_type(candidates[j]) for j in inner):
            dropped.add(i)
        else:
            dropped.update(inner)
    return [c for i, c in enumerate(candidates) if i not in dropped]


def _is_trunk(seg: list[str], modules: dict[str, nn.Module]) -> bool:
    """True when the blocks of ``seg`` hold at least half of the model's parameters."""
    total = sum(p.numel() for p in modules[""].parameters())
    return 2 * sum(p.numel() for b in seg for p in modules[b].parameters()) >= total


def counted_blocks(seg: list[str], modules: dict[str, nn.Module]) -> list[int]:
    """Positions of the elements of ``seg`` that count as blocks: those with parameters.

    Parameter-free glue (EfficientFormer's ``Flat`` reshape) learns nothing, so it may sit in
    a mandatory part but does not count towards a stage's length ``L``.
    """
    return [i for i, name in enumerate(seg) if any(True for _ in modules[name].parameters())]


def _span_name(seg: list[str]) -> str:
    parent = parent_name(seg[0])
    first, last = seg[0].rpartition(".")[2], seg[-1].rpartition(".")[2]
    if last.isdigit():
        return f"{parent}[{first}:{int(last) + 1}]"
    return f"{parent}[{first}..{last}]" if parent else f"{first}..{last}"


def _stage_root(seg: list[str], modules: dict[str, nn.Module]) -> str:
    """The module that holds a stage: its container, or the stage module around it (``stages.1``)."""
    container = parent_name(seg[0])
    parent = parent_name(container)
    if not container.rpartition(".")[2].isdigit() and parent and isinstance(modules.get(parent_name(parent)), CONTAINERS):
        return parent
    return container


def _norms_between(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    order: dict[fx.Node, int],
    start: int,
    end: int,
    prefix: str | None,
    mandatory: list[str],
) -> list[str]:
    """Norm layers executed in ``[start, end)`` of the graph, under ``prefix`` (or in ``mandatory``)."""
    scopes = [prefix] if prefix else mandatory
    found: list[str] = []

    def add(name: str) -> None:
        if name not in found and any(name == s or name.startswith(s + ".") for s in scopes):
            found.append(name)

    for node in graph.nodes:
        if not start <= order[node] < end:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        norm = next((q for q, _ in stack.values() if is_norm(modules.get(q))), None)
        if norm is not None:
            add(norm)
        elif node.op == "call_module" and not is_torch_leaf(modules[str(node.target)]):
            for sub_name, sub in modules[str(node.target)].named_modules(prefix=str(node.target)):
                if is_norm(sub) and not any(sub_name.startswith(f + ".") for f in found):
                    add(sub_name)
    return found


def _channel_dim(shape: tuple[int, ...], mods: list[nn.Module]) -> int:
    """Where the channels of a stage output are: 1 (NCHW) or -1 (tokens, NHWC)."""
    if len(shape) != 4:
        return -1
    for mod in mods:
        for sub in mod.modules():
            c = norm_channels(sub)
            if c is None:
                continue
            if shape[1] == c and shape[-1] != c:
                return 1
            if shape[-1] == c and shape[1] != c:
                return -1
    return 1
