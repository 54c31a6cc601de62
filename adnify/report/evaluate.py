"""The one evaluation pipeline: accuracy of many sub-networks in one pass over the data.

``adnify report``, the validation of ``adnify train`` (and its norm calibration), the benchmarks and
the examples all evaluate through :func:`eval_transform` (timm's data config of the model, crop mode
included), :func:`eval_loader` and :func:`evaluate_patterns`, so a run's logged validation accuracy
is what ``adnify report --data RUN`` measures on the same split.

Every batch is read and transformed once, then run through every requested pattern
(``net(x, skip=p)`` under ``torch.inference_mode``); top-1/top-5 hits and agreement with
the super-net are counted per pattern. Data loading, usually the larger cost on a CPU,
is therefore paid once however many sub-networks are compared.

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
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..adaptive import AdaptiveNet
from ..conversion.plan import format_pattern, parse_pattern
from ..errors import AdnifyError
from ..io.data import ImageData, check_labels
from ..io.images import make_loader

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


def eval_transform(net: AdaptiveNet, input_size: Sequence[int] | None = None):
    """timm's evaluation transform for ``net`` at :meth:`AdaptiveNet.input_size`: resize, crop (the model's
    ``crop_pct`` and ``crop_mode``), normalise, all from ``timm.data.resolve_model_data_config``."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(net.model, args={"input_size": net.input_size(input_size)})
    return create_transform(**cfg, is_training=False)


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
    progress: bool = True,
) -> dict[str, Accuracy]:
    """Top-1/top-5 accuracy (and agreement) of every pattern, in one pass over ``loader``.

    Args:
        net: the adaptive network; put in eval mode for the pass, restored afterwards.
        patterns: sub-networks to evaluate (``"TFFF"``, ``"super"``...).
        loader: ``(images, labels)`` batches, e.g. from :func:`eval_loader`; labels ``-1`` = none.
        labels: count top-1/top-5 hits; False when the data has no labels.
        agreement: also count how often each pattern's top-1 prediction equals the super-net's,
            and average ``KL(softmax(super) || softmax(pattern))`` per image in nats (always done
            when ``labels`` is False). The super-net runs once per batch for this even when it is
            not among ``patterns``.
        accelerator: an ``accelerate.Accelerator`` to split the data across processes; by
            default one is made (a single process unless started by ``accelerate launch``).
        device: where to run when no ``accelerator`` is given; default: the accelerator's choice.
        dtype: cast the network and the images to this dtype (default: leave as is).
        progress: show a rich progress bar on stderr (main process only).

    Returns:
        pattern (normalised, e.g. ``"FFFF"``) -> :class:`Accuracy`, in the order given.
    """
    if not labels and not agreement:
        agreement = True
    pats = list(dict.fromkeys(format_pattern(parse_pattern(p, net.num_stages)) for p in patterns))
    if not pats:
        raise AdnifyError("no patterns to evaluate")
    accelerator = accelerator or make_accelerator(device)
    loader = _shard(accelerator, loader)
    super_net = "F" * net.num_stages
    run = pats + ([super_net] if agreement and super_net not in pats else [])
    ref = run.index(super_net) if agreement else None
    was_training = net.training
    net.eval().to(accelerator.device)
    if dtype is not None:
        net.to(dtype)
    hits = torch.zeros(3, len(pats), dtype=torch.long)  # top-1, top-5, agreement
    kl_sum = torch.zeros(len(pats), dtype=torch.float64)
    seen = 0
    try:
        bar = progress_bar(f"evaluating {len(pats)} sub-network{'s' * (len(pats) > 1)}: batches", _length(loader),
                           accelerator.is_main_process and progress)
        with torch.inference_mode(), bar as step:
            for images, targets in loader:
                images = images.to(accelerator.device, non_blocking=True)
                if dtype is not None:
                    images = images.to(dtype)
                logits = [net(images, skip=p) for p in run]
                # [B, P, k] and [B, P]: the batch dimension first, so that gather_for_metrics can drop padding.
                top = torch.stack([_top5(x) for x in logits], dim=1)
                kl = (_kl_to(logits[ref], logits[: len(pats)]),) if ref is not None else ()
                preds, targets, *kl = accelerator.gather_for_metrics((top, targets.to(accelerator.device), *kl))
                preds, targets = preds.cpu(), targets.cpu()
                seen += len(targets)
                if labels:
                    found = preds[:, : len(pats)] == targets[:, None, None]
                    hits[0] += found[..., 0].sum(0)
                    hits[1] += found.any(-1).sum(0)
                if ref is not None:
                    hits[2] += (preds[:, : len(pats), 0] == preds[:, ref : ref + 1, 0]).sum(0)
                    kl_sum += kl[0].double().sum(0).cpu()
                step()
    finally:
        net.train(was_training)
    if seen == 0:
        raise AdnifyError("no examples to evaluate")

    def pct(i: int, j: int, measured: bool) -> float | None:
        return 100.0 * hits[i, j].item() / seen if measured else None

    return {p: Accuracy(p, seen, pct(0, j, labels), pct(1, j, labels), pct(2, j, ref is not None),
                        kl_sum[j].item() / seen if ref is not None else None)
            for j, p in enumerate(pats)}


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
