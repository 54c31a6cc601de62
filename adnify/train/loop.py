"""The training loop: epochs of Algorithm 1 steps, evaluation, checkpoints, resumption."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import AdnifyError
from ..io.broken import BrokenImages
from .header import epoch_label, run_header
from .loop_state import StopRequest
from .networks import baseline_into_net
from .progress import Meter, TrainProgress, stats_line
from .session import Session
from .steps import GradProbe, adn_step, freeze_bn_stats, plain_step

__all__ = ["StepInfo", "TrainResult", "run_loop"]


@dataclass
class StepInfo:
    """What a callback sees after each optimizer step."""

    epoch: int
    step: int
    values: dict[str, float]
    session: Session


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        run_dir: the run directory.
        status: ``completed``, ``stopped`` (``max_steps`` reached) or ``interrupted`` (Ctrl-C).
        step, epoch: optimizer steps and finished epochs.
        evaluation: the last evaluation, ``{name: {"acc1": ..., "agreement": ..., "kl_to_super": ...}}``, or None.
        broken_images: training images that could not be decoded and were skipped (the most in one epoch).
    """

    run_dir: Any
    status: str
    step: int
    epoch: int
    evaluation: dict[str, dict[str, float | None]] | None
    broken_images: int = 0


def _lr(session: Session) -> float:
    return float(session.optimizer.param_groups[0]["lr"])


def _save_checkpoint(session: Session, saved: set[int]) -> None:
    step, acc, run = session.state.step, session.accelerator, session.run
    if step in saved:
        return
    # A finite loss can still leave non-finite weights (an exploding update): never save those.
    finite = torch.tensor([float(all(bool(torch.isfinite(p).all()) for p in session.trained.parameters()))],
                          device=acc.device)
    if acc.gather(finite).min() < 1:
        last = run.latest_checkpoint()
        raise AdnifyError(f"the weights became non-finite (NaN/inf) by step {step}: training stopped, the last good "
                          f"checkpoint is {last if last else 'none yet'}; lower the learning rate or set grad_clip")
    if acc.is_main_process:
        run.begin_checkpoint(step)
    acc.wait_for_everyone()
    acc.save_state(str(run.temp_checkpoint(step)))
    acc.wait_for_everyone()
    if acc.is_main_process:
        run.commit_checkpoint(step, session.config["keep_checkpoints"])
    acc.wait_for_everyone()
    saved.add(step)


def _eval_nets(session: Session) -> dict[str, Any]:
    """Name prefix -> adaptive net to evaluate (a baseline is evaluated through its adaptive form)."""
    if session.baseline:
        nets = {"": baseline_into_net(session.net, session.trained, session.baseline)}
        if session.ema is not None:
            nets["ema:"] = baseline_into_net(session.net, session.ema.module, session.baseline)
        return nets
    nets = {"": session.net}
    if session.ema is not None:
        nets["ema:"] = session.ema.module
    return nets


def _calibrate(session: Session, progress: TrainProgress, *, after_training: bool = False) -> None:
    """Re-estimate the skip-aware norm copies' statistics: before the first step under the base-net
    (``calibrate_skip_norms``), or after the last under every sub-network that uses a copy, the EMA
    weights too (``recalibrate_skip_norms``)."""
    from .calibrate import calibrate_skip_norms

    key = "recalibrate_skip_norms" if after_training else "calibrate_skip_norms"
    loader = session.recalibration_loader if after_training else session.calibration_loader
    nets = list(_eval_nets(session).values()) if after_training else [session.net]
    began = time.perf_counter()
    count = 0
    for net in nets:
        patterns = [p for p in net.patterns() if "T" in p] if after_training else ("base",)
        count = calibrate_skip_norms(net, loader, max_images=session.config[key], device=session.accelerator.device,
                                     patterns=patterns)
    seconds = time.perf_counter() - began
    if session.accelerator.is_main_process:
        session.run.log({"kind": "recalibration" if after_training else "calibration", "step": session.state.step,
                         "images": count, "seconds": round(seconds, 1)})
        under = "under every sub-network " if after_training else ""
        progress.print(f"skip-aware norm statistics re-estimated {under}on {count:,} training images ({seconds:.0f} s)")


