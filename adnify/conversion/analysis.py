"""Find the residual stages of a model and plan how to make them adaptive.

The analysis is read-only: it traces the model with torch.fx, runs one forward pass on a
dummy input to learn shapes, and returns a :class:`~adnify.conversion.plan.Plan`.

- A *block list* is the children of an ``nn.Sequential``/``nn.ModuleList``, or children of any
  other module numbered alike (RegNet's ``b1, b2, ...``), taken in call order.
- A *residual block* is a block whose output is its first input plus one or more residual
  branches (see :mod:`adnify.conversion.residuals`).
- Consecutive blocks of one list that keep the same shape form a stage; only its trailing
  residual blocks can be skippable, and parameter-free glue (a reshape) does not count as a block.
- A model whose only stage is its whole trunk (ViT, Mixer...) is isotropic: that stage is cut
  into ``groups`` stages.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import AdnifyError, first_line
from .norms import is_norm, norm_channels
from .plan import Plan, StagePlan
from .residuals import is_residual_region, leaf_is_residual, module_regions
from .tracing import trace

_CONTAINERS = (nn.Sequential, nn.ModuleList)
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass
class _Probe:
    """What one real forward pass told us about a container child."""

    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    calls: int = 0
    args: tuple[Any, ...] = ()
    order: int = 0  # when it was first called
    chained: bool = False  # its input is the output of the sibling called before it


@dataclass
class Analysis:
    """Intermediate findings, kept for messages and the coverage report."""

    residual_blocks: list[str] = field(default_factory=list)
    segments: list[list[str]] = field(default_factory=list)


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
        children = _container_children(model)
        probes = _probe(model, children, input_size or default_input_size(model))
        blocks = _residual_blocks(graph, modules, children, probes)
        segments = _segments(model, children, probes)
        plan = _plan_stages(graph, modules, blocks, segments, probes, children, split=split, groups=groups)
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
    longest = max((len(_counted(s[: i + 1], modules)) for s in segments for i, b in enumerate(s) if b in blocks),
                  default=0)
    return (
        f"nothing to adapt in {name}: found {len(innermost)} residual blocks with identity shortcuts, but no "
        f"stage of 2 or more same-shape blocks ends in them (longest: {longest} block{'s' if longest != 1 else ''})"
    )


# --- structure -----------------------------------------------------------------------------


def _container_children(model: nn.Module) -> dict[str, list[str]]:
    """Block lists: key -> qualified names of the children that may form stages, in order.

    A block list is the children of an ``nn.Sequential``/``nn.ModuleList``, or, in any other
    module, a group of two or more children numbered alike (``b1, b2, b3`` in RegNet's
    ``RegStage``): blocks built by a loop. Named roles (MaxViT's ``attn_block``/``attn_grid``)
    are parts of one block, not blocks of a stage. The key is the container's name, with the
    group's prefix for numbered groups (``s2.b*``).
    """
    out: dict[str, list[str]] = {}
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, _CONTAINERS):
            if len(mod) > 0:
                out[name] = [f"{prefix}{child}" for child, _ in mod.named_children()]
            continue
        numbered: dict[str, list[str]] = defaultdict(list)
        for child, _ in mod.named_children():
            match = _NUMBERED.match(child)
            if match and match.group(1):
                numbered[match.group(1)].append(f"{prefix}{child}")
        for stem, names in numbered.items():
            if len(names) >= 2:
                out[f"{prefix}{stem}*"] = names
    return out


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _probe(model: nn.Module, children: dict[str, list[str]], input_size: Sequence[int]) -> dict[str, _Probe]:
    """One forward pass recording the first-input and output shapes of every container child."""
    probes: dict[str, _Probe] = {}
    modules = dict(model.named_modules())
    handles = []
    owner = {child: key for key, names in children.items() for child in names}
    last_output: dict[str, Any] = {}  # per block list: the output of the child called last

    def hook(name: str):
        key = owner[name]

        def fn(mod: nn.Module, args: tuple, output: Any) -> None:
            p = probes.setdefault(name, _Probe(order=len(probes)))
            p.calls += 1
            p.in_shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
            p.out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            p.chained = bool(args) and key in last_output and args[0] is last_output[key]
            last_output[key] = output
            if not _is_torch_leaf(mod):
                p.args = args

        return fn

    for name in owner:
        handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        # One thread: a batch-1 pass gains little from two, and loses much on a busy machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                model(torch.randn(1, *input_size))
        finally:
            torch.set_num_threads(threads)
    except Exception as e:
        raise AdnifyError(
            f"a forward pass of {type(model).__name__} on a {tuple(input_size)} input failed: "
            f"{first_line(e, with_type=True)} (Hint: pass the input size the model expects)"
        ) from e
    finally:
        for h in handles:
            h.remove()
    for key, names in children.items():  # block lists in call order (uncalled children last)
        children[key] = sorted(names, key=lambda n: probes[n].order if n in probes else len(probes))
    return probes


def _is_torch_leaf(mod: nn.Module) -> bool:
    return type(mod).__module__.startswith("torch.nn")


def _residual_blocks(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    children: dict[str, list[str]],
    probes: dict[str, _Probe],
) -> set[str]:
    """Block-list children that are residual and keep their input's shape (nested ones too)."""
    regions = module_regions(graph)
    found: set[str] = set()
    for names in children.values():
        for name in names:
            p = probes.get(name)
            if p is None or p.calls != 1 or p.in_shape is None or p.in_shape != p.out_shape:
                continue
            mod = modules[name]
            nodes = regions.get(name, [])
            if len(nodes) == 1 and nodes[0].op == "call_module" and not _is_torch_leaf(mod):
                residual = leaf_is_residual(mod, p.args)
            else:
                residual = len(nodes) > 1 and is_residual_region(nodes, modules)
            if residual:
                found.add(name)
    return found


# --- stages -------------------------------------------------------------------------------------


def _segments(model: nn.Module, children: dict[str, list[str]], probes: dict[str, _Probe]) -> list[list[str]]:
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


def _plan_stages(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    blocks: set[str],
    segments: list[list[str]],
    probes: dict[str, _Probe],
    children: dict[str, list[str]],
    *,
    split: float | Sequence[int] | None,
    groups: int,
) -> Plan:
    candidates = _outermost_stages([s for s in segments if len(_counted(s, modules)) >= 2 and s[-1] in blocks],
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
        counted = _counted(seg, modules)
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


def _counted(seg: list[str], modules: dict[str, nn.Module]) -> list[int]:
    """Positions of the elements of ``seg`` that count as blocks: those with parameters.

    Parameter-free glue (EfficientFormer's ``Flat`` reshape) learns nothing, so it may sit in
    a mandatory part but does not count towards a stage's length ``L``.
    """
    return [i for i, name in enumerate(seg) if any(True for _ in modules[name].parameters())]


def _span_name(seg: list[str]) -> str:
    parent = _parent(seg[0])
    first, last = seg[0].rpartition(".")[2], seg[-1].rpartition(".")[2]
    if last.isdigit():
        return f"{parent}[{first}:{int(last) + 1}]"
    return f"{parent}[{first}..{last}]" if parent else f"{first}..{last}"


def _stage_root(seg: list[str], modules: dict[str, nn.Module]) -> str:
    """The module that holds a stage: its container, or the stage module around it (``stages.1``)."""
    container = _parent(seg[0])
    parent = _parent(container)
    if not container.rpartition(".")[2].isdigit() and parent and isinstance(modules.get(_parent(parent)), _CONTAINERS):
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
        elif node.op == "call_module" and not _is_torch_leaf(modules[str(node.target)]):
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
