"""Find the residual stages of a model and plan how to make them adaptive.

The analysis is read-only: it traces the model with torch.fx, runs one forward pass on a
dummy input to learn shapes, and returns a :class:`~adnify.plan.Plan`.

A *residual block* is a module, held in an ``nn.Sequential``/``nn.ModuleList``, whose output
is its first input plus one or more residual branches: walking back from the output along
adds and shape-only operations (activations, reshapes, identities) reaches the input.
Consecutive blocks of one container that keep the same shape form a stage.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from .errors import AdnifyError
from .norms import is_norm, norm_channels
from .plan import Plan, StagePlan
from .tracing import TimmTracer, trace

_ADDS = {"add", "add_", "iadd"}
# Operations that keep the identity path an identity (up to layout) when found on it.
_PASSTHROUGH = {
    "relu", "relu_", "gelu", "silu", "silu_", "hardswish", "hardswish_", "hard_swish", "relu6",
    "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "mish", "swish",
    "reshape", "view", "_unsafe_view", "flatten", "permute", "transpose", "contiguous", "clone",
    "alias", "detach", "to", "type", "float", "_to_copy",
}
_CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass
class _Probe:
    """What one real forward pass told us about a container child."""

    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    calls: int = 0
    args: tuple[Any, ...] = ()


@dataclass
class Analysis:
    """Intermediate findings, kept for messages and the coverage report."""

    residual_blocks: list[str] = field(default_factory=list)
    segments: list[list[str]] = field(default_factory=list)


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The input size timm's pretrained config declares, else 3x224x224."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") or cfg.get("test_input_size") or (3, 224, 224)
    return tuple(int(s) for s in size)  # type: ignore[return-value]


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
    was_training = model.training
    model.eval()
    try:
        graph = trace(model)
        modules = dict(model.named_modules())
        children = _container_children(model)
        probes = _probe(model, children, input_size or default_input_size(model))
        blocks = _residual_blocks(graph, modules, children, probes)
        segments = _segments(model, children, probes)
        plan = _plan_stages(graph, modules, blocks, segments, probes, split=split, groups=groups)
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


def _nothing_adaptive_message(model: nn.Module, blocks: set[str], segments: list[list[str]]) -> str:
    name = type(model).__name__
    if not blocks:
        return (
            f"nothing to adapt in {name}: no residual block found (a module in a Sequential/ModuleList "
            f"whose output is its input plus a branch)"
        )
    longest = max((len(s) for s in segments), default=0)
    return (
        f"nothing to adapt in {name}: found {len(blocks)} residual blocks with identity shortcuts, "
        f"but no stage of 2 or more same-shape blocks ends in them (longest stage: {longest} blocks)"
    )


# --- structure -----------------------------------------------------------------------------


def _container_children(model: nn.Module) -> dict[str, list[str]]:
    """Container name -> qualified names of its children, in order."""
    out: dict[str, list[str]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, _CONTAINERS) and len(mod) > 0:
            prefix = f"{name}." if name else ""
            out[name] = [f"{prefix}{child}" for child, _ in mod.named_children()]
    return out


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _probe(model: nn.Module, children: dict[str, list[str]], input_size: Sequence[int]) -> dict[str, _Probe]:
    """One forward pass recording the first-input and output shapes of every container child."""
    probes: dict[str, _Probe] = {}
    modules = dict(model.named_modules())
    handles = []

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple, output: Any) -> None:
            p = probes.setdefault(name, _Probe())
            p.calls += 1
            p.in_shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
            p.out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            if not _is_torch_leaf(mod):
                p.args = args

        return fn

    for names in children.values():
        for name in names:
            handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(torch.randn(1, *input_size))
    except Exception as e:
        raise AdnifyError(
            f"a forward pass of {type(model).__name__} on a {tuple(input_size)} input failed: "
            f"{type(e).__name__}: {e} (Hint: pass the input size the model expects)"
        ) from e
    finally:
        for h in handles:
            h.remove()
    return probes


def _is_torch_leaf(mod: nn.Module) -> bool:
    return type(mod).__module__.startswith("torch.nn")


# --- residual detection ----------------------------------------------------------------------


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            return t.overloadpacket.__name__
        if t in (operator.add, operator.iadd):
            return "add"
        return getattr(t, "__name__", str(t))
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if isinstance(mod, nn.Identity) or _is_activation(mod):
            return "relu"  # any elementwise activation: a passthrough
        return f"module:{type(mod).__name__}"
    return node.op


def _is_activation(mod: nn.Module | None) -> bool:
    if mod is None:
        return False
    mod_path = type(mod).__module__
    return mod_path.startswith("torch.nn.modules.activation") or mod_path.startswith("timm.layers.activations")


def _reaches_identity(out: fx.Node, x: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when ``out`` is ``x`` plus at least one branch, through adds and passthrough ops."""
    memo: dict[tuple[fx.Node, bool], bool] = {}

    def walk(node: fx.Node, seen_add: bool) -> bool:
        if node is x:
            return seen_add
        key = (node, seen_add)
        if key in memo:
            return memo[key]
        memo[key] = False
        name = _op_name(node, modules)
        operands = [a for a in node.args if isinstance(a, fx.Node)]
        if name in _ADDS and len(operands) == 2:
            result = any(walk(a, True) for a in operands)
        elif name in _PASSTHROUGH and operands:
            result = walk(operands[0], seen_add)
        else:
            result = False
        memo[key] = result
        return result

    return walk(out, False)


