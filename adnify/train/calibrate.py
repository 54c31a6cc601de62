"""Re-estimate the BatchNorm statistics of the skip-aware norm copies on the user's images.

A skipped sub-path changes the distribution every later layer sees; the copies start with the
original statistics, which no longer fit. Running the base-net over unlabelled images with only the
copies in train mode (a cumulative average, no gradients) re-estimates them: the cheapest large
lever of label-free fine-tuning (docs/finetune.md). The super-net never runs a copy, so it is untouched.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..adaptive import AdaptiveNet
from ..conversion.plan import format_pattern, parse_pattern
from ..io.images import BROKEN
from ..report.pattern_tree import PatternTree, StageInputChanged, TreeUnavailable
from ..statistics import PatternStatistics, batchnorms, statistics_levels

__all__ = ["calibrate_skip_norms", "estimate_pattern_statistics", "reestimate_batchnorms", "skip_norm_batchnorms"]


def skip_norm_batchnorms(net: AdaptiveNet) -> list[nn.modules.batchnorm._BatchNorm]:
    """The skip-aware norm copies that are BatchNorm layers (the ones with running statistics)."""
    return [norm.skip_copy for norms in net._norms for norm in norms
            if isinstance(norm.skip_copy, nn.modules.batchnorm._BatchNorm) and norm.skip_copy.track_running_stats]


def calibrate_skip_norms(net: AdaptiveNet, batches: Iterable[Any], *, max_images: int,
                         device: torch.device | str = "cpu", on_batch: Any = None,
                         patterns: Sequence[str] = ("base",)) -> int:
    """Replace the copies' running statistics by their average over up to ``max_images`` images.

    Args:
        net: the adaptive net; its training mode is restored afterwards.
        batches: ``(images, labels)`` batches, with evaluation transforms; rows labelled
            :data:`~adnify.io.images.BROKEN` (undecodable images) are left out.
        max_images: how many images to average over.
        device: where the images go.
        on_batch: called with the number of images after each batch (a progress bar).
        patterns: the sub-networks the copies are estimated under, one per batch in turn (default
            the base-net): e.g. every pattern, so the statistics fit the mixture a deployed network meets.

    Returns:
        The number of images used. A batch of one image is dropped: BatchNorm cannot take statistics
        of a single value per channel (the last stage of a small input), and one image adds little.
    """
    return reestimate_batchnorms(net, skip_norm_batchnorms(net), batches, max_images=max_images, device=device,
                                 on_batch=on_batch, patterns=patterns)


def reestimate_batchnorms(net: nn.Module, norms: Sequence[nn.modules.batchnorm._BatchNorm], batches: Iterable[Any],
                          *, max_images: int, device: torch.device | str = "cpu", on_batch: Any = None,
                          patterns: Sequence[str] | None = ("base",)) -> int:
    """Replace the running statistics of ``norms`` (any of ``net``'s BatchNorms) by their cumulative
    average over up to ``max_images`` images, as :func:`calibrate_skip_norms` does for the copies;
    the other layers stay in evaluation mode and nothing gets a gradient. ``net`` is an adaptive net
    run under ``patterns`` in turn, or (``patterns=None``) any module, run as it is."""
    if not norms or max_images <= 0:
        return 0
    seen = 0
    with _accumulating(net, norms), torch.no_grad():
        for m in norms:
            m.reset_running_stats()
        for i, images in _usable(batches, max_images=max_images, device=device, on_batch=on_batch):
            if patterns is None:  # a plain module: a network trained alone
                net(images)
            else:
                net(images, skip=patterns[i % len(patterns)])
            seen += images.shape[0]
    return seen


@contextmanager
def _accumulating(net: nn.Module, norms: Iterable[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """``norms`` in training mode with a cumulative average, the rest of ``net`` in evaluation mode; the
    momenta and ``net``'s mode are put back afterwards."""
    norms = list(norms)
    was_training = net.training
    momenta = [m.momentum for m in norms]
    try:
        net.eval()
        for m in norms:
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.train(was_training)


def _usable(batches: Iterable[Any], *, max_images: int, device: torch.device | str,
            on_batch: Any) -> Iterator[tuple[int, torch.Tensor]]:
    """``(index, images)`` of each batch, undecodable rows left out, up to ``max_images`` in all; a batch of
    fewer than 2 images is skipped (BatchNorm cannot take statistics of one value per channel).
    ``on_batch(n)`` is called once the caller has used a batch of n images."""
    seen = 0
    for i, (images, labels) in enumerate(batches):
        images = images[labels != BROKEN][: max_images - seen].to(device)
        if images.shape[0] < 2:
            continue
        yield i, images
        seen += images.shape[0]
        if on_batch is not None:
            on_batch(images.shape[0])
        if seen >= max_images:
            return


def estimate_pattern_statistics(net: AdaptiveNet, batches: Iterable[Any], *, max_images: int,
                                patterns: Sequence[str] | None = None, device: torch.device | str = "cpu",
                                on_pattern: Any = None, on_batch: Any = None,
                                info: dict[str, Any] | None = None) -> PatternStatistics:
    """Each sub-network's own BatchNorm statistics: a cumulative average over up to ``max_images`` images
    of ``batches``, under each of ``patterns`` (default all ``2**N``).

    A layer's set is estimated once per prefix of skip flags it depends on (see :mod:`adnify.statistics`),
    with every layer in training mode as in a precise re-estimate of that pattern alone. All patterns
    run on each batch as a prefix tree, sharing the stages their prefixes share; a model the tree cannot
    cut runs one pass per pattern (``batches`` re-iterated), each set from the first pattern that runs
    it, to the same numbers. Nothing about ``net`` changes; attach the result with
    :meth:`~adnify.adaptive.AdaptiveNet.set_pattern_statistics`. Use the transforms the weights were
    trained with: on lite0, statistics of evaluation-transformed images scored lower on every network.

    Args:
        on_pattern: called with each pattern before its pass, where there is one pass per pattern.
        on_batch: called with the number of images after each batch.
        info: recorded with the statistics (``adnify.json``), e.g. the transforms used.
    """
    patterns = list(patterns) if patterns is not None else net.patterns()
    previous = net.pattern_statistics
    net.set_pattern_statistics(None)  # estimate from the shared statistics' layers; put back whatever happens
    try:
        norms = batchnorms(net.model)
        if not norms:
            raise ValueError(f"{type(net.model).__name__} has no BatchNorm with running statistics to estimate")
        levels = statistics_levels(net, norms)
        try:
            sets, counted = _sets_by_tree(net, norms, levels, patterns, batches, max_images=max_images,
                                          device=device, on_batch=on_batch)
        except (TreeUnavailable, StageInputChanged) as why:
            warnings.warn(f"{type(net.model).__name__}: BatchNorm statistics are estimated one pattern at a time "
                          f"(slower), not as a pattern tree, because {why}", RuntimeWarning, stacklevel=2)
            sets, counted = _sets_by_pattern(net, norms, levels, patterns, batches, max_images=max_images,
                                             device=device, on_pattern=on_pattern, on_batch=on_batch)
        if counted == 0:
            raise ValueError("no batch of at least 2 usable images to estimate statistics on")
    finally:
        net.set_pattern_statistics(previous)
    return PatternStatistics({n: per for n, per in sets.items() if per},
                             {"images": counted, "patterns": len(patterns), **(info or {})})


Sets = dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]
_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _sets_by_tree(net: AdaptiveNet, norms: dict[str, nn.modules.batchnorm._BatchNorm], levels: dict[str, int],
                  patterns: Sequence[str], batches: Iterable[Any], *, max_images: int, device: torch.device | str,
                  on_batch: Any) -> tuple[Sets, int]:
    """Every pattern of each batch at once, as a prefix tree (:class:`~adnify.report.pattern_tree.PatternTree`):
    patterns that share a prefix share its stages' work (5.3x faster than a pass per pattern on Lite0).

    Each (layer, prefix) keeps its own running buffers, swapped in by a pre-hook when the layer runs; a layer
    that runs again for the same prefix in one batch (a shared norm on both sides of its own stage) updates a
    scratch copy, so that every batch counts once, as in a pass per pattern. Raises :class:`TreeUnavailable`
    (or :class:`StageInputChanged` on the first batch) where the model cannot be cut at its stages."""
    saved = {n: dict(norm._buffers) for n, norm in norms.items()}
    running: dict[tuple[str, tuple[bool, ...]], dict[str, torch.Tensor]] = {}
    scratch = {n: {k: saved[n][k].clone() for k in _RUNNING} for n in norms}
    seen_now: set[tuple[str, tuple[bool, ...]]] = set()

    def swap_in(name: str) -> Any:
        def hook(module: nn.modules.batchnorm._BatchNorm, args: Any) -> None:
            key = (name, net._pattern[: levels[name]])  # the flags of the pattern the tree is running
            if key in seen_now:
                module._buffers.update(scratch[name])
                return
            seen_now.add(key)
            if key not in running:
                module._buffers.update({k: torch.empty_like(saved[name][k]) for k in _RUNNING})
                module.reset_running_stats()
                running[key] = {k: module._buffers[k] for k in _RUNNING}
            module._buffers.update(running[key])
        return hook

    handles = []
    seen = 0
    try:
        with _accumulating(net, norms.values()):
            tree = PatternTree.build(net)
            handles = [norm.register_forward_pre_hook(swap_in(n)) for n, norm in norms.items()]
            flags = [parse_pattern(p, net.num_stages) for p in patterns]
            with torch.no_grad():
                for _, images in _usable(batches, max_images=max_images, device=device, on_batch=on_batch):
                    seen_now.clear()
                    tree.run(images, flags)
                    seen += images.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        for n, norm in norms.items():
            norm._buffers.update(saved[n])
    sets: Sets = {n: {} for n in levels}
    for (name, flags), buffers in running.items():
        sets[name][format_pattern(flags)] = (buffers["running_mean"], buffers["running_var"])
    return sets, seen


