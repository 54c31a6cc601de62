"""Residual detection on torch.fx graphs: is a block its input plus one or more branches?

Walking back from a block's output along adds and identity-path operations (``_PASSTHROUGH``)
must reach its input. Blocks that timm keeps opaque to FX (notrace modules such as NFNet's
``NormFreeBlock``) are traced on their own, or with ``make_fx`` when FX cannot trace them.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
import torch.fx as fx
from torch import nn

from .norms import is_norm
from .tracing import TimmTracer

__all__ = ["is_residual_region", "leaf_is_residual", "module_regions"]

_ADDS = {"add", "add_", "iadd"}
# Operations allowed on the identity path of a residual block. The path must neither mix
# channels nor positions with learned weights, so that skipping the block drops a refinement
# rather than a transform: layout changes, elementwise activations (ResNet's ``act(x + f(x))``),
# normalization layers (RepVGG/RepViT's ``bn(x + dw(x))``, post-norm blocks), and scaling by a
# parameter or constant (MetaFormer's ``res_scale``, NFNet's ``beta``). Convolutions, linear
# layers and data-dependent gates (squeeze-excitation) are not allowed: TinyViT's local conv
# between its two residual adds makes a TinyVitBlock *not* skippable.
_PASSTHROUGH = {
    "relu", "relu_", "gelu", "silu", "silu_", "hardswish", "hardswish_", "hard_swish", "relu6",
    "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "mish", "swish", "sigmoid_",
    "reshape", "view", "_unsafe_view", "flatten", "permute", "transpose", "contiguous", "clone",
    "alias", "detach", "to", "type", "float", "_to_copy", "expand_as",
    # normalization (torch functions and the aten ops make_fx records)
    "norm", "layer_norm", "batch_norm", "group_norm", "instance_norm", "rms_norm", "native_layer_norm",
    "native_batch_norm", "native_group_norm", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit", "cudnn_batch_norm", "_fused_rms_norm",
}
# Elementwise products and quotients: on the identity path only when the other operand is a constant.
_SCALES = {"mul", "mul_", "imul", "truediv", "div", "div_"}
_TUPLE_NORMS = {"native_layer_norm", "native_batch_norm", "native_group_norm", "_native_batch_norm_legit_no_training",
                "_native_batch_norm_legit", "cudnn_batch_norm", "_fused_rms_norm"}


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            return t.overloadpacket.__name__
        if t in (operator.add, operator.iadd):
            return "add"
        if t in (operator.mul, operator.imul):
            return "mul"
        if t in (operator.truediv, operator.itruediv):
            return "truediv"
        return getattr(t, "__name__", str(t))
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if isinstance(mod, nn.Identity) or _is_activation(mod):
            return "relu"  # any elementwise activation: a passthrough
        if is_norm(mod):
            return "norm"
        return f"module:{type(mod).__name__}"
    return node.op


def _in_norm(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True for a node traced inside a norm layer (timm's LayerNorm2d, BatchNormAct2d...)."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(is_norm(modules.get(q)) for q, _ in stack.values())


def _is_activation(mod: nn.Module | None) -> bool:
    if mod is None:
        return False
    mod_path = type(mod).__module__
    return mod_path.startswith("torch.nn.modules.activation") or mod_path.startswith("timm.layers.activations")


def _reaches_identity(out: fx.Node, x: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when ``out`` is ``x`` plus at least one branch, through adds and passthrough ops.

    See ``_PASSTHROUGH`` for what the identity path may pass through.
    """
    memo: dict[tuple[fx.Node, bool], bool] = {}
    constant: dict[fx.Node, bool] = {}

    def is_constant(node: fx.Node) -> bool:
        """Computed from parameters, buffers and literals only (no input data)."""
        if node not in constant:
            if node.op == "get_attr":
                constant[node] = True
            elif node.op in ("placeholder", "output") or node is x:
                constant[node] = False
            else:
                constant[node] = all(is_constant(a) for a in node.all_input_nodes)
        return constant[node]

    def walk(node: fx.Node, seen_add: bool) -> bool:
        if node is x:
            return seen_add
        key = (node, seen_add)
        if key in memo:
            return memo[key]
        memo[key] = False
        name = _op_name(node, modules)
        operands = [a for a in node.args if isinstance(a, fx.Node)]
        data = [a for a in operands if not is_constant(a)]
        if node.op != "call_module" and _in_norm(node, modules):
            # inside a traced-through norm layer: its own adds (var + eps) are no residual adds
            result = any(walk(a, seen_add) for a in data)
        elif name in _ADDS and len(operands) == 2:
            result = any(walk(a, True) for a in operands)
        elif name in _SCALES:
            result = len(data) == 1 and walk(data[0], seen_add)
        elif name in _PASSTHROUGH:
            result = any(walk(a, seen_add) for a in data)
        elif name == "getitem" and operands and _op_name(operands[0], modules) in _TUPLE_NORMS and node.args[1] == 0:
            result = walk(operands[0], seen_add)
        else:
            result = False
        memo[key] = result
        return result

    return walk(out, False)


def is_residual_region(nodes: list[fx.Node], modules: dict[str, nn.Module]) -> bool:
    """True when the traced nodes of one module have a single output that is an input plus branches."""
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


def module_regions(graph: fx.Graph) -> dict[str, list[fx.Node]]:
    """The nodes traced inside each module (by qualified name), from FX's ``nn_module_stack``."""
    regions: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        for qualname, _cls in (node.meta.get("nn_module_stack") or {}).values():
            regions[qualname].append(node)
    return regions


def leaf_is_residual(mod: nn.Module, args: tuple) -> bool:
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
