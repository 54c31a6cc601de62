"""The adaptive depth network: one model, ``2**N`` sub-networks, switched by flag flips."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .conversion.analysis import default_input_size
from .conversion.plan import Plan, all_patterns, format_pattern, parse_pattern
from .io.storage import save as save_parts
from .skipping import SkipAwareNorm, SkippableBlock, make_skip_aware, make_skippable, restore
from .statistics import PatternStatistics, _Installed, batchnorms

Pattern = str | Sequence[bool]


class AdaptiveNet(nn.Module):
    """A model whose stages can drop their skippable sub-paths at run time.

    Build one with :func:`adnify.convert` or :func:`adnify.load`. In the super-net
    configuration (the default, ``"F" * N``) it computes exactly what the original model
    computed. ``T`` in a pattern skips that stage's skippable blocks (they are not executed)
    and switches the stage's mandatory norms to their skip-aware twins.

    Attributes:
        model: the wrapped model, converted in place (parameter names unchanged).
        plan: the :class:`~adnify.conversion.plan.Plan` that was applied.
        source: how to rebuild the model, e.g. ``{"model": "resnet50", "kwargs": {...}}``.
        stage_outputs: ``h^s`` of every adaptive stage from the last forward pass.
    """

    def __init__(self, model: nn.Module, plan: Plan, *, source: dict[str, Any] | None = None,
                 shared_norms: bool = False) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.source = dict(source or {})
        self.shared_norms = shared_norms
        self.stage_outputs: list[torch.Tensor | None] = [None] * plan.num_stages
        modules = dict(model.named_modules())
        missing = [n for s in plan.stages for n in s.mandatory + s.skippable + s.norms if n not in modules]
        if missing:
            raise ValueError(f"the plan names modules the model does not have: {missing[:5]}")
        self._skippable: list[list[nn.Module]] = []
        self._norms: list[list[nn.Module]] = []
        for i, stage in enumerate(plan.stages):
            blocks = [modules[n] for n in stage.skippable]
            for b in blocks:
                make_skippable(b)
            blocks[-1].adnify_sink = self.stage_outputs
            blocks[-1].adnify_stage = i
            norms = [] if shared_norms else [modules[n] for n in stage.norms]
            for norm in norms:
                make_skip_aware(norm)
            self._skippable.append(blocks)
            self._norms.append(norms)
        self._pattern: tuple[bool, ...] = (False,) * plan.num_stages
        self._statistics: PatternStatistics | None = None
        self._batchnorms: dict[str, nn.Module] = {}
        self._installed = _Installed()

    # --- sub-network selection ---------------------------------------------------------------

    @property
    def features_only(self) -> bool:
        """Whether this is a backbone returning feature maps (timm ``features_only``), not a classifier."""
        # timm's feature wrappers hold a FeatureInfo; its classifiers a plain list of dicts
        return callable(getattr(getattr(self.model, "feature_info", None), "channels", None))

    @property
    def feature_info(self) -> Any:
        """timm's ``FeatureInfo`` of a backbone: channels, reductions and module of each returned level."""
        info = getattr(self.model, "feature_info", None)
        if info is None or not self.features_only:
            raise AttributeError(f"{type(self.model).__name__} is no features_only backbone: it has no feature_info")
        return info

    @property
    def num_stages(self) -> int:
        """Number of adaptive stages ``N``."""
        return self.plan.num_stages

    @property
    def pattern(self) -> str:
        """The current sub-network as a pattern string."""
        return format_pattern(self._pattern)

    def input_size(self, override: Sequence[int] | None = None) -> tuple[int, int, int]:
        """Input size C,H,W: ``override``, else the size it was trained at (saved with the model), else the
        size given at conversion, else timm's config."""
        trained = (self.source.get("data_config") or {}).get("input_size")
        size = override or trained or self.source.get("input_size") or default_input_size(self.model)
        return tuple(int(s) for s in size)  # type: ignore[return-value]

    def patterns(self) -> list[str]:
        """All ``2**N`` patterns, super-net first, base-net last."""
        return all_patterns(self.num_stages)

    def set_subnet(self, pattern: Pattern) -> None:
        """Select a sub-network until the next call (``"TFFF"``, ``"super"``, ``"base"``, bools)."""
        flags = parse_pattern(pattern, self.num_stages)
        if flags == self._pattern:
            return
        # Plain attributes written straight into __dict__: nn.Module.__setattr__ costs ~1 µs each.
        for skip, blocks, norms in zip(flags, self._skippable, self._norms):
            for b in blocks:
                b.__dict__["adnify_skip"] = skip
            for n in norms:
                n.__dict__["adnify_skipped"] = skip
        self._pattern = flags
        if self._statistics is not None and not self.training:
            self._installed.swap(self._batchnorms, self._statistics, format_pattern(flags))

    @contextlib.contextmanager
    def subnet(self, pattern: Pattern) -> Iterator["AdaptiveNet"]:
        """Select a sub-network inside a ``with`` block only."""
        previous = self._pattern
        self.set_subnet(pattern)
        try:
            yield self
        finally:
            self.set_subnet(previous)

    # --- per-pattern BatchNorm statistics ---------------------------------------------------------

    @property
    def pattern_statistics(self) -> PatternStatistics | None:
        """Each sub-network's own BatchNorm statistics (see :mod:`adnify.statistics`), or None."""
        return self._statistics

    def set_pattern_statistics(self, stats: PatternStatistics | None) -> None:
        """Use ``stats`` in evaluation mode from now on (None: the shared statistics training keeps).

        Raises:
            ValueError: ``stats`` names a layer this model lacks, or has another shape.
        """
        norms = batchnorms(self.model)
        if stats is not None:
            stats.check_fits(norms, self.num_stages)
        self._installed.restore(self._batchnorms)
        self._statistics, self._batchnorms = stats, norms if stats is not None else {}
        if stats is not None and not self.training:
            self._installed.swap(norms, stats, self.pattern)

    @contextlib.contextmanager
    def shared_statistics(self) -> Iterator["AdaptiveNet"]:
        """Inside the block, every BatchNorm holds the shared statistics training keeps (as in training mode)."""
        self._installed.restore(self._batchnorms)
        try:
            yield self
        finally:
            if self._statistics is not None and not self.training:
                self._installed.swap(self._batchnorms, self._statistics, self.pattern)

    def train(self, mode: bool = True) -> "AdaptiveNet":
        super().train(mode)
        if self._statistics is not None:
            if mode:
                self._installed.restore(self._batchnorms)
            else:
                self._installed.swap(self._batchnorms, self._statistics, self.pattern)
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> "AdaptiveNet":
        # A move (.to, .half) must reach the stored sets too, and the shared statistics must move as the
        # layers' own buffers, not as a pattern's set standing in for them.
        with self.shared_statistics():
            super()._apply(fn, recurse)
            if self._statistics is not None:
                self._statistics.apply(fn)
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The module's state with the shared BatchNorm statistics (the per-pattern sets are saved apart)."""
        with self.shared_statistics():
            return super().state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        with self.shared_statistics():  # write into the shared statistics, never into a pattern's set
            return super().load_state_dict(*args, **kwargs)

    # --- running -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, skip: Pattern | None = None, return_stages: bool = False) -> Any:
        """Run the current sub-network, or ``skip`` for this call only.

        With ``return_stages=True`` returns ``(output, stage_outputs)``, the form to use
        under DDP, where everything a loss needs must come out of one forward call.
        """
        if skip is None:
            out = self.model(x)
        else:
            with self.subnet(skip):
                out = self.model(x)
        return (out, list(self.stage_outputs)) if return_stages else out

    # --- files and static sub-networks -----------------------------------------------------------

    def save(self, directory: str, *, force: bool = False, extra: dict[str, Any] | None = None) -> None:
        """Write ``model.safetensors`` and ``adnify.json`` (plan, source, version) atomically."""
        with self.shared_statistics():
            save_parts(self.model, self.plan, self.source, directory, shared_norms=self.shared_norms, force=force,
                       extra=extra, statistics=self._statistics)

    def export(self, pattern: Pattern, *, share: bool = False) -> nn.Module:
        """A plain module computing sub-network ``pattern``: skipped blocks removed, norms resolved.

        With ``share=True`` it holds this net's own parameter and buffer tensors instead of copies
        (no extra memory; it sees later changes to the net), e.g. to time many patterns side by side.
        """
        return export_static(self, pattern, share=share)

    def block_names(self, pattern: Pattern) -> list[str]:
        """Qualified names of the blocks ``pattern`` skips."""
        flags = parse_pattern(pattern, self.num_stages)
        return [n for skip, s in zip(flags, self.plan.stages) if skip for n in s.skippable]

    def extra_repr(self) -> str:
        return f"stages={self.num_stages}, pattern={self.pattern}"

    def __deepcopy__(self, memo: dict) -> "AdaptiveNet":
        # Rebuild the wiring (sink list, module lists) so the copy never touches the original.
        with self.shared_statistics():
            model = restore_copy(self.model)
        clone = AdaptiveNet(model, copy.deepcopy(self.plan), source=copy.deepcopy(self.source),
                            shared_norms=self.shared_norms)
        clone._copy_twins_from(self)
        clone.set_subnet(self._pattern)
        clone.train(self.training)
        if self._statistics is not None:
            clone.set_pattern_statistics(self._statistics.clone())
        return clone

    def _copy_twins_from(self, other: "AdaptiveNet") -> None:
        with other.shared_statistics():
            for mine, theirs in zip(self._norms, other._norms):
                for a, b in zip(mine, theirs):
                    a.skip_copy.load_state_dict(b.skip_copy.state_dict())


