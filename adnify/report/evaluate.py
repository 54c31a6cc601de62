"""The one evaluation pipeline: accuracy of many sub-networks in one pass over the data.

``adnify report``, the validation of ``adnify train`` (and its norm calibration), the benchmarks and
the examples all evaluate through :func:`eval_transform` (timm's data config of the model, crop mode
included), :func:`eval_loader` and :func:`evaluate_patterns`, so a run's logged validation accuracy
is what ``adnify report --data RUN`` measures on the same split.

Every batch is read and transformed once, then run through every requested pattern as a prefix tree
(:mod:`adnify.report.pattern_tree`): the stem once, each stage once per distinct (prefix, choice), so
all ``2**N`` sub-networks cost about half of ``2**N`` separate passes for ResNet-50 and Lite0, with
results equal bit for bit to ``net(x, skip=p)``. A model whose stages cannot be cut falls back to one
pass per pattern and says why (a warning, and the ``record`` the report shows). Images enter in the
layout that is fastest on the device (:mod:`adnify.report.layout`: channels-last for convnets, a few
images per forward pass on the CPU). Top-1/top-5 hits and agreement with the super-net are counted
per pattern. Data loading is therefore paid once however many sub-networks are compared.

An image that cannot be decoded comes as a black one labelled :data:`~adnify.io.images.BROKEN`: it
is left out of every count, counted on its own (``Accuracy.broken``, ``record["broken_images"]``), and
more than ``max_broken_fraction`` of the images stops the pass with one line naming the first ones.

Under ``accelerate launch`` the loader is split across the processes and the predictions
are gathered with ``gather_for_metrics`` (which drops the padding of the last batch), so
every process ends with the same counts.

Example::

    data = load_image_data("./imagenet", split="validation")
    loader = eval_loader(net, data, batch_size=64)
    results = evaluate_patterns(net, ["FFFF", "TTTT"], loader)
    results["TTTT"].acc1
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..adaptive import AdaptiveNet
from ..conversion.plan import format_pattern, parse_pattern
from ..errors import AdnifyError
from ..io.data import ImageData, check_labels
from ..io.broken import DEFAULT_FRACTION, BrokenImages
from ..io.images import BROKEN, make_loader
from .layout import Layout, fastest_layout
from .pattern_tree import PatternTree, StageInputChanged, TreeUnavailable

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class Accuracy:
    """Evaluation of one sub-network; percentages 0-100, ``None`` when not measured."""

    pattern: str
    examples: int
    acc1: float | None
    acc5: float | None
    agreement: float | None
    kl_to_super: float | None = None
    broken: int = 0  #: images that could not be decoded, left out of ``examples``


#: The evaluation transform's settings a trained model carries (``source["data_config"]``).
TRANSFORM_KEYS = ("interpolation", "mean", "std", "crop_pct", "crop_mode")


def eval_data_config(net: AdaptiveNet, input_size: Sequence[int] | None = None) -> dict[str, Any]:
    """timm's data config of ``net`` at :meth:`AdaptiveNet.input_size`, with the transform settings the
    model was trained with when it carries them (a copied ``final/`` needs no run directory)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(net.model, args={"input_size": net.input_size(input_size)})
    saved = net.source.get("data_config") or {}
    cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in TRANSFORM_KEYS})
    return cfg


def eval_transform(net: AdaptiveNet, input_size: Sequence[int] | None = None):
    """timm's evaluation transform for ``net`` (:func:`eval_data_config`): resize, crop (the model's
    ``crop_pct`` and ``crop_mode``), normalise."""
    from timm.data import create_transform

    return create_transform(**eval_data_config(net, input_size), is_training=False)


def eval_loader(net: AdaptiveNet, data: ImageData, *, batch_size: int = 32, num_workers: int = 0,
                input_size: Sequence[int] | None = None) -> torch.utils.data.DataLoader:
    """Batches of the evaluation split of ``data`` (the whole data when it has only one split).

    Labels are checked against the classifier size of ``net``.
    """
    ds = data.validation if data.validation is not None else data.train
    if ds is None or len(ds) == 0:
        raise AdnifyError(f"{data.source} has no examples to evaluate on")
    num_classes = getattr(net.model, "num_classes", None)
    if num_classes:
        check_labels(data, int(num_classes))
    return make_loader(ds, data, eval_transform(net, input_size), batch_size=batch_size, num_workers=num_workers)


