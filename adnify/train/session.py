"""Everything a run needs before its first step: accelerator, data, models, optimizer, schedule."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..adaptive import AdaptiveNet, restore_copy
from ..conversion.plan import format_pattern, parse_pattern
from ..errors import AdnifyError
from ..io.data import ImageData, check_labels
from ..io.loading import load
from ..statistics import batchnorms
from ..report.evaluate import eval_data_config, eval_loader
from .calibrate import skip_norm_batchnorms
from .loaders import build_mixup, build_transforms, calibration_loader, train_loader
from .loop_state import TrainState
from .networks import frozen_teacher, head_size, open_model, train_only_skip_norms
from .optim import build_criterion, build_ema, build_optimizer, build_scheduler
from .recipes import LOSS_PRESETS, dump_resolved, load_recipe, resolve_lr
from .rundir import RunDir, run_image_data
from .losses import NO_BASE_TERM
from .steps import AdnPair, LossConfig

__all__ = ["Session", "make_accelerator", "prepare_session"]


@dataclass
class Session:
    """A prepared run. ``model`` is what ``accelerator.prepare`` returned (an :class:`AdnPair` for
    adnify, the static network for ``--baseline``); ``net`` and ``trained`` are the plain modules."""

    accelerator: Any
    run: RunDir
    config: dict[str, Any]
    info: dict[str, Any]
    data: ImageData
    net: AdaptiveNet
    trained: nn.Module
    model: nn.Module
    optimizer: Any
    scheduler: Any
    total_epochs: int
    train_loader: Any
    sampler: Any
    eval_loader: Any
    loss: LossConfig
    criterion: nn.Module
    mixup: Any = None
    calibration_loader: Any = None
    recalibration_loader: Any = None
    statistics_loader: Any = None  # training images for each sub-network's BatchNorm statistics
    statistics_done: bool = False
    teacher: nn.Module | None = None
    ema: Any = None
    state: TrainState = field(default_factory=TrainState)
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> str | None:
        """The pattern of the static network a baseline run trains, else None."""
        return self.info.get("baseline")

    @property
    def from_random(self) -> bool:
        """The run started from a timm name without --pretrained or -c: random weights."""
        return bool(self.info.get("random_weights"))

    @property
    def labels(self) -> bool:
        return self.config["labels"] != "none"

    @property
    def super_is_teacher(self) -> bool:
        """Label-free with a frozen super-net: the super-net itself is the teacher (no copy runs)."""
        return not self.labels and self.teacher is None and not self.baseline


def make_accelerator(config: dict[str, Any], run: RunDir, *, mixed_precision: str, cpu: bool,
                     log_with: str | None, find_unused: bool) -> Any:
    """One ``Accelerator`` per run (a stale single-process state from an earlier run is reset)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DistributedDataParallelKwargs

    # An earlier run in this process (tests, notebooks), or inherited through fork, may have set up
    # accelerate's singletons with other settings or another number of processes.
    if PartialState._shared_state:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if PartialState().num_processes != world:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        elif world == 1:
            AcceleratorState._reset_state()
            GradientState._reset_state()
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cpu = True  # accelerate sets up several CPU processes (gloo) only when asked for the CPU
    precision = mixed_precision
    if precision == "auto":
        precision = "fp16" if config["amp"] and torch.cuda.is_available() and not cpu else "no"
    if precision not in ("no", "fp16", "bf16"):
        raise AdnifyError(f"mixed precision must be auto, no, fp16 or bf16, not {mixed_precision!r}")
    if precision == "fp16" and (cpu or not torch.cuda.is_available()):
        raise AdnifyError("fp16 mixed precision needs a CUDA GPU: use --mixed-precision bf16 (or no) on the CPU")
    if log_with == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():  # accelerate would only warn and log nothing
            raise AdnifyError('--log-with tensorboard needs the tensorboard package: pip install tensorboard '
                              '(or "adnify[tensorboard]")')
    return Accelerator(
        cpu=cpu, mixed_precision=precision, log_with=log_with, project_dir=str(run.path),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        step_scheduler_with_optimizer=False,
    )


