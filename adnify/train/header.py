"""What a run starts, said before its first step (as timm's ``train.py`` and the Hugging Face ``Trainer``
do): the model and its sub-networks, where the weights come from, the data, the schedule, the batch and
learning rate, the device and precision, and the run directory."""

from __future__ import annotations

from typing import Any

__all__ = ["RANDOM_WEIGHTS", "epoch_label", "run_header"]

#: Said wherever a model starts from random weights, so that nobody mistakes it for a trained one.
RANDOM_WEIGHTS = ("the weights are random (no --pretrained, no -c/--checkpoint): add --pretrained for timm's "
                  "trained weights, or -c FILE for your own")


def epoch_label(epoch: int, epochs: int, total: int) -> str:
    """``epoch 3/300``, or ``cooldown 2/10`` for the epochs the schedule adds after ``epochs`` (1-based ``epoch``)."""
    if epoch > epochs and total > epochs:
        return f"cooldown {epoch - epochs}/{total - epochs}"
    return f"epoch {epoch}/{epochs}"


def _weights(session: Any) -> str:
    info, state = session.info, session.state
    if state.step:
        return f"from the checkpoint at step {state.step:,} (epoch {state.epoch + 1})"
    if session.from_random:
        return "random: trained from scratch, not fine-tuned"
    source = info.get("source", "")
    options = info.get("convert_options") or {}
    if options.get("checkpoint"):
        return f"from {options['checkpoint']}"
    return "pretrained (timm)" if options.get("pretrained") else f"trained, from {source}"


def _epochs(session: Any) -> str:
    epochs, total = session.config["epochs"], session.total_epochs
    return f"{epochs} + {total - epochs} cooldown epochs" if total > epochs else f"{epochs} epoch{'s' * (epochs != 1)}"


def run_header(session: Any, *, short: bool = False) -> list[str]:
    """The header's lines; ``short``: one line (``-q``)."""
    net, data, info, cfg, acc = session.net, session.data, session.info, session.config, session.accelerator
    model = net.source.get("model") or net.source.get("class") or "model"
    what = (f"{model} as the static sub-network {session.baseline}" if session.baseline else
            f"{model}: {net.num_stages} adaptive stages, {2 ** net.num_stages} sub-networks")
    n_val = len(data.validation) if data.validation is not None else 0
    classes = f"{data.num_classes} classes" if data.num_classes else "no labels"
    world = acc.num_processes
    batch = f"{info['global_batch_size']:,} ({cfg['batch_size']} per process x {world})"
    lr = f"{info['lr']:.3g}" + (" (the recipe's lr)" if cfg.get("lr") is not None else
                                f" (lr_base {cfg['lr_base']:g} x {info['global_batch_size']}/{cfg['lr_base_size']}"
                                f"{', sqrt' if cfg.get('lr_base_scale') == 'sqrt' else ''})")
    broken = f", {session.state.broken_most:,} broken so far" if session.state.broken_most else ""
    precision = acc.mixed_precision if acc.mixed_precision != "no" else "float32"
    if short:
        return [f"training {model} ({2 ** net.num_stages} sub-networks), weights {_weights(session).split(':')[0]}, "
                f"{len(data.train):,} images, {_epochs(session)}, batch {info['global_batch_size']:,}, "
                f"lr {info['lr']:.3g}, {acc.device} {precision} -> {session.run.path}"]
    lines = [
        f"model      {what}",
        f"weights    {_weights(session)}",
        f"data       {data.source}: {len(data.train):,} training, {n_val:,} validation images, {classes}{broken}",
        f"schedule   {_epochs(session)}, {len(session.train_loader):,} steps each",
        f"batch      {batch}, learning rate {lr}",
        f"device     {acc.device}, {precision}, run directory {session.run.path}",
    ]
    if session.from_random and not session.state.step:
        lines.append(f"note: {RANDOM_WEIGHTS}")
    return lines