def evaluate_patterns(
    net: AdaptiveNet,
    patterns: Sequence[str],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    labels: bool = True,
    agreement: bool = False,
    accelerator: "Accelerator | None" = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    layout: Layout | None = None,
    max_images: int | None = None,
    progress: bool | Callable[[int, int | None], Any] = True,
    record: dict[str, Any] | None = None,
    tree: bool = True,
    max_broken_fraction: float = DEFAULT_FRACTION,
    on_broken: Callable[[str], Any] | None = None,
) -> dict[str, Accuracy]:
    """Top-1/top-5 accuracy (and agreement) of every pattern, in one pass over ``loader``.

    Args:
        net: the adaptive network; put in eval mode for the pass, restored afterwards.
        patterns: sub-networks to evaluate (``"TFFF"``, ``"super"``...).
        loader: ``(images, labels)`` batches, e.g. from :func:`eval_loader`; labels ``-1`` = none.
        labels: count top-1/top-5 hits; False when the data has no labels. Accuracy counts the
            labelled images only, and is None (not measured) when no image has a label.
        agreement: also count how often each pattern's top-1 prediction equals the super-net's,
            and average ``KL(softmax(super) || softmax(pattern))`` per image in nats (always done
            when ``labels`` is False). The super-net is computed for this even when it is not
            among ``patterns``.
        accelerator: an ``accelerate.Accelerator`` to split the data across processes; by
            default one is made (a single process unless started by ``accelerate launch``).
        device: where to run when no ``accelerator`` is given; default: the accelerator's choice.
        dtype: cast the network and the images to this dtype (default: leave as is).
        layout: memory format and images per forward pass; default:
            :func:`~adnify.report.layout.fastest_layout` for the device.
        max_images: evaluate this many images at most: of a DataLoader's dataset, evenly spaced
            ones (the same every time, spread over a class-sorted folder); of another iterable, the
            first ones. None: all.
        progress: a rich progress bar on stderr (main process only), or a callable
            ``progress(done_batches, total_batches)`` (e.g. the training bar), or False.
        record: a dict to fill with how the pass ran (the report shows it): ``evaluation`` (pattern
            tree or one pass per pattern, with the reason), ``memory_format``, ``forward_batch``.
        tree: False runs each pattern in turn, as before the pattern tree (for comparisons).

    Returns:
        pattern (normalised, e.g. ``"FFFF"``) -> :class:`Accuracy`, in the order given.
    """
    if not labels and not agreement:
        agreement = True
    pats = list(dict.fromkeys(format_pattern(parse_pattern(p, net.num_stages)) for p in patterns))
    if not pats:
        raise AdnifyError("no patterns to evaluate")
    if max_images is not None and max_images < 1:
        raise AdnifyError(f"max_images must be at least 1 (or None for all), got {max_images}")
    accelerator = accelerator or make_accelerator(device)
    loader = _shard(accelerator, _capped(loader, max_images))
    super_net = "F" * net.num_stages
    run = pats + ([super_net] if agreement and super_net not in pats else [])
    ref = run.index(super_net) if agreement else None
    layout = layout or fastest_layout(net, accelerator.device)
    was_training = net.training
    net.eval().to(accelerator.device)
    if dtype is not None:
        net.to(dtype)
    forward = _Forward(net, run, layout, tree)
    hits = torch.zeros(3, len(pats), dtype=torch.long)  # top-1, top-5, agreement
    kl_sum = torch.zeros(len(pats), dtype=torch.float64)
    seen = labelled = 0
    size = _dataset_size(loader)
    broken = BrokenImages(size or 0, "the evaluation data", max_broken_fraction)
    try:
        bar = progress if callable(progress) else progress_bar(
            f"evaluating {len(pats)} sub-network{'s' * (len(pats) > 1)}: batches", _length(loader),
            accelerator.is_main_process and progress)
        with torch.no_grad(), _as_context(bar, _length(loader)) as step:
            for batch in loader:
                images, targets = batch
                images = images.to(accelerator.device, non_blocking=True)
                if dtype is not None:
                    images = images.to(dtype)
                logits = forward(layout.apply(images))
                # [B, P, k] and [B, P]: the batch dimension first, so that gather_for_metrics can drop padding.
                top = torch.stack([_top5(x) for x in logits], dim=1)
                kl = (_kl_to(logits[ref], logits[: len(pats)]),) if ref is not None else ()
                preds, targets, *kl = accelerator.gather_for_metrics((top, targets.to(accelerator.device), *kl))
                preds, targets = preds.cpu(), targets.cpu()
                valid = targets != BROKEN  # undecodable images: counted apart, in no score
                for name in broken.add(getattr(batch, "broken", ()), int((~valid).sum())):
                    if on_broken is not None:
                        on_broken(name)
                if not valid.all():
                    preds, targets, kl = preds[valid], targets[valid], [k[valid.to(k.device)] for k in kl]
                broken.size = size or seen + len(targets) + broken.count
                broken.check()
                if max_images is not None:  # an iterable without a dataset to subsample: its first images
                    keep = max_images - seen
                    preds, targets, kl = preds[:keep], targets[:keep], [k[:keep] for k in kl]
                seen += len(targets)
                if labels:
                    known = targets >= 0
                    labelled += int(known.sum())
                    found = (preds[:, : len(pats)] == targets[:, None, None]) & known[:, None, None]
                    hits[0] += found[..., 0].sum(0)
                    hits[1] += found.any(-1).sum(0)
                if ref is not None:
                    hits[2] += (preds[:, : len(pats), 0] == preds[:, ref : ref + 1, 0]).sum(0)
                    kl_sum += kl[0].double().sum(0).cpu()
                step()
                if max_images is not None and seen >= max_images:
                    break
    finally:
        net.train(was_training)
    if seen == 0:
        raise AdnifyError("no examples to evaluate" + (": none of them can be decoded" if broken.count else ""))
    if record is not None:
        record.update(forward.describe(), broken_images=broken.count, broken_names=broken.names)

    def pct(i: int, j: int, total: int) -> float | None:
        return 100.0 * hits[i, j].item() / total if total else None

    return {p: Accuracy(p, seen, pct(0, j, labelled), pct(1, j, labelled), pct(2, j, seen if ref is not None else 0),
                        kl_sum[j].item() / seen if ref is not None else None, broken.count)
            for j, p in enumerate(pats)}


