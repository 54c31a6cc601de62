"""BatchNorm running statistics of each sub-network: one set per pattern prefix, swapped in by reference.

Training averages every BatchNorm's running statistics over the batches of both passes (super-net and
base-net), a mixture that fits neither end: measured on lite0, each end's own statistics lift the
base-net by 2 points (docs/claims.md). A BatchNorm's input depends only on the skip flags of the stages
that finish before it runs, so a layer in stage ``s`` needs one set per ``2**s`` prefixes and only the
head needs one per pattern: for Lite0, 1.3 M numbers for all 32 patterns, against 4.65 M weights.

In evaluation mode :class:`~adnify.adaptive.AdaptiveNet` points each BatchNorm's ``running_mean`` and
``running_var`` at the set of the selected pattern's prefix (a dictionary write, no copy); in training
mode, and in ``state_dict``, the shared statistics that training keeps are in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["PatternStatistics", "batchnorms", "statistics_levels"]

Stats = tuple[torch.Tensor, torch.Tensor]  # running_mean, running_var
_BUFFERS = ("running_mean", "running_var")


def batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Name -> every BatchNorm of ``model`` that keeps running statistics (skip-aware copies included)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None}


@dataclass
class PatternStatistics:
    """``sets[norm][prefix] = (running_mean, running_var)``: a norm's statistics under each prefix of
    skip flags (``""`` for layers before the first stage, ``"TF"`` for a layer after the second stage
    under patterns starting ``TF``...). ``info`` records how they were estimated (images, transforms)."""

    sets: dict[str, dict[str, Stats]]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        empty = [name for name, per in self.sets.items() if not per]
        if empty:
            raise ValueError(f"no statistics for {empty[0]}")
        self._levels = {name: len(next(iter(per))) for name, per in self.sets.items()}

    def level(self, name: str) -> int:
        """How many leading skip flags the statistics of norm ``name`` depend on."""
        return self._levels[name]

    def lookup(self, name: str, flags: str) -> Stats | None:
        """The set of norm ``name`` under pattern ``flags`` (a pattern string), or None if none was estimated."""
        return self.sets[name].get(flags[: self._levels[name]])

    def num_values(self) -> int:
        """How many numbers all the sets hold."""
        return sum(t.numel() for per in self.sets.values() for pair in per.values() for t in pair)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every tensor by ``fn(tensor)`` (a device or dtype move)."""
        self.sets = {n: {k: (fn(m), fn(v)) for k, (m, v) in per.items()} for n, per in self.sets.items()}
        self.__post_init__()

    def clone(self) -> "PatternStatistics":
        return PatternStatistics({n: {k: (m.clone(), v.clone()) for k, (m, v) in per.items()}
                                  for n, per in self.sets.items()}, dict(self.info))

    # --- files: flat tensor names for safetensors ------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """``"{prefix}/{norm}.running_mean"`` -> tensor (contiguous, on the CPU)."""
        return {f"{k}/{n}.{b}": t.detach().cpu().contiguous()
                for n, per in self.sets.items() for k, pair in per.items() for b, t in zip(_BUFFERS, pair)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], info: dict[str, Any] | None = None) -> "PatternStatistics":
        """The inverse of :meth:`to_tensors`; ValueError on a name or prefix it cannot read."""
        parts: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for key, tensor in tensors.items():
            prefix, _, rest = key.partition("/")
            norm, _, buffer = rest.rpartition(".")
            if not rest or buffer not in _BUFFERS or set(prefix) - {"T", "F"}:
                raise ValueError(f"unexpected tensor name {key!r}")
            parts.setdefault(norm, {}).setdefault(prefix, {})[buffer] = tensor
        sets: dict[str, dict[str, Stats]] = {}
        for norm, per in parts.items():
            if len({len(k) for k in per}) != 1:
                raise ValueError(f"{norm} has statistics for prefixes of different lengths: {sorted(per)[:4]}")
            incomplete = [k for k, pair in per.items() if set(pair) != set(_BUFFERS)]
            if incomplete:
                raise ValueError(f"{norm} under prefix {incomplete[0]!r} lacks a mean or a variance")
            sets[norm] = {k: (pair["running_mean"], pair["running_var"]) for k, pair in per.items()}
        return cls(sets, dict(info or {}))

    def check_fits(self, norms: dict[str, nn.Module], num_stages: int) -> None:
        """ValueError unless every set belongs to one of ``norms`` and has its shape, with prefixes of at
        most ``num_stages`` flags."""
        for name, per in self.sets.items():
            norm = norms.get(name)
            if norm is None:
                raise ValueError(f"statistics for {name}, which is no BatchNorm of this model")
            if self.level(name) > num_stages:
                raise ValueError(f"statistics for {name} depend on {self.level(name)} stages; the model has {num_stages}")
            shape = norm.running_mean.shape
            for k, (m, v) in per.items():
                if m.shape != shape or v.shape != shape:
                    raise ValueError(f"statistics for {name} under {k!r} have shape {tuple(m.shape)}, "
                                     f"the layer {tuple(shape)}")


def statistics_levels(net: Any, norms: dict[str, nn.Module]) -> dict[str, int]:
    """How many leading skip flags each of ``norms`` sees the effect of, from one super-net pass.

    A layer's level is the number of stages whose last skippable block has finished when the layer
    first runs; a skip-aware copy (``<norm>.skip_copy``, idle in the super-net) takes its norm's level.
    Layers that do not run in the super-net at all are left out.
    """
    finished = [0]
    first: dict[str, int] = {}

    def stage_done(*_: Any) -> None:
        finished[0] += 1

    def norm_runs(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            first.setdefault(name, finished[0])
        return hook

    handles = [blocks[-1].register_forward_hook(stage_done) for blocks in net._skippable]
    handles += [norm.register_forward_pre_hook(norm_runs(name)) for name, norm in norms.items()]
    try:
        param = next(iter(net.parameters()), None)
        x = torch.randn(2, *net.input_size(), device=param.device if param is not None else "cpu",
                        dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                net(x, skip="F" * net.num_stages)
        finally:
            net.train(was_training)
    finally:
        for h in handles:
            h.remove()
    for name in norms:
        owner = name.removesuffix(".skip_copy")
        if name not in first and owner != name and owner in first:
            first[name] = first[owner]
    return first


@dataclass
class _Installed:
    """The shared statistics of each norm, kept aside while a pattern's sets stand in its buffers."""

    shared: dict[str, Stats] = field(default_factory=dict)

    def swap(self, norms: dict[str, nn.Module], stats: PatternStatistics, flags: str) -> None:
        for name in stats.sets:
            norm = norms[name]
            if name not in self.shared:
                self.shared[name] = (norm._buffers["running_mean"], norm._buffers["running_var"])
            pair = stats.lookup(name, flags) or self.shared[name]
            norm._buffers["running_mean"], norm._buffers["running_var"] = pair

    def restore(self, norms: dict[str, nn.Module]) -> None:
        for name, pair in self.shared.items():
            norms[name]._buffers["running_mean"], norms[name]._buffers["running_var"] = pair
        self.shared.clear()