def _estimate_statistics(session: Session, progress: TrainProgress) -> None:
    """Each sub-network's own BatchNorm statistics (``pattern_statistics``), for the net and its EMA; a
    network trained alone gets one precise set under its own pattern, so that comparisons stay fair."""
    from ..statistics import batchnorms
    from .calibrate import estimate_pattern_statistics, reestimate_batchnorms

    if session.statistics_loader is None or session.statistics_done:
        return
    began = time.perf_counter()
    images, device, count = session.config["pattern_statistics"], session.accelerator.device, 0
    with progress.evaluating("BatchNorm statistics of every sub-network") as shown:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            shown(done[0], None)

        if session.baseline:
            modules = [session.trained] + ([session.ema.module] if session.ema is not None else [])
            for module in modules:
                count = reestimate_batchnorms(module, list(batchnorms(module).values()), session.statistics_loader,
                                              max_images=images, device=device, on_batch=advance, patterns=None)
        else:
            for net in _eval_nets(session).values():
                stats = estimate_pattern_statistics(net, session.statistics_loader, max_images=images, device=device,
                                                    on_batch=advance, info={"transforms": "train"})
                net.set_pattern_statistics(stats)
                count = stats.info["images"]
    session.statistics_done = True
    seconds = time.perf_counter() - began
    if session.accelerator.is_main_process:
        session.run.log({"kind": "pattern_statistics", "step": session.state.step, "images": count,
                         "seconds": round(seconds, 1)})
        what = "its own pattern" if session.baseline else "every sub-network"
        progress.print(f"BatchNorm statistics estimated under {what} on {count:,} training images ({seconds:.0f} s)")


def _evaluate(session: Session, progress: TrainProgress, phase: str | None = None) -> dict[str, Any] | None:
    """Accuracy of the super- and base-net (a baseline: its own pattern) on the validation split."""
    from ..report.evaluate import evaluate_patterns

    if session.eval_loader is None:
        return None
    acc, state = session.accelerator, session.state
    n = session.net.num_stages
    patterns = [session.baseline] if session.baseline else ["F" * n, "T" * n]
    labelled = session.data.label_column is not None
    # Label-free runs also measure how closely each sub-network follows the super-net: on a few hundred
    # images, top-1 moves by whole images, the KL moves smoothly. (Not baselines: they do not learn from
    # their adaptive form's super-net; on unlabelled data it is all there is to measure.)
    closeness = not labelled or not (session.labels or session.baseline)
    result: dict[str, dict[str, float | None]] = {}
    devices = [acc.device] if acc.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # loader iterators draw seeds: keep training's RNG untouched
        for prefix, net in _eval_nets(session).items():
            with progress.evaluating(f"evaluating {prefix}{', '.join(patterns)}") as shown:
                found = evaluate_patterns(net, patterns, session.eval_loader, labels=labelled, agreement=closeness,
                                          accelerator=acc, max_images=session.config["eval_images"], progress=shown,
                                          max_broken_fraction=session.config["max_broken_fraction"],
                                          on_broken=None if prefix else progress.broken)
            result.update({prefix + p: {"acc1": a.acc1, "agreement": a.agreement, "kl_to_super": a.kl_to_super}
                           for p, a in found.items()})
    first = next(iter(found.values()))
    record = {"kind": "eval", "epoch": state.epoch, "step": state.step, "images": first.examples,
              "broken_images": first.broken, "acc1": {k: v["acc1"] for k, v in result.items()}}
    if phase:
        record["phase"] = phase
    if closeness:
        record["agreement"] = {k: v["agreement"] for k, v in result.items()}
        record["kl_to_super"] = {k: v["kl_to_super"] for k, v in result.items()}
    if acc.is_main_process:
        session.run.log(record)
        metric = "acc1" if labelled else "agreement"
        shown = "  ".join(f"{name} {v[metric]:.2f}%" for name, v in result.items() if v[metric] is not None)
        kls = [f"{name} {v['kl_to_super']:.4f}" for name, v in result.items()
               if v["kl_to_super"] is not None and "T" in name]  # the super-net's own is 0
        if kls:
            shown += "  KL to super-net: " + "  ".join(kls)
        when = epoch_label(state.epoch, session.config["epochs"], session.total_epochs)
        progress.print(f"{when}{f' ({phase})' if phase else ''} {metric}: {shown}")
    _log_trackers(session, {f"eval/{m}/{name}": v for name, r in result.items() for m, v in r.items() if v is not None})
    return result