def _is_residual_region(nodes: list[fx.Node], modules: dict[str, nn.Module]) -> bool:
    members = set(nodes)
    inputs: list[fx.Node] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in members and a not in inputs:
                inputs.append(a)
    outputs = [n for n in nodes if any(u not in members for u in n.users)]
    if len(outputs) != 1:
        return False
    return any(_reaches_identity(outputs[0], x, modules) for x in inputs)


def _module_regions(graph: fx.Graph) -> dict[str, list[fx.Node]]:
    regions: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        for qualname, _cls in (node.meta.get("nn_module_stack") or {}).values():
            regions[qualname].append(node)
    return regions


def _leaf_is_residual(mod: nn.Module, args: tuple) -> bool:
    """Look inside a module the main trace keeps opaque (timm's notrace blocks)."""
    try:
        sub_graph = TimmTracer().trace(mod)
        sub_modules = dict(mod.named_modules())
    except Exception:
        try:
            from torch.fx.experimental.proxy_tensor import make_fx

            with torch.no_grad():
                sub_graph = make_fx(mod)(*args).graph
            sub_modules = {}
        except Exception:
            return False
    placeholders = [n for n in sub_graph.nodes if n.op == "placeholder"]
    output = next(n for n in sub_graph.nodes if n.op == "output")
    result = output.args[0]
    if not placeholders or not isinstance(result, fx.Node):
        return False
    return _reaches_identity(result, placeholders[0], sub_modules)


def _residual_blocks(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    children: dict[str, list[str]],
    probes: dict[str, _Probe],
) -> set[str]:
    """Innermost container children that are residual and keep their input's shape."""
    regions = _module_regions(graph)
    found: set[str] = set()
    for names in children.values():
        for name in names:
            p = probes.get(name)
            if p is None or p.calls != 1 or p.in_shape is None or p.in_shape != p.out_shape:
                continue
            mod = modules[name]
            nodes = regions.get(name, [])
            if len(nodes) == 1 and nodes[0].op == "call_module" and not _is_torch_leaf(mod):
                residual = _leaf_is_residual(mod, p.args)
            else:
                residual = len(nodes) > 1 and _is_residual_region(nodes, modules)
            if residual:
                found.add(name)
    return {b for b in found if not any(o.startswith(b + ".") for o in found)}


# --- stages -------------------------------------------------------------------------------------


def _segments(model: nn.Module, children: dict[str, list[str]], probes: dict[str, _Probe]) -> list[list[str]]:
    """Runs of container children that keep one shape; a shape change starts a new run."""
    segments: list[list[str]] = []
    for names in children.values():
        current: list[str] = []
        prev_out = None
        for name in names:
            p = probes.get(name)
            if p is None or p.calls != 1 or p.out_shape is None:
                if current:
                    segments.append(current)
                current, prev_out = [], None
                continue
            starts_new = p.in_shape != p.out_shape or p.in_shape != prev_out
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
    *,
    split: float | Sequence[int] | None,
    groups: int,
) -> Plan:
    candidates = [s for s in segments if len(s) >= 2 and s[-1] in blocks]
    isotropic = len(candidates) == 1 and all(b in blocks for b in candidates[0][1:]) and groups > 1
    units: list[tuple[list[str], str | None]] = []  # (blocks of the stage, root module of its mandatory path)
    if isotropic:
        seg = candidates[0]
        n = min(groups, len(seg) // 2)
        bounds = [round(i * len(seg) / n) for i in range(n + 1)]
        units = [(seg[a:b], None) for a, b in zip(bounds, bounds[1:])]
    else:
        units = [(seg, _stage_root(seg, modules)) for seg in candidates]

    order = {node: i for i, node in enumerate(graph.nodes)}
    regions = _module_regions(graph)
    first = {name: min(order[n] for n in nodes) for name, nodes in regions.items()}
    stages: list[StagePlan] = []
    for seg, root in units:
        m = _mandatory_count(len(seg), split, len(stages))
        tail = seg[m:]
        while tail and any(b not in blocks for b in tail):
            tail = tail[1:]
        if not tail:
            continue
        mandatory = seg[: len(seg) - len(tail)]
        start_name = root if root is not None and _is_first_segment(seg, segments) else seg[0]
        start = first.get(start_name, first.get(seg[0], 0))
        end = first.get(tail[0], len(order))
        prefix = root if root is not None else None
        norms = _norms_between(graph, modules, order, start, end, prefix, mandatory)
        out_shape = probes[tail[-1]].out_shape or ()
        name = root if root is not None and not isotropic else _span_name(seg)
        stages.append(StagePlan(name=name, mandatory=mandatory, skippable=tail, norms=norms,
                                channel_dim=_channel_dim(out_shape, [modules[n] for n in norms] + [modules[b] for b in seg])))
    return Plan(stages=stages, isotropic=isotropic)


def _span_name(seg: list[str]) -> str:
    parent = _parent(seg[0])
    first, last = seg[0].rpartition(".")[2], seg[-1].rpartition(".")[2]
    return f"{parent}[{first}:{int(last) + 1}]" if last.isdigit() else f"{parent}[{first}..{last}]"


def _stage_root(seg: list[str], modules: dict[str, nn.Module]) -> str:
    """The module that holds a stage: its container, or the stage module around it (``stages.1``)."""
    container = _parent(seg[0])
    parent = _parent(container)
    if not container.rpartition(".")[2].isdigit() and parent and isinstance(modules.get(_parent(parent)), _CONTAINERS):
        return parent
    return container


def _is_first_segment(seg: list[str], segments: list[list[str]]) -> bool:
    container = _parent(seg[0])
    same = [s for s in segments if _parent(s[0]) == container]
    return bool(same) and same[0] is seg


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