_FLAGS = ("adnify_skip", "adnify_sink", "adnify_stage", "adnify_skipped")


class _PassThrough(nn.Module):
    """Stands where a skipped block was: returns its first input (extra arguments ignored)."""

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _tensor_memo(module: nn.Module, share: bool) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo that keeps ``module``'s parameters and buffers as they are (``share``)."""
    if not share:
        return {}
    return {id(t): t for t in (*module.parameters(), *module.buffers())}


def restore_copy(model: nn.Module, *, share: bool = False) -> nn.Module:
    """A deep copy of a converted model with every module back in its original class.

    The twins and the run-time flags stay behind; callers that need twins copy them. With
    ``share=True`` the copy holds the same parameter and buffer tensors (only modules are copied).
    """
    memo = _tensor_memo(model, share)
    stashed: list[tuple[nn.Module, type, dict[str, Any], nn.Module | None]] = []
    for mod in model.modules():
        if isinstance(mod, (SkippableBlock, SkipAwareNorm)):
            flags = {k: mod.__dict__.pop(k) for k in _FLAGS if k in mod.__dict__}
            twin = mod._modules.pop("skip_copy", None)
            stashed.append((mod, type(mod), flags, twin))
            mod.__class__ = type(mod).adnify_base
    try:
        return copy.deepcopy(model, memo)
    finally:
        for mod, cls, flags, twin in stashed:
            mod.__class__ = cls
            mod.__dict__.update(flags)
            if twin is not None:
                mod._modules["skip_copy"] = twin


