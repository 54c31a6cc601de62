"""One deployable file for every depth: the pattern is an input, ``skip`` (bool[N]), not a choice
made at export.

Each adaptive stage becomes one real branch (``torch.cond`` in the ``torch.export`` program, ``If``
in ONNX): the skipped branch runs the mandatory blocks with the skip-aware norm copies, the other
runs them with their own norms and then the skippable blocks. Both branches hold plain layers, so a
runtime fuses each convolution with its BatchNorm as in a static export, and the weights are shared,
not duplicated. Where a stage's blocks are not consecutive children of one ``nn.Sequential``, that
stage falls back to a branch per skippable block and per norm pair. The file carries, as
metadata, the stage names, the pattern order and every pattern's MACs, so a runtime can choose a
depth by budget without adnify installed.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..adaptive import AdaptiveNet
from ..conversion.plan import format_pattern
from ..errors import AdnifyError, first_line
from ..io.files import check_writable

__all__ = ["DynamicDepth", "depth_metadata", "export_dynamic", "read_metadata"]

METADATA_KEY = "adnify"


class StageSwitch(nn.Module):
    """One adaptive stage as a branch on ``skip[index]``: ``skipped`` (mandatory blocks, norm copies) or ``full``."""

    def __init__(self, index: int, skipped: nn.Module, full: nn.Module, flags: list) -> None:
        super().__init__()
        self.index, self.skipped, self.full = index, skipped, full
        self._flags = flags  # filled with the ``skip`` input by DynamicDepth.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(self._flags[0][self.index], self.skipped, self.full, (x,))


class DynamicDepth(nn.Module):
    """``forward(x, skip)``: the sub-network ``skip`` (one bool per adaptive stage, True = skip) of ``net``."""

    def __init__(self, net: AdaptiveNet, *, per_stage: bool = True) -> None:
        super().__init__()
        self._flags: list = [None]
        if net.pattern_statistics is not None:  # on a copy whose BatchNorms pick their statistics by ``skip``
            net, per_stage = selecting_statistics(net, self._flags), False
        self.net = net
        self.switched = switched_model(net, self._flags) if per_stage else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> Any:
        self._flags[0] = skip
        try:
            return self._forward(x, skip)
        finally:
            self._flags[0] = None

    def _forward(self, x: torch.Tensor, skip: torch.Tensor) -> Any:
        if self.switched is not None:
            return self.switched(x)
        net = self.net
        sinks = {m: m.__dict__["adnify_sink"] for m in net.model.modules() if m.__dict__.get("adnify_sink") is not None}
        try:
            for m in sinks:  # stage outputs are for distillation; an exported program has no use for them
                m.__dict__["adnify_sink"] = None
            for i, (blocks, norms) in enumerate(zip(net._skippable, net._norms)):
                for b in blocks:
                    b.__dict__["adnify_skip"] = skip[i]
                for n in norms:
                    n.__dict__["adnify_skipped"] = skip[i]
            return net.model(x)
        finally:
            for m, sink in sinks.items():
                m.__dict__["adnify_sink"] = sink
            flags, net._pattern = net._pattern, None
            net.set_subnet(flags)  # back to plain bools


class SelectedStatistics:
    """Mixin for a BatchNorm in evaluation: its running statistics are rows of a table (one per prefix of
    skip flags, ``F`` = 0 and the first flag the most significant bit) picked by the ``skip`` input.

    The rows are selected with ``index_select`` and normalised functionally: inside a ``torch.cond``
    branch nothing may be assigned, and a data-dependent index would give the export unbacked sizes.
    (Folding each set into a per-channel ``x * scale + shift`` instead ran slower in onnxruntime.)
    """

    adnify_flags: list
    adnify_level: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = (self.adnify_flags[0][: self.adnify_level].to(torch.int64) * self.adnify_place).sum().reshape(1)
        mean = torch.index_select(self.adnify_means, 0, row).reshape(-1)
        var = torch.index_select(self.adnify_vars, 0, row).reshape(-1)
        out = F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)  # type: ignore[attr-defined]
        for part in ("drop", "act"):  # timm's BatchNormAct2d normalises, then drops, then activates
            layer = getattr(self, part, None)
            if layer is not None:
                out = layer(out)
        return out


_PLAIN_BATCHNORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "BatchNormAct2d")


def selecting_statistics(net: AdaptiveNet, flags: list) -> AdaptiveNet:
    """A copy of ``net`` whose BatchNorms read ``net.pattern_statistics`` by the skip flags in ``flags[0]``."""
    from ..skipping import SkipAwareNorm

    stats = net.pattern_statistics
    assert stats is not None
    clone = copy.deepcopy(net).eval()
    clone.set_pattern_statistics(None)
    norms = dict(clone.model.named_modules())
    for name in stats.sets:
        norm = norms[name]
        cls = type(norm)
        base = getattr(cls, "adnify_base", cls)
        level = stats.level(name)
        if level == 0:  # one set for every pattern (the stem): a constant, which a runtime fuses into the conv
            norm._buffers["running_mean"], norm._buffers["running_var"] = (t.clone() for t in stats.sets[name][""])
            continue
        if base.__name__ not in _PLAIN_BATCHNORMS:
            raise AdnifyError(f"{name} is a {base.__name__}, whose statistics a dynamic-depth file cannot pick at run "
                              "time; export one --pattern at a time (each with its own statistics), or pass "
                              "--shared-statistics")
        rows = [stats.sets[name].get(format_pattern(bits), (norm.running_mean, norm.running_var))
                for bits in itertools.product((False, True), repeat=level)]
        # The own norm of a skip-aware pair keeps its switch to the twin above the selection.
        mixins = (SkipAwareNorm, SelectedStatistics) if isinstance(norm, SkipAwareNorm) else (SelectedStatistics,)
        norm.__class__ = type(f"Selected{base.__name__}", (*mixins, base), {"adnify_base": base})
        norm.register_buffer("adnify_means", torch.stack([r[0] for r in rows]), persistent=False)
        norm.register_buffer("adnify_vars", torch.stack([r[1] for r in rows]), persistent=False)
        norm.register_buffer("adnify_place", torch.tensor([2 ** (level - 1 - i) for i in range(level)],
                                                          dtype=torch.int64), persistent=False)
        norm.adnify_level, norm.adnify_flags = level, flags
    return clone


def switched_model(net: AdaptiveNet, flags: list) -> nn.Module | None:
    """A copy of ``net``'s model (sharing every tensor) whose stages are :class:`StageSwitch` branches.

    None when some stage's blocks are not consecutive children of one ``nn.Sequential`` (then the
    per-block and per-norm branches of :class:`DynamicDepth`'s fallback are used) or with shared norms.
    """
    from ..adaptive import _PassThrough, _set_submodule

    stages = [s.mandatory + s.skippable for s in net.plan.stages]
    if net.shared_norms or not all(_consecutive_in_sequential(net.model, names) for names in stages):
        return None
    skipped = net.export("T" * net.num_stages, share=True)
    switched = net.export("F" * net.num_stages, share=True)  # its stage blocks move into the switches
    for i, stage in enumerate(net.plan.stages):
        names = stage.mandatory + stage.skippable
        switch = StageSwitch(i, nn.Sequential(*[skipped.get_submodule(n) for n in stage.mandatory]),
                             nn.Sequential(*[switched.get_submodule(n) for n in names]), flags)
        _set_submodule(switched, names[0], switch)
        for name in names[1:]:
            _set_submodule(switched, name, _PassThrough())
    return switched.eval()


def _consecutive_in_sequential(model: nn.Module, names: list[str]) -> bool:
    parents = {n.rpartition(".")[0] for n in names}
    if len(parents) != 1:
        return False
    parent = model.get_submodule(parents.pop())
    if not isinstance(parent, nn.Sequential):
        return False
    children = list(parent._modules)
    keys = [n.rpartition(".")[2] for n in names]
    if any(k not in children for k in keys):
        return False
    start = children.index(keys[0])
    return children[start:start + len(keys)] == keys


def depth_metadata(net: AdaptiveNet, input_size: Sequence[int]) -> dict[str, Any]:
    """What a runtime needs to choose a depth: stages, pattern order, MACs per pattern."""
    from ..report.costs import pattern_costs

    patterns = net.patterns()
    costs = pattern_costs(net, patterns, input_size=input_size)
    return {
        "format": "adnify-dynamic-depth/1",
        "inputs": {"input": [-1, *input_size], "skip": [net.num_stages]},
        "skip": "one bool per adaptive stage, in this order; True skips that stage's skippable blocks",
        "stages": [{"mandatory": s.mandatory, "skippable": s.skippable} for s in net.plan.stages],
        "patterns": patterns,
        "macs": {c.pattern: c.macs for c in costs},
        "params": {c.pattern: c.params for c in costs},
        "model": net.source.get("model") or net.source.get("class"),
    }


def export_dynamic(net: AdaptiveNet, path: str | os.PathLike, *, format: str = "onnx",
                   input_size: Sequence[int] | None = None, force: bool = False,
                   shared_statistics: bool = False) -> Path:
    """Write ``net`` with a run-time depth input as ONNX (``If`` nodes) or a ``torch.export`` program (``torch.cond``).

    A net with each sub-network's own BatchNorm statistics gets them selected by ``skip`` at run time
    (its BatchNorms then stay apart from their convolutions: 1.12-1.15x a static export's latency, measured
    on EfficientNet-B0); ``shared_statistics=True`` writes the statistics training kept instead, with
    the static exports' speed and the accuracy of the shared statistics.
    """
    path = check_writable(path, force=force)
    if shared_statistics and net.pattern_statistics is not None:
        net = copy.deepcopy(net)
        net.set_pattern_statistics(None)
    if format not in ("onnx", "pt"):
        raise AdnifyError(f"unknown export format {format!r}: use pt or onnx")
    if getattr(net, "features_only", False):
        raise AdnifyError("--dynamic-depth exports classifiers; a features_only backbone exports one --pattern at a time")
    size = net.input_size(input_size)
    net = net.eval()
    example = (torch.randn(2, *size), torch.zeros(net.num_stages, dtype=torch.bool))
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}, "skip": None}
    meta = depth_metadata(net, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix or ".bin", dir=path.parent)
    os.close(fd)
    try:
        module = DynamicDepth(net).eval()  # a net with per-pattern statistics: DynamicDepth picks the fallback
        while True:
            try:
                with torch.no_grad():
                    if format == "pt":
                        program = torch.export.export(module, example, dynamic_shapes=shapes)
                        torch.export.save(program, tmp, extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
                    else:
                        _onnx(module, example, shapes, meta, tmp)
                break
            except AdnifyError:
                raise
            except Exception as e:
                if module.switched is not None:  # a model that calls its blocks one by one (NaFlexViT)
                    module = DynamicDepth(net, per_stage=False).eval()
                    continue
                raise AdnifyError(f"{net.source.get('model') or type(net.model).__name__} cannot be exported "
                                  f"with a run-time depth ({_root_reason(e)[:240]}); export one sub-network at "
                                  "a time with --pattern instead") from e
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _root_reason(error: BaseException) -> str:
    """The first line of the innermost cause: torch.onnx wraps the real one in a generic message."""
    while error.__cause__ is not None:
        error = error.__cause__
    return first_line(error, with_type=True)


def _localise_initializers(model: Any) -> int:
    """Move each weight that only one ``If`` branch reads into that branch; returns how many moved.

    onnxruntime's layout pass (NCHWc) rewrites only convolutions whose weights are initializers of
    their own graph: left in the main graph, the skippable blocks' weights kept their branch in the
    plain layout, 1.2x slower than the static export (ResNet-50). Moving them stores nothing twice.
    """
    import onnx

    readers: dict[str, set[int]] = {}
    graphs: dict[int, Any] = {}

    def walk(graph: Any) -> None:
        graphs[id(graph)] = graph
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, set()).add(id(graph))
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    walk(sub)

    main = model.graph
    walk(main)
    keep, moved = [], 0
    for init in main.initializer:
        where = readers.get(init.name, set())
        if len(where) == 1 and id(main) not in where:
            graphs[next(iter(where))].initializer.append(init)
            moved += 1
        else:
            keep.append(init)
    del main.initializer[:]
    main.initializer.extend(keep)
    return moved


def _onnx(module: nn.Module, example: tuple, shapes: dict, meta: dict, path: str) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError:
        raise AdnifyError('ONNX export needs the onnx extra: pip install "adnify[onnx]"') from None
    program = torch.onnx.export(module, example, dynamo=True, verbose=False, input_names=["input", "skip"],
                                output_names=["logits"], dynamic_shapes=shapes)
    program.save(path, external_data=False)
    model = onnx.load(path)
    _localise_initializers(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(model, path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The adnify metadata of a dynamic-depth file (.onnx or .pt2)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if METADATA_KEY not in props:
            raise AdnifyError(f"{path} is no adnify dynamic-depth file (no '{METADATA_KEY}' metadata)")
        return json.loads(props[METADATA_KEY])
    extra = {f"{METADATA_KEY}.json": ""}
    torch.export.load(str(path), extra_files=extra)
    if not extra[f"{METADATA_KEY}.json"]:
        raise AdnifyError(f"{path} is no adnify dynamic-depth file (no {METADATA_KEY}.json inside)")
    return json.loads(extra[f"{METADATA_KEY}.json"])
