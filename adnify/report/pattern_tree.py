"""Many sub-networks of one :class:`~adnify.adaptive.AdaptiveNet` on one batch, computed as a prefix tree.

Patterns that agree on their first ``s`` letters compute the same activation up to the start of
stage ``s + 1``: every pattern computes the same stem, stage 1 has two distinct outputs (T or F),
stage ``s`` has ``2**s``, and only the last stage and the head run once per pattern. The model is
traced once with torch.fx (the stages' blocks and skip-aware norms kept as leaves, so their skip flags
act at run time) and cut into segments at the first layer of each stage:

    prefix (stem) | level 1: stage 1 (+ layers up to stage 2) | ... | level N: stage N + head

:meth:`PatternTree.run` walks the tree depth-first, F before T, running a level's segment once per
(prefix, choice) that a requested pattern needs: the T side runs the stage's mandatory blocks with the
skip-aware norm copies, the F side the whole stage. It holds one activation per level (O(N) beyond a
single pattern's), and each pattern's logits equal ``net(x, skip=pattern)`` bit for bit: the same
layers run on the same tensors in the same order.

A model whose stages cannot be cut this way raises :class:`TreeUnavailable` with the reason (a stage's
output read again after the next stage, e.g. a ``features_only`` backbone returning every stage; a
stage whose blocks run inside one call with another stage's; a model torch.fx cannot trace); the
caller then runs each pattern in turn.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..conversion.tracing import TimmTracer
from ..errors import AdnifyError, first_line

if TYPE_CHECKING:
    from ..adaptive import AdaptiveNet

__all__ = ["PatternTree", "StageInputChanged", "TreeUnavailable"]

Flags = tuple[bool, ...]


class TreeUnavailable(Exception):
    """The model's stages cannot be cut at their boundaries; ``str(error)`` says why."""


class StageInputChanged(RuntimeError):
    """A segment changed an activation in place that a sibling branch still reads."""


