"""The models of a run: the adaptive net, what the optimizer trains (net or baseline), the teacher."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..adaptive import AdaptiveNet, restore_copy
from ..conversion.plan import parse_pattern
from ..errors import AdnifyError

__all__ = ["baseline_into_net", "frozen_teacher", "head_size", "open_model", "train_only_skip_norms", "with_shared_norms"]


def head_size(net: AdaptiveNet) -> int | None:
    """Number of classes of the classifier, when the model says (timm's ``num_classes``)."""
    size = getattr(net.model, "num_classes", None)
    return int(size) if isinstance(size, int) else None


def _drop_path_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    rate = config.get("drop_path")
    return {} if rate is None else {"drop_path_rate": float(rate)}


def open_model(
    source: str | nn.Module,
    config: dict[str, Any],
    convert_options: dict[str, Any],
    *,
    num_classes: int | None,
    labels: bool,
    named_classes: bool = False,
) -> tuple[AdaptiveNet, list[str]]:
    """The adaptive net to train, and notes for the user.

    Args:
        source: a saved model or run directory, a timm name (converted with ``convert_options``),
            an ``AdaptiveNet`` (trained in place) or any other module (converted).
        config: the resolved recipe (``drop_path``, ``shared_norms``).
        convert_options: keyword arguments of :func:`adnify.convert`; ``num_classes`` there is the
            head size the user asked for.
        num_classes: classes of the labelled data; the head is sized (or reset) to fit when
            training with labels and the user did not choose a head size.
        labels: whether the labels are used (label-free runs keep the original head: it is the teacher's).
        named_classes: the data names its classes (a ClassLabel, string labels, folders or ``classes.txt``):
            then a saved model whose head has another number of classes gets a new head, as a pretrained
            timm model does. Unnamed integer labels keep the head: they may index its classes (ImageNet ids).
    """
    from .. import convert, load
    from ..io.sources import is_model_dir, named_source, require_name

    notes: list[str] = []
    options = dict(convert_options)
    wanted = options.pop("num_classes", None)
    options.pop("shared_norms", None)
    if isinstance(source, AdaptiveNet):
        net = source
    elif isinstance(source, nn.Module):
        net = convert(source, **options)
    elif is_model_dir(source):
        net = load(source, model_kwargs=_drop_path_kwargs(config))  # rebuilt with the recipe's drop-path rate
        if wanted is None and labels and named_classes and head_size(net) not in (None, num_classes):
            wanted = num_classes
    else:
        require_name(source)
        # A timm name: the head fits the labelled data unless the user chose its size. Pretrained
        # weights load into the original head first, which is then replaced.
        if wanted is None and labels and num_classes is not None:
            wanted = num_classes
        fresh = not (options.get("pretrained") or options.get("checkpoint"))
        head = {"num_classes": wanted} if fresh and wanted is not None else {}
        with named_source(source):
            net = convert(source, **options, **head, **_drop_path_kwargs(config))
    if wanted is not None and head_size(net) != wanted:
        if not hasattr(net.model, "reset_classifier"):
            raise AdnifyError(f"cannot resize the classifier of {type(net.model).__name__} to {wanted} classes")
        notes.append(f"new classifier head: {head_size(net)} -> {wanted} classes (randomly initialised)")
        net.model.reset_classifier(wanted)
        net.source = {**net.source, "kwargs": {**net.source.get("kwargs", {}), "num_classes": wanted}}
    if config["shared_norms"] and not net.shared_norms:
        net = with_shared_norms(net)
        notes.append("shared norms: both passes use the same norm layers (the recipe's shared_norms)")
    return net, notes


def with_shared_norms(net: AdaptiveNet) -> AdaptiveNet:
    """The same network without skip-aware norm twins (copy A, the original norms, is kept)."""
    clone = AdaptiveNet(restore_copy(net.model), copy.deepcopy(net.plan), source=copy.deepcopy(net.source),
                        shared_norms=True)
    clone.train(net.training)
    return clone


def train_only_skip_norms(net: AdaptiveNet) -> int:
    """Freeze every parameter but the skip-aware norm copies; returns how many values still train.

    The super-net never runs a copy, so it stays exactly the converted model: the safe way to
    fine-tune a pretrained model's base-net on little data (recipe key ``train_params: skip_norms``).
    """
    if net.shared_norms or not any(s.norms for s in net.plan.stages):
        raise AdnifyError("train_params: skip_norms needs skip-aware norm copies; this model has none "
                          "(converted with shared norms, or no norm layers in its mandatory blocks)")
    count = 0
    for name, p in net.model.named_parameters():
        twin = ".skip_copy." in f".{name}"
        p.requires_grad_(twin)
        count += p.numel() if twin else 0
    return count


def frozen_teacher(net: AdaptiveNet) -> AdaptiveNet:
    """A frozen copy of the super-net, in eval mode: the teacher of label-free fine-tuning."""
    teacher = copy.deepcopy(net)
    teacher.set_subnet("super")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def baseline_into_net(net: AdaptiveNet, static: nn.Module, pattern: str) -> AdaptiveNet:
    """A copy of ``net`` holding the weights of a trained static network ``net.export(pattern)``.

    Sub-network ``pattern`` of the result computes exactly what ``static`` does, so ``adnify report``
    works on a baseline run. For the full network (no stage skipped) both norm copies get the
    trained norms: every other sub-network is then the baseline with blocks simply dropped.
    """
    flags = parse_pattern(pattern, net.num_stages)
    out = copy.deepcopy(net)
    twin_of: dict[str, str] = {}
    fill_twins = not any(flags) and not net.shared_norms
    if not net.shared_norms:
        for skip, stage in zip(flags, net.plan.stages):
            if skip:
                twin_of.update({n: f"{n}.skip_copy" for n in stage.norms})
    norms = {n for s in net.plan.stages for n in s.norms}
    state = {}
    for key, value in static.state_dict().items():
        module, _, leaf = key.rpartition(".")
        target = twin_of.get(module, module)
        state[f"{target}.{leaf}" if target else leaf] = value
        if fill_twins and module in norms:
            state[f"{module}.skip_copy.{leaf}"] = value
    missing, unexpected = out.model.load_state_dict(state, strict=False)
    if unexpected:
        raise AdnifyError(f"baseline weights do not fit the adaptive model: {unexpected[:4]}")
    return out