def _sets_by_pattern(net: AdaptiveNet, norms: dict[str, nn.modules.batchnorm._BatchNorm], levels: dict[str, int],
                     patterns: Sequence[str], batches: Iterable[Any], *, max_images: int, device: torch.device | str,
                     on_pattern: Any, on_batch: Any) -> tuple[Sets, int]:
    """One pass per pattern, for a model the prefix tree cannot cut (a layer's set from the first pattern that
    runs it)."""
    sets: Sets = {name: {} for name in levels}
    counted = 0
    for pattern in patterns:
        todo = [n for n in levels if pattern[: levels[n]] not in sets[n]]
        if not todo:
            continue
        if on_pattern is not None:
            on_pattern(pattern)
        # Every layer in train mode on fresh tensors, as a precise re-estimate of this pattern alone would
        # have it (upstream layers normalise with batch statistics); only the missing sets are kept.
        saved = {n: dict(norm._buffers) for n, norm in norms.items()}
        for norm in norms.values():
            for key in _RUNNING:
                norm._buffers[key] = norm._buffers[key].clone()
        try:
            counted = reestimate_batchnorms(net, list(norms.values()), batches, max_images=max_images,
                                            device=device, on_batch=on_batch, patterns=(pattern,))
            for n in todo:
                if int(norms[n].num_batches_tracked) > 0:  # it ran under this pattern
                    sets[n][pattern[: levels[n]]] = (norms[n].running_mean, norms[n].running_var)
        finally:
            for n, buffers in saved.items():
                norms[n]._buffers.update(buffers)
    return sets, counted