class _Forward:
    """The logits of every pattern of ``run`` on a batch: through the pattern tree, else one pattern at a time."""

    def __init__(self, net: AdaptiveNet, run: list[str], layout: Layout, tree: bool) -> None:
        self.net, self.run, self.layout = net, run, layout
        self.flags = [parse_pattern(p, net.num_stages) for p in run]
        self.tree: PatternTree | None = None
        self.note: str | None = None if tree else "asked for"
        if len(run) > 1 and tree:  # one pattern is a plain forward pass
            try:
                self.tree = PatternTree.build(net)
            except TreeUnavailable as e:
                self._fall_back(str(e))

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        parts = [self._patterns(chunk) for chunk in self.layout.split(images)]
        return parts[0] if len(parts) == 1 else [torch.cat(outs) for outs in zip(*parts)]

    def _patterns(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.tree is not None:
            try:
                found = self.tree.run(x, self.flags)
                return [found[f] for f in self.flags]
            except StageInputChanged as e:
                self._fall_back(str(e))
        return [self.net(x, skip=p) for p in self.run]

    def _fall_back(self, why: str) -> None:
        self.tree, self.note = None, why
        warnings.warn(f"{type(self.net.model).__name__}: each sub-network is evaluated in turn, not as a pattern "
                      f"tree, because {why}", RuntimeWarning, stacklevel=4)

    def describe(self) -> dict[str, Any]:
        if len(self.run) == 1:
            how = "one pattern"
        elif self.tree is not None:
            how = "pattern tree (shared prefixes computed once)"
        else:
            how = f"one pass per pattern ({self.note})"
        return {"evaluation": how, "memory_format": self.layout.memory_format,
                "forward_batch": self.layout.forward_batch}


@contextlib.contextmanager
def _as_context(bar: Any, total: int | None) -> Iterator[Callable[[], None]]:
    """A progress callable ``(done, total)`` as the context manager :func:`progress_bar` is; else ``bar`` itself."""
    if not callable(bar) or hasattr(bar, "__enter__"):
        with bar as step:
            yield step
        return
    done = [0]

    def step() -> None:
        done[0] += 1
        bar(done[0], total)

    bar(0, total)
    yield step


def _kl_to(reference: torch.Tensor, logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[B, P]``: ``KL(softmax(reference) || softmax(logits[j]))`` of every image, in float32."""
    ref = reference.float().log_softmax(-1)
    return torch.stack([F.kl_div(x.float().log_softmax(-1), ref, log_target=True, reduction="none").sum(-1)
                        for x in logits], dim=1)


def _top5(logits: torch.Tensor) -> torch.Tensor:
    return logits.topk(min(5, logits.shape[-1]), dim=-1).indices


def make_accelerator(device: torch.device | str | None = None) -> "Accelerator":
    """An ``accelerate.Accelerator``: the processes of ``accelerate launch``, else one process on ``device``."""
    from accelerate import Accelerator

    return Accelerator(cpu=device is not None and torch.device(device).type == "cpu")


_SHARDS: "weakref.WeakKeyDictionary[torch.utils.data.DataLoader, tuple[Any, Iterable]]" = weakref.WeakKeyDictionary()


def _shard(accelerator: "Accelerator", loader: Iterable) -> Iterable:
    """``loader`` split across the processes (a loader ``accelerate`` already prepared is kept as is).

    The split loader is made once per loader and accelerator: ``prepare_data_loader`` builds a new
    DataLoader, which the accelerator keeps, so preparing again at every evaluation of a training
    run would leave one set of persistent worker processes behind each time.
    """
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

    if not isinstance(loader, torch.utils.data.DataLoader) or isinstance(loader, (DataLoaderShard, DataLoaderDispatcher)):
        return loader
    owner, prepared = _SHARDS.get(loader, (None, None))
    if owner is None or owner() is not accelerator:
        prepared = accelerator.prepare_data_loader(loader)
        _SHARDS[loader] = (weakref.ref(accelerator), prepared)
    return prepared


_CAPPED: "weakref.WeakKeyDictionary[torch.utils.data.DataLoader, tuple[int, torch.utils.data.DataLoader]]" = (
    weakref.WeakKeyDictionary())


def _capped(loader: Iterable, max_images: int | None) -> Iterable:
    """``loader`` over ``max_images`` evenly spaced images of its dataset (made once per loader and cap, so a
    training run's evaluations keep one set of worker processes); other iterables as they are."""
    if max_images is None or not isinstance(loader, torch.utils.data.DataLoader):
        return loader
    try:
        size = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return loader
    if max_images >= size:
        return loader
    cap, capped = _CAPPED.get(loader, (None, None))
    if cap != max_images:
        spread = [i * size // max_images for i in range(max_images)]
        workers = loader.num_workers
        capped = torch.utils.data.DataLoader(
            torch.utils.data.Subset(loader.dataset, spread), batch_size=loader.batch_size, num_workers=workers,
            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers, prefetch_factor=loader.prefetch_factor if workers else None)
        _CAPPED[loader] = (max_images, capped)
    return capped


def _dataset_size(loader: Iterable) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A transient rich progress bar on stderr; yields ``update(completed=None)``, which advances by one
    step or sets the number of completed steps. A no-op when not ``enabled``."""
    if not enabled:
        yield lambda completed=None: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(completed: int | None = None) -> None:
            if completed is None:
                bar.advance(task)
            else:
                bar.update(task, completed=completed)

        yield update