class _StageTracer(TimmTracer):
    """timm's tracer that also keeps the named modules (the stages' blocks and norms) as leaves."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


@dataclass
class _Segment:
    """Consecutive nodes of the traced graph, compiled to a module: ``module(*inputs) -> outputs``."""

    module: fx.GraphModule
    inputs: tuple[str, ...]  # names of the values it reads from earlier segments
    outputs: tuple[str, ...]  # names of the values later segments read (the last: the model's output)


class PatternTree:
    """The segments of one traced adaptive net; build with :meth:`build`, run with :meth:`run`.

    The segments hold the net's own modules (no copies), so weights, devices and dtypes follow the net;
    build it after moving the net, in the mode it will run in (tracing bakes ``self.training`` in).
    """

    def __init__(self, net: "AdaptiveNet", prefix: _Segment, levels: list[_Segment]) -> None:
        self.net, self.prefix, self.levels = net, prefix, levels

    @classmethod
    def build(cls, net: "AdaptiveNet") -> "PatternTree":
        """Trace ``net.model`` and cut it at its stages.

        Raises:
            TreeUnavailable: the stages cannot be cut at their boundaries (the message says why).
        """
        stages = net.plan.stages
        owner = {name: i for i, s in enumerate(stages) for name in (*s.mandatory, *s.skippable, *s.norms)}
        try:
            graph = _StageTracer(set(owner)).trace(net.model)
        except Exception as e:  # FX raises many types for untraceable code
            raise TreeUnavailable(f"torch.fx could not trace {type(net.model).__name__}: "
                                  f"{first_line(e, with_type=True)}") from None
        nodes = list(graph.nodes)
        _check_calls(net, {n.target for n in nodes if n.op == "call_module"})
        starts = _stage_starts(nodes, owner, [s.name for s in stages])
        index = {n: i for i, n in enumerate(nodes)}

        def segment_of(node: fx.Node) -> int:  # 0: the prefix, k: level k (stage k and what follows it)
            return bisect_right(starts, index[node])

        parts: list[list[fx.Node]] = [[] for _ in range(len(stages) + 1)]
        inputs: list[dict[fx.Node, None]] = [{} for _ in parts]  # dicts: ordered, unlike sets
        outputs: list[dict[fx.Node, None]] = [{} for _ in parts]
        for node in nodes:
            k = segment_of(node)
            parts[k].append(node)
            for arg in node.all_input_nodes:
                j = segment_of(arg)
                if j == k:
                    continue
                if j not in (0, k - 1):
                    raise TreeUnavailable(f"the output of {_describe(arg)} in stage {stages[j - 1].name} is read "
                                          f"again after stage {stages[j].name}")
                inputs[k][arg] = None
                outputs[j][arg] = None
        segments = [_compile(net.model, part, list(inputs[k]), list(outputs[k]), last=k == len(stages))
                    for k, part in enumerate(parts)]
        return cls(net, segments[0], segments[1:])

    def run(self, x: torch.Tensor, patterns: Sequence[Flags]) -> dict[Flags, Any]:
        """The output of every pattern in ``patterns`` (skip flags) on ``x``, walking the tree depth-first.

        Runs under ``torch.no_grad`` (not inference mode: an activation's version counter tells whether a
        branch changed it in place before its sibling reads it; :class:`StageInputChanged` if so).
        The net's selected pattern is restored afterwards.
        """
        n = len(self.levels)
        if any(len(p) != n for p in patterns):
            raise AdnifyError(f"patterns must have {n} skip flags")
        wanted = {tuple(p[:k]) for p in patterns for k in range(1, n + 1)}
        found: dict[Flags, Any] = {}
        previous = self.net._pattern
        with torch.inference_mode(False), torch.no_grad():
            try:
                stem = dict(zip(self.prefix.outputs, self.prefix.module(x)))
                self._walk((), stem, stem, wanted, found)
            finally:
                self.net.set_subnet(previous)
        return {tuple(p): found[tuple(p)] for p in patterns}

    def _walk(self, path: Flags, stem: dict[str, Any], env: dict[str, Any], wanted: set[Flags],
              found: dict[Flags, Any]) -> None:
        level = len(path)
        segment = self.levels[level]
        args = [env[name] for name in segment.inputs]
        held = [(t, t._version) for t in args if isinstance(t, torch.Tensor) and not t.is_inference()]
        pad = (False,) * (len(self.levels) - level - 1)
        for skip in (False, True):
            here = (*path, skip)
            if here not in wanted:
                continue
            self.net.set_subnet(here + pad)  # only this level's stage runs in this segment
            result = segment.module(*args)
            if not pad:
                found[here] = result[0]
            else:
                child = {**stem, **dict(zip(segment.outputs, result))}
                del result  # one activation per level: the child's inputs are in ``child``
                self._walk(here, stem, child, wanted, found)
                del child
            if any(t._version != v for t, v in held):
                raise StageInputChanged(f"a layer of stage {self.net.plan.stages[level].name} changes its input in "
                                        "place, which the other branch still needs")


def _check_calls(net: "AdaptiveNet", called: set[str]) -> None:
    """The segments call only the ``called`` modules (the graph's leaves): hooks on any other module, or a
    ``forward`` replaced on the net itself (a pre-hook casting the input, say), would be skipped."""
    if "forward" in net.__dict__ or "forward" in net.model.__dict__:
        raise TreeUnavailable("its forward is replaced on the instance")
    if net._forward_hooks or net._forward_pre_hooks:
        raise TreeUnavailable("the adaptive net has forward hooks")
    for name, module in net.model.named_modules():
        parts = name.split(".")
        if (module._forward_hooks or module._forward_pre_hooks) and not any(
                ".".join(parts[:i]) in called for i in range(1, len(parts) + 1)):
            raise TreeUnavailable(f"{name or type(module).__name__} has forward hooks, which its traced graph would skip")


def _stage_starts(nodes: list[fx.Node], owner: dict[str, int], names: list[str]) -> list[int]:
    """Index of each stage's first node; every stage's nodes must lie before the next stage's first."""
    found: list[list[int]] = [[] for _ in names]
    for i, node in enumerate(nodes):
        if node.op != "call_module":
            continue
        stages = {owner[node.target]} if node.target in owner else {
            s for name, s in owner.items() if name.startswith(f"{node.target}.")}
        if len(stages) > 1:
            raise TreeUnavailable(f"{node.target} runs the blocks of stages {', '.join(names[s] for s in sorted(stages))}"
                                  " in one call")
        for s in stages:
            found[s].append(i)
    for s, at in enumerate(found):
        if not at:
            raise TreeUnavailable(f"the blocks of stage {names[s]} are not called one by one in the traced graph")
    starts = [at[0] for at in found]
    for s in range(len(names) - 1):
        if found[s][-1] >= starts[s + 1]:
            raise TreeUnavailable(f"stage {names[s]} still runs after stage {names[s + 1]} has begun")
    return starts


def _describe(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _compile(root: nn.Module, nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node],
             *, last: bool) -> _Segment:
    """``nodes`` as a GraphModule over ``root``'s own submodules: placeholders for ``inputs``, returning
    ``outputs`` as a tuple (the last segment: the model's output, as a 1-tuple)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {a: graph.placeholder(a.name) for a in inputs}
    result: Any = None
    for node in nodes:
        if node.op == "output":
            result = fx.map_arg(node.args[0], env.__getitem__)
        else:
            env[node] = graph.node_copy(node, env.__getitem__)
    graph.output((result,) if last else tuple(env[o] for o in outputs))
    names = ("output",) if last else tuple(o.name for o in outputs)
    return _Segment(fx.GraphModule(root, graph), tuple(a.name for a in inputs), names)