def load_config(run: RunDir, recipe: str | None, overrides: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The recipe (resuming: the run's own config.yaml) with the overrides applied."""
    if resume:
        if not run.config.is_file():
            raise AdnifyError(f"cannot resume {run.path}: config.yaml is missing")
        return load_recipe(str(run.config), overrides)
    return load_recipe(recipe or "resnet", overrides)


def _load_data(info: dict[str, Any], config: dict[str, Any], accelerator: Any) -> ImageData:
    labels = config["labels"] != "none"
    with accelerator.main_process_first():
        data = run_image_data(info, config["seed"])
    if data.train is None:
        raise AdnifyError(f"{info['data']} has no training split: name the evaluation split with --eval-split, or "
                          "pass data with a train split")
    if labels and data.label_column is None:
        raise AdnifyError(f"{info['data']} has no label column ({', '.join(data.train.column_names)}): name it with "
                          "--label-column, or train label-free with --labels none")
    return data


def _check_data_sizes(data: ImageData, info: dict[str, Any], resume: bool) -> None:
    """Record the splits' sizes; on resume, refuse data that changed size (its order and split would differ)."""
    sizes = {"train": len(data.train), "validation": len(data.validation) if data.validation is not None else 0}
    before = info.get("data_sizes")
    if resume and before and before != sizes:
        raise AdnifyError(f"cannot resume: {info['data']} now holds {sizes['train']:,} training and "
                          f"{sizes['validation']:,} validation images, the run started with {before['train']:,} and "
                          f"{before['validation']:,}; the checkpoint's position means nothing on other data: restore "
                          "the data, or start a new run (-o NEW_DIR)")
    info["data_sizes"] = sizes


def _fit_labels(data: ImageData, net: AdaptiveNet, labels: bool, notes: list[str]) -> None:
    """Check the labels against the head; label-free runs only use labels that fit for evaluation."""
    size = head_size(net)
    if size is None or data.label_column is None:
        return
    try:
        check_labels(data, size)
        if not labels and data.num_classes not in (None, size):  # in range, but not the head's classes: not scored
            raise AdnifyError(f"{data.num_classes} classes for a head of {size}")
    except AdnifyError:
        if labels:
            raise
        data.label_column = None
        notes.append("the data's labels do not index the model's classes: evaluation reports each sub-network's "
                     "agreement with the super-net only")


def _open_net(source: Any, run: RunDir, resume: bool, config: dict[str, Any], info: dict[str, Any],
              data: ImageData, notes: list[str]) -> AdaptiveNet:
    labels = config["labels"] != "none"
    if resume and run.start.is_dir():
        if isinstance(source, nn.Module):  # custom modules: the architecture comes from the caller
            arch = restore_copy(source.model) if isinstance(source, AdaptiveNet) else copy.deepcopy(source)
            return load(run.start, model=arch)
        net, _ = open_model(str(run.start), config, {}, num_classes=None, labels=labels)
        return net
    net, more = open_model(source, config, info.get("convert_options", {}), num_classes=data.num_classes,
                           labels=labels, named_classes=data.class_names is not None)
    notes.extend(more)
    return net


def _from_pretrained(source: Any, info: dict[str, Any], notes: list[str]) -> bool:
    """Whether the network starts from trained weights with its own head (not a timm name built at random)."""
    if any(note.startswith("new classifier head") for note in notes):
        return False
    if isinstance(source, nn.Module) or not isinstance(source, str):
        return True  # the caller's own module: its weights are what the user trained or loaded
    from ..io.sources import is_model_dir

    options = info.get("convert_options", {}) or {}
    return is_model_dir(source) or bool(options.get("pretrained") or options.get("checkpoint"))


def _random_start(source: Any, info: dict[str, Any]) -> bool:
    """A timm name built without --pretrained or --checkpoint."""
    from ..io.sources import is_model_dir

    options = info.get("convert_options", {}) or {}
    return (isinstance(source, (str, os.PathLike)) and not is_model_dir(source)
            and not (options.get("pretrained") or options.get("checkpoint")))


def _loss_config(config: dict[str, Any], net: AdaptiveNet, info: dict[str, Any]) -> LossConfig:
    """The loss of the recipe, checked against the network and the data before anything runs."""
    if config["teacher_weight"] > 0:
        if config["labels"] == "none":
            raise AdnifyError("teacher_weight needs labels: a label-free run (labels: none) already learns from the "
                              "original model; set teacher_weight=0")
        if not info.get("pretrained"):
            raise AdnifyError("teacher_weight > 0 needs a model converted from pretrained weights (--pretrained, "
                              "--checkpoint or a saved model, with its own classifier head); this one starts from "
                              "random weights or a new head: set teacher_weight=0")
    classes = head_size(net)
    official_topk = LOSS_PRESETS["official"]["kd_topk"]
    if config["loss_preset"] == "official" and config["kd_topk"] == official_topk and classes and classes < 1000:
        # The official top-500 is half of ImageNet's 1,000 classes: the preset keeps the top half.
        config["kd_topk"] = max(1, classes * official_topk // 1000)
    if config["kd_topk"] is not None and classes is not None and config["kd_topk"] > classes:
        raise AdnifyError(f"kd_topk {config['kd_topk']} is above the model's {classes} classes: allowed 1..{classes}, "
                          "or null for every class")
    stages = config["feature_kd_stages"]
    if stages is not None and max(stages) > net.num_stages:
        raise AdnifyError(f"feature_kd_stages {list(stages)} names a stage beyond this network's {net.num_stages} "
                          f"adaptive stages: allowed 1..{net.num_stages}")
    try:
        loss = LossConfig.from_config(config, net)
    except ValueError as e:
        raise AdnifyError(str(e)) from None
    if not info.get("baseline") and not loss.trains_base:
        raise AdnifyError(NO_BASE_TERM)
    return loss


def prepare_session(
    source: Any,
    run: RunDir,
    config: dict[str, Any],
    info: dict[str, Any],
    accelerator: Any,
    *,
    resume: bool,
    force: bool = False,
) -> Session:
    """Build data, models, optimizer and schedule, write the run's files, and ``prepare()`` once.

    Nothing is written (or, with ``force``, removed) before the input has been checked.
    """
    from accelerate.utils import set_seed

    notes: list[str] = []
    set_seed(config["seed"])
    data = _load_data(info, config, accelerator)
    _check_data_sizes(data, info, resume)
    net = _open_net(source, run, resume, config, info, data, notes)
    if net.features_only:
        raise AdnifyError("this is a features_only backbone (feature maps, no classifier head): adnify train trains "
                          "classifiers; train it inside its detector with adnify.detection (examples/detection.py)")
    _fit_labels(data, net, config["labels"] != "none", notes)
    if not resume:  # whether the start holds trained weights the original-teacher term can learn from
        info["pretrained"] = _from_pretrained(source, info, notes)
        info["random_weights"] = _random_start(source, info)
    loss = _loss_config(config, net, info)
    # With train_params: skip_norms the super-net *is* the converted model, so it is its own teacher.
    label_free_teacher = config["labels"] == "none" and config["train_params"] != "skip_norms"
    teacher = frozen_teacher(net) if label_free_teacher or (loss.teacher_weight > 0 and not info.get("baseline")) \
        else None
    pattern = info.get("baseline")
    if pattern:
        try:
            pattern = info["baseline"] = format_pattern(parse_pattern(pattern, net.num_stages))
        except ValueError as e:
            raise AdnifyError(f"--pattern: {e}") from None
    trained = net.export(pattern) if pattern else net
    if config["train_params"] == "skip_norms":
        if pattern:
            raise AdnifyError("train_params: skip_norms trains an adaptive net's norm copies; --baseline has none")
        if not config["freeze_bn_stats"]:
            raise AdnifyError("train_params: skip_norms keeps the super-net as converted, which needs freeze_bn_stats: "
                              "true (BatchNorm in train mode would update its statistics)")
        count = train_only_skip_norms(net)
        role = (" and is the base-net's teacher" if loss.reads_super else
                " and is not run in training (no loss term reads it)") if config["labels"] == "none" else ""
        notes.append(f"training only the skip-aware norm copies ({count:,} values): the super-net stays as "
                     f"converted{role}")
    info.update(num_classes=head_size(net), class_names=data.class_names, adnify_version=__version__)

    world = accelerator.num_processes
    lr = resolve_lr(config, config["batch_size"] * world)
    info.update(lr=lr, global_batch_size=config["batch_size"] * world, processes=world)
    transforms = build_transforms(net, config)
    # The model carries its input size and evaluation transform: a copied final/ is measured as trained.
    net.source["data_config"] = {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in eval_data_config(net, transforms.input_size).items()}
    saved_config = config
    config = {**config, "workers": min(config["workers"], os.cpu_count() or 1)}
    loader, sampler = train_loader(data, transforms.train, config, world)
    evaluation = None if data.validation is None else eval_loader(  # the pipeline of `adnify report`
        net, data, batch_size=config["batch_size"], num_workers=min(config["workers"], 2), input_size=transforms.input_size)
    # Only a net with BatchNorm copies has their statistics to re-estimate (not a baseline, nor shared norms).
    copies = not pattern and bool(skip_norm_batchnorms(net))
    calibration = calibration_loader(data, transforms.eval, config) if copies else None
    recalibration = calibration_loader(data, transforms.eval, config, "recalibrate_skip_norms") if copies else None
    statistics = (calibration_loader(data, transforms.train, config, "pattern_statistics")
                  if batchnorms(trained) else None)
    classes = head_size(net) or data.num_classes or 0
    mixup = build_mixup(config, classes)
    criterion = build_criterion(config, mixup is not None)
    optimizer = build_optimizer(trained, config, lr)

    # Input checked: only now does the run directory get its files (and, with --force, lose the old ones).
    if accelerator.is_main_process:
        if force and not resume:
            run.clear()
        dump_resolved(saved_config, run.config)  # on resume too: overrides given then are recorded
        if not resume:
            net.save(str(run.start), force=True)
        run.write_run(info)
        run.remove_stale()
    accelerator.wait_for_everyone()

    module = trained if pattern else AdnPair(
        net, pre_logits=config["kd_weight_pre_logits"] > 0, share_prefix=config["share_prefix"])
    if config["channels_last"]:
        module.to(memory_format=torch.channels_last)
    model, optimizer, loader = accelerator.prepare(module, optimizer, loader)  # evaluate_patterns shards `evaluation`
    if teacher is not None:
        teacher.to(accelerator.device, memory_format=torch.channels_last if config["channels_last"] else
                   torch.preserve_format)
    if len(loader) == 0:
        raise AdnifyError(f"batch_size {config['batch_size']} leaves no full batch in the training split: lower it")
    scheduler, total_epochs = build_scheduler(optimizer, config, len(loader))
    ema = build_ema(trained, config, accelerator.device)
    state = TrainState()
    # timm's schedulers are a function of the recipe and the update count, so the scheduler is not
    # checkpointed: resuming sets it from the step (which also honours a changed schedule, e.g. more epochs).
    accelerator.register_for_checkpointing(state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return Session(
        accelerator=accelerator, run=run, config=config, info=info, data=data, net=net, trained=trained,
        model=model, optimizer=optimizer, scheduler=scheduler, total_epochs=total_epochs, train_loader=loader,
        sampler=sampler, eval_loader=evaluation, calibration_loader=calibration,
        recalibration_loader=recalibration, statistics_loader=statistics, loss=loss, criterion=criterion,
        mixup=mixup, teacher=teacher, ema=ema, state=state, notes=notes,
    )