def export_static(net: AdaptiveNet, pattern: Pattern, *, share: bool = False) -> nn.Module:
    """See :meth:`AdaptiveNet.export`."""
    flags = parse_pattern(pattern, net.num_stages)
    with net.shared_statistics():  # the copy starts from the shared statistics; the pattern's are baked in below
        static = restore_copy(net.model, share=share)
        modules = dict(net.model.named_modules())
        for skip, stage in zip(flags, net.plan.stages):
            if skip:
                for name in stage.skippable:
                    _set_submodule(static, name, _PassThrough())
            if net.shared_norms:
                continue
            for name in stage.norms:
                norm = modules[name]
                twin = norm.skip_copy
                _set_submodule(static, name, copy.deepcopy(twin, _tensor_memo(twin, share)) if skip
                               else restore_copy(norm, share=share))
    if net.pattern_statistics is not None:
        _bake_statistics(net, static, flags, share)
    static.train(net.training)
    return static


def _bake_statistics(net: AdaptiveNet, static: nn.Module, flags: tuple[bool, ...], share: bool) -> None:
    """Give each BatchNorm of ``static`` (sub-network ``flags`` of ``net``) that pattern's statistics."""
    stats = net.pattern_statistics
    assert stats is not None
    skipped_norms = {n: skip for skip, s in zip(flags, net.plan.stages) for n in s.norms}
    text = format_pattern(flags)
    for name in stats.sets:
        owner = name.removesuffix(".skip_copy")
        if not net.shared_norms and owner in skipped_norms and skipped_norms[owner] != (owner != name):
            continue  # the other copy of a skip-aware pair is the one this pattern runs
        try:
            target = static.get_submodule(owner)
        except AttributeError:  # inside a block this pattern drops
            continue
        pair = stats.lookup(name, text)
        if pair is not None and isinstance(target, nn.modules.batchnorm._BatchNorm):
            target._buffers["running_mean"], target._buffers["running_var"] = (
                pair if share else (pair[0].clone(), pair[1].clone()))


__all__ = ["AdaptiveNet", "export_static", "restore_copy", "restore"]