def _log_trackers(session: Session, values: dict[str, float]) -> None:
    if session.accelerator.trackers:
        session.accelerator.log(values, step=session.state.step)


def _kd_scale(session: Session) -> float:
    """The distillation warm-up factor of the coming step: 0 at the first step, 1 after the warm-up."""
    steps = session.config["distill_warmup_epochs"] * len(session.train_loader)
    return 1.0 if steps <= 0 else min(1.0, session.state.step / steps)


def _second_pattern(session: Session) -> str | None:
    """The pattern of this step's second pass: the base-net (None), or with probability ``middle_prob`` a
    sub-network between the ends, drawn from the seed and the step so every process draws the same."""
    p = session.config["middle_prob"]
    n = session.net.num_stages
    if p <= 0 or n < 2:
        return None
    rng = random.Random(session.config["seed"] * 1_000_003 + session.state.step)
    if rng.random() >= p:
        return None
    code = rng.randrange(1, 2**n - 1)  # neither all F (the super-net) nor all T (the base-net)
    return "".join("T" if code >> i & 1 else "F" for i in range(n))


def _one_step(session: Session, images: torch.Tensor, labels: torch.Tensor, stop: StopRequest,
              flags: tuple[float, float]) -> tuple[dict[str, float], int, bool]:
    """One optimizer step; ``flags`` = (broken images in this batch, checkpoint due by the clock) of this
    process. Returns the loss values and, summed over processes, the broken images and whether to checkpoint."""
    acc, cfg = session.accelerator, session.config
    if cfg["channels_last"] and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    target: torch.Tensor | None = labels if session.labels else None
    if session.mixup is not None:
        images, soft = session.mixup(images, labels if session.labels else torch.zeros_like(labels))
        target = soft if session.labels else None
    teacher_logits = original_logits = None
    if session.teacher is not None:
        with torch.no_grad(), acc.autocast():
            logits = session.teacher(images).float()
        if session.labels:
            original_logits = logits  # labelled: the original model is an additional teacher
        else:
            teacher_logits = logits
    # Each term's gradient norm into the shared weights, measured on the steps that are logged.
    probe = (GradProbe(list(session.trained.named_parameters()))
             if cfg["log_grad_norms"] and not session.baseline and (session.state.step + 1) % cfg["log_interval"] == 0
             else None)
    if session.baseline:
        parts = plain_step(acc, session.model, images, target, criterion=session.criterion,
                           teacher_logits=teacher_logits, temperature=cfg["temperature"])
    else:
        parts = adn_step(acc, session.model, images, target, session.loss, order=cfg["order"],
                         criterion=session.criterion, teacher_logits=teacher_logits, original_logits=original_logits,
                         super_is_teacher=session.super_is_teacher, kd_scale=_kd_scale(session), probe=probe,
                         second=_second_pattern(session))
    names = sorted(parts.terms)  # the same on every process: the terms follow the config
    values_local = [parts.total.float()] + [parts.terms[n][1].float() for n in names]
    extra = torch.tensor([*flags, float(stop.requested)], device=parts.total.device)
    local = torch.cat([torch.stack(values_local), extra])
    # One small all-gather: the NaN check, the broken-image count, the clock's checkpoint and Ctrl-C must agree.
    every = acc.gather(local[None]).cpu()
    if not torch.isfinite(every[:, :-3]).all():
        session.optimizer.zero_grad(set_to_none=True)
        last = session.run.latest_checkpoint()
        raise AdnifyError(
            f"the loss became {every[:, 0].tolist()} at step {session.state.step + 1} (epoch {session.state.epoch + 1}):"
            f" training stopped, nothing saved after the last good checkpoint "
            f"({last if last else 'none yet'}); lower the learning rate or enable grad_clip, then resume"
        )
    stop.requested = bool(every[:, -1].max() > 0)
    if cfg["grad_clip"]:
        acc.clip_grad_norm_(session.trained.parameters(), cfg["grad_clip"])
    session.optimizer.step()
    session.optimizer.zero_grad(set_to_none=True)
    session.state.step += 1
    session.state.batch_in_epoch += 1
    if session.ema is not None:
        session.ema.update(session.trained, step=session.state.step)
    session.scheduler.step_update(num_updates=session.state.step)
    mean = every[:, :-3].mean(0).tolist()
    values = {"loss": mean[0], **{f"loss_{n}": v for n, v in zip(names, mean[1:])}}
    if probe is not None:
        values.update({f"grad_norm_{n}": v for n, v in probe.norms().items()})  # this process's, not averaged
    return values, int(every[:, -3].sum()), bool(every[:, -2].max() > 0)


