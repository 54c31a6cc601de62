"""``adnify train``: skip-aware self-distillation (Algorithm 1 of docs/method.md) with accelerate.

>>> from adnify.train import train
>>> result = train("resnet50", data="./imagenet", output="runs/r50", recipe="resnet")
>>> result = train("runs/r50", resume=True)              # continue where it stopped
>>> net = adnify.load("runs/r50")                          # the trained adaptive model

Modules: :mod:`.run` (``train()``: the run directory, resuming), :mod:`.session` (accelerator,
data, models, optimizer), :mod:`.loop` (epochs, evaluation, checkpoints), :mod:`.steps` (the joint
and sequential steps), :mod:`.losses`, :mod:`.recipes`, :mod:`.networks` (net, baseline, teacher),
:mod:`.loaders` (training transforms, the reproducible loader, mixup), :mod:`.shared_prefix` (the
stem computed once for both passes), :mod:`.optim` (timm's builders), :mod:`.calibrate`,
:mod:`.rundir` (files), :mod:`.loop_state` (the loop's position, Ctrl-C), :mod:`.header` (what a run
starts), :mod:`.progress`,
:mod:`.demo`; evaluation uses :func:`adnify.report.evaluate.evaluate_patterns`.
"""

from .calibrate import calibrate_skip_norms, estimate_pattern_statistics
from .loop import StepInfo, TrainResult
from .rundir import RunDir
from .run import train

__all__ = ["RunDir", "StepInfo", "TrainResult", "calibrate_skip_norms", "estimate_pattern_statistics", "train"]