def _train_mode(session: Session) -> None:
    if session.config["train_params"] == "skip_norms":
        # The super-net is frozen: the copies adapt to the pretrained model's evaluation function, so
        # no dropout (timm applies the head's functionally, from the root module's flag) and no drop-path.
        session.model.eval()
        return
    session.model.train()
    if session.config["freeze_bn_stats"]:
        freeze_bn_stats(session.model)


def _save_final(session: Session) -> None:
    if not session.accelerator.is_main_process:
        return
    state = session.state
    extra = {"training": {"step": state.step, "epoch": state.epoch, "recipe_config": "config.yaml"}}
    net = session.net
    if session.baseline:
        extra["baseline"] = session.baseline
        net = baseline_into_net(session.net, session.trained, session.baseline)
    net.save(str(session.run.final), force=True, extra=extra)
    if session.ema is not None:
        ema = session.ema.module
        ema_net = baseline_into_net(session.net, ema, session.baseline) if session.baseline else ema
        ema_net.save(str(session.run.final_ema), force=True, extra=extra)


def _broken_tracker(session: Session) -> BrokenImages:
    """This epoch's undecodable training images, counted from the state (which a checkpoint restores)."""
    size = len(session.train_loader) * session.config["batch_size"] * session.accelerator.num_processes
    return BrokenImages(size, f"the training data {session.data.source}", session.config["max_broken_fraction"],
                        count=session.state.broken_in_epoch)


def run_loop(
    session: Session,
    *,
    max_steps: int | None = None,
    show_progress: bool = True,
    callbacks: tuple[Callable[[StepInfo], None], ...] = (),
) -> TrainResult:
    """Train from ``session.state`` to the end of the schedule (or ``max_steps``, or Ctrl-C)."""
    acc, cfg, state, run = session.accelerator, session.config, session.state, session.run
    steps_per_epoch = len(session.train_loader)
    total = session.total_epochs * steps_per_epoch
    saved: set[int] = set()
    every_n = cfg["checkpoint_every_steps"]
    every_s = cfg["checkpoint_every_minutes"] * 60  # 0: off
    evaluation = None
    status = "completed"
    meter = Meter()
    with StopRequest() as stop, TrainProgress(show_progress and acc.is_main_process, total, state.step) as bar:
        if acc.is_main_process:
            bar.header(run_header(session, short=not show_progress))
        for note in session.notes:
            bar.print(f"note: {note}")
        if cfg["eval_before_training"] and state.step == 0:
            evaluation = _evaluate(session, bar)  # logged as epoch 0: the starting point to compare with
        if session.calibration_loader is not None and state.step == 0:
            _calibrate(session, bar)
            if cfg["eval_before_training"]:
                evaluation = _evaluate(session, bar, phase="calibrated")  # statistics alone, before any step
        if max_steps is not None and state.step >= max_steps:
            status = "stopped"  # e.g. --max-steps 0: calibrate (and evaluate) only
        last_save = time.monotonic()
        while status == "completed" and state.epoch < session.total_epochs:
            # accelerate's loader re-seeds its sampler from its own iteration counter: keep both on the epoch.
            session.train_loader.set_epoch(state.epoch)
            session.sampler.set_epoch(state.epoch)
            loader = session.train_loader
            if state.batch_in_epoch:
                loader = acc.skip_first_batches(loader, state.batch_in_epoch)
            broken = _broken_tracker(session)
            _train_mode(session)
            for batch in loader:
                images, labels = batch
                names = getattr(batch, "broken", ())
                due = bool(every_s) and time.monotonic() - last_save >= every_s
                values, n_broken, due = _one_step(session, images, labels, stop, (float(len(names)), float(due)))
                for name in broken.add(names, n_broken):
                    bar.broken(name)
                state.broken_in_epoch = broken.count
                state.broken_most = max(state.broken_most, broken.count)
                broken.check()
                meter.add(values, images.shape[0] * acc.num_processes)
                bar.update(state.epoch, cfg["epochs"], session.total_epochs, stats_line(values, _lr(session)))
                last_of_epoch = state.batch_in_epoch == steps_per_epoch
                if state.step % cfg["log_interval"] == 0 or last_of_epoch:
                    summary = meter.summary()
                    record = {"kind": "train", "epoch": state.epoch, "step": state.step, **summary, "lr": _lr(session),
                              "broken_images": state.broken_in_epoch}  # so far in this epoch
                    if acc.is_main_process:
                        run.log(record)
                    _log_trackers(session, {f"train/{k}": v for k, v in record.items() if k != "kind"})
                    meter.reset()
                for callback in callbacks:
                    callback(StepInfo(state.epoch, state.step, values, session))
                halt = stop.requested or (max_steps is not None and state.step >= max_steps)
                if (every_n and state.step % every_n == 0) or ((halt or due) and not last_of_epoch):
                    began = time.perf_counter()
                    _save_checkpoint(session, saved)
                    last_save = time.monotonic()
                    meter.pause(time.perf_counter() - began)
                if halt and not last_of_epoch:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = state.broken_in_epoch = 0
                session.scheduler.step(state.epoch)
                began = time.perf_counter()
                every = cfg["eval_every_epochs"]  # 0: never
                if state.epoch == session.total_epochs and session.recalibration_loader is not None:
                    _calibrate(session, bar, after_training=True)
                if state.epoch == session.total_epochs:
                    _estimate_statistics(session, bar)
                if every and (state.epoch % every == 0 or state.epoch == session.total_epochs):
                    evaluation = _evaluate(session, bar)
                    _train_mode(session)
                _save_checkpoint(session, saved)
                last_save = time.monotonic()
                meter.pause(time.perf_counter() - began)
                if not (stop.requested or (max_steps is not None and state.step >= max_steps)):
                    continue
            status = "interrupted" if stop.requested else "stopped"
            break
        if status != "interrupted":
            _estimate_statistics(session, bar)  # a run stopped early, or resumed after its last epoch
    if status != "interrupted":
        _save_final(session)
    acc.wait_for_everyone()
    return TrainResult(run.path, status, state.step, state.epoch, evaluation, state.broken_most)
