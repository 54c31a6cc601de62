"""The schema of every recipe key: its default, type, allowed range or choices, and one line of help.

:func:`coerce` checks one value against it, reading numbers written as strings (YAML 1.1 and the
command line) and refusing a value out of range with one line naming the key and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from ..errors import AdnifyError
from .losses import FEATURE_KD

__all__ = ["DEFAULTS", "KEY_HELP", "SCHEMA", "coerce"]


@dataclass(frozen=True)
class _Key:
    """Schema of one recipe key: default, value type, whether null is allowed, allowed choices."""

    default: Any
    type: type  # bool, int, float, str, or tuple (then ``item`` is the element type)
    help: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    item: type | None = None
    length: int | None = None  # required length of a tuple value
    low: float | None = None  # smallest allowed number (for a tuple: of each item)
    high: float | None = None  # largest allowed number
    open_low: bool = False  # the value must be strictly above ``low``
    open_high: bool = False  # the value must be strictly below ``high``

    def allowed(self) -> str:
        """The allowed range in words, e.g. ``> 0`` or ``in [0, 1)``."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {_num(self.low)}"
        return f"{'<' if self.open_high else '<='} {_num(self.high)}"

    def admits(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.open_high and value == self.high))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_POS = dict(low=0, open_low=True)  # > 0
_NONNEG = dict(low=0)  # >= 0
_ONE_UP = dict(low=1)  # >= 1
_PROB = dict(low=0, high=1)  # in [0, 1]
_UNIT = dict(low=0, high=1, open_high=True)  # in [0, 1)


SCHEMA: dict[str, _Key] = {
    # -- schedule and optimizer (timm train.py names) --------------------------------------
    "epochs": _Key(300, int, "training epochs", **_ONE_UP),
    "epoch_images": _Key(None, int, "images per epoch, a fresh seeded draw from the training split each epoch; "
                         "null = the whole split", nullable=True, **_ONE_UP),
    "batch_size": _Key(128, int, "images per process and step (global batch = batch_size x processes)", **_ONE_UP),
    "lr": _Key(None, float, "absolute learning rate; null = lr_base scaled to the global batch", nullable=True, **_POS),
    "lr_base": _Key(0.1, float, "learning rate for a global batch of lr_base_size images", **_POS),
    "lr_base_size": _Key(256, int, "global batch size that lr_base refers to", **_ONE_UP),
    "lr_base_scale": _Key("linear", str, "how lr_base scales with the batch", choices=("linear", "sqrt")),
    "opt": _Key("sgd", str, "optimizer name for timm.optim.create_optimizer_v2"),
    "opt_eps": _Key(None, float, "optimizer epsilon; null = optimizer default", nullable=True, **_POS),
    "momentum": _Key(0.9, float, "SGD momentum (above 0 for opt sgd/nesterov, which are Nesterov's)", **_UNIT),
    "weight_decay": _Key(1e-4, float, "weight decay (timm exempts norms and biases)", **_NONNEG),
    "sched": _Key("cosine", str, "scheduler name for timm.scheduler.create_scheduler_v2"),
    "decay_milestones": _Key((90, 180, 270), tuple, "epochs where 'multistep' decays", item=int, **_NONNEG),
    "decay_epochs": _Key(90.0, float, "epoch interval of the 'step' scheduler", **_POS),
    "decay_rate": _Key(0.1, float, "lr factor at each step/multistep decay", low=0, high=1, open_low=True),
    "warmup_epochs": _Key(0, int, "linear warm-up epochs", **_NONNEG),
    "warmup_lr": _Key(1e-5, float, "learning rate at the start of warm-up", **_NONNEG),
    "min_lr": _Key(0.0, float, "floor of cyclic schedulers (cosine)", **_NONNEG),
    "cooldown_epochs": _Key(0, int, "epochs at min_lr after the schedule ends", **_NONNEG),
    "grad_clip": _Key(None, float, "clip the gradient norm to this value; null = no clipping", nullable=True, **_POS),
    # -- data and augmentation --------------------------------------------------------------
    "input_size": _Key(None, tuple, "(channels, height, width); null = the model's default", nullable=True, item=int,
                        length=3, low=1, high=8192),
    "train_interpolation": _Key("random", str, "resize interpolation for training ('random' mixes them)"),
    "scale": _Key((0.08, 1.0), tuple, "random-resized-crop area range", item=float, length=2, low=0, high=1,
                  open_low=True),
    "ratio": _Key((3 / 4, 4 / 3), tuple, "random-resized-crop aspect-ratio range", item=float, length=2, **_POS),
    "hflip": _Key(0.5, float, "horizontal flip probability", **_PROB),
    "color_jitter": _Key(0.4, float, "colour jitter strength (ignored when aa is set); null = off", nullable=True,
                         **_PROB),
    "aa": _Key(None, str, "timm auto-augment string, e.g. rand-m9-mstd0.5-inc1; null = off", nullable=True),
    "reprob": _Key(0.0, float, "random-erasing probability", **_PROB),
    "smoothing": _Key(0.1, float, "label smoothing", **_UNIT),
    "mixup": _Key(0.0, float, "mixup alpha; 0 = off", **_NONNEG),
    "cutmix": _Key(0.0, float, "cutmix alpha; 0 = off", **_NONNEG),
    "mixup_prob": _Key(1.0, float, "probability of applying mixup or cutmix to a batch", **_PROB),
    "mixup_switch_prob": _Key(0.5, float, "probability of cutmix instead of mixup when both are on", **_PROB),
    "mixup_mode": _Key("batch", str, "mixup granularity", choices=("batch", "pair", "elem")),
    "drop_path": _Key(0.0, float, "stochastic-depth rate; null = the model's default", nullable=True, **_UNIT),
    "workers": _Key(4, int, "data-loading processes per training process (at most the CPU count is used)",
                    **_NONNEG),
    # -- model EMA, precision, reproducibility ----------------------------------------------
    "model_ema": _Key(False, bool, "keep an exponential moving average of the weights"),
    "model_ema_decay": _Key(0.9998, float, "per-step EMA decay", **_PROB),
    "amp": _Key(False, bool, "mixed precision (bf16/fp16) where the device supports it"),
    "seed": _Key(42, int, "random seed", low=0, high=2**32 - 1),
    "channels_last": _Key(False, bool, "train in the channels-last memory layout (faster for some convnets on "
                          "some devices: measure with benchmarks/train_step.py)"),
    # -- adnify: skip-aware self-distillation (docs/method.md) -------------------------------
    "loss_preset": _Key(None, str, "a named loss: paper (Algorithm 1 as written: alpha 0.5, dense feature KL on every "
                        "stage + logit KL) or official (wchkang/depth's classification training: alpha 0.5, logit KL "
                        "over the top 500 classes); sets the loss keys, which overrides given beside it still win",
                        nullable=True, choices=("paper", "official")),
    "alpha": _Key(None, float, "the paper's parametrisation: label_weight = alpha, distill_weight = 1 - alpha; "
                  "null = use label_weight and distill_weight", nullable=True, **_PROB),
    "label_weight": _Key(1.0, float, "weight of CE(super-net, labels)", **_NONNEG),
    "distill_weight": _Key(1.0, float, "weight of the distillation terms (super-net -> base-net)", **_NONNEG),
    "base_label_weight": _Key(0.0, float, "weight of CE(base-net, labels); 0 = the base-net learns from the "
                              "super-net only, as in the paper", **_NONNEG),
    "distill_warmup_epochs": _Key(0.0, float, "ramp the distillation weight linearly from 0 over these epochs",
                                  **_NONNEG),
    "temperature": _Key(1.0, float, "softmax temperature of the KL terms", **_POS),
    "order": _Key("sequential", str, "sequential: super then base, less memory (DDP); joint: one backward",
                  choices=("joint", "sequential")),
    "distill": _Key(True, bool, "false: (CE(super) + CE(base)) / 2, the paper's no-distillation ablation"),
    "feature_kd": _Key("none", str, "stage-output distillation: none; pooled (each stage output globally "
                       "average-pooled, then a KL over channels: the official code's form); dense (a channel KL at "
                       "every position, averaged)", choices=FEATURE_KD),
    "feature_kd_stages": _Key(None, tuple, "stage numbers (1 = first adaptive stage) the feature term reads; "
                              "null = every stage", nullable=True, item=int, **_ONE_UP),
    "logit_kd": _Key(True, bool, "distil the super-net logits into the base-net"),
    "kd_topk": _Key(None, int, "logit KL over the super-net's top-K classes only (the official code: 500); "
                    "null = every class", nullable=True, **_ONE_UP),
    "kd_weight_features": _Key(1.0, float, "weight of the summed feature KL terms", **_NONNEG),
    "teacher_weight": _Key(0.0, float, "weight of KL(original || super-net) + KL(original || base-net): a frozen copy "
                           "of the converted pretrained model as an additional teacher; 0 = off", **_NONNEG),
    "kd_weight_pre_logits": _Key(0.0, float, "weight of an MSE between base- and super-net pre-logit features "
                                 "(the classifier's input); 0 = off, as in the paper", **_NONNEG),
    "im_weight": _Key(0.0, float, "weight of information maximisation on the base-net's own predictions (entropy "
                      "of each minus entropy of their batch mean; SHOT): label-free adaptation; 0 = off", **_NONNEG),
    "compile_loss": _Key(False, bool, "fuse each KL term into one kernel with torch.compile (needs a C++ compiler "
                         "on CPU, Triton on CUDA; falls back to eager): the same loss, 2-3x faster"),
    "share_prefix": _Key(True, bool, "compute the layers before the first adaptive stage once for both passes "
                         "(same gradients); false recomputes them in the base-net pass"),
    "train_params": _Key("all", str, "all, or skip_norms: train only the skip-aware norm copies, so the "
                         "super-net stays exactly the converted model", choices=("all", "skip_norms")),
    "middle_prob": _Key(0.0, float, "share of steps whose second pass is a random sub-network between the ends "
                        "instead of the base-net (same cost: two passes a step); 0 = always the base-net",
                        **_PROB),
    "shared_norms": _Key(False, bool, "one norm copy for both paths (the no-skip-aware-norms ablation)"),
    "labels": _Key("auto", str, "auto: use the dataset's labels; none: the original model is the teacher",
                   choices=("auto", "none")),
    "freeze_bn_stats": _Key(False, bool, "keep BatchNorm running statistics fixed (fine-tuning)"),
    "recalibrate_skip_norms": _Key(0, int, "after the last step, re-estimate the BatchNorm statistics of the "
                                   "skip-aware norm copies on this many training images, under every sub-network "
                                   "that uses a copy in turn (their running averages were taken under the base-net "
                                   "alone, which misfits the sub-networks between the ends); 0 = off", **_NONNEG),
    "pattern_statistics": _Key(0, int, "after the last step, estimate each sub-network's own BatchNorm running "
                               "statistics (one set per prefix of skip flags) on this many training images with the "
                               "training transforms; saved with the model and used in evaluation, where training's "
                               "single set averages over both passes and fits neither end. A network trained alone "
                               "gets one precise set the same way; 0 = off", **_NONNEG),
    "calibrate_skip_norms": _Key(0, int, "before training, re-estimate the BatchNorm statistics of the skip-aware "
                                 "norm copies over this many training images (base-net, no gradients); 0 = off", **_NONNEG),
    # -- logging and checkpoints --------------------------------------------------------------
    "log_interval": _Key(50, int, "steps between log lines", **_ONE_UP),
    "log_grad_norms": _Key(True, bool, "log the gradient norm each loss term sends into the shared weights on "
                           "every log line (one extra backward per term on those steps)"),
    "eval_every_epochs": _Key(1, int, "epochs between evaluations; 0 = never (the final model is still saved)",
                              **_NONNEG),
    "eval_images": _Key(None, int, "validation images each evaluation scores, evenly spaced over the split (the "
                        "same ones every time); null = all", nullable=True, **_ONE_UP),
    "eval_before_training": _Key(False, bool, "also evaluate before the first step (epoch 0: the converted model)"),
    "checkpoint_every_steps": _Key(None, int, "extra checkpoint every N steps; null = at epoch ends only",
                                   nullable=True, **_ONE_UP),
    "checkpoint_every_minutes": _Key(30.0, float, "also checkpoint once this many minutes of training have passed "
                                     "since the last checkpoint, mid-epoch too (a crash loses at most that); 0 = off",
                                     **_NONNEG),
    "keep_checkpoints": _Key(2, int, "number of most recent checkpoints kept", **_ONE_UP),
    "max_broken_fraction": _Key(0.05, float, "images that cannot be decoded are skipped and counted; more than this "
                                "fraction of a split stops the run (the wrong folder, say)", **_PROB),
}

#: Every valid recipe key and its default value.
DEFAULTS: dict[str, Any] = {k: v.default for k, v in SCHEMA.items()}
#: One-line description of every key (for ``adnify recipes`` and error messages).
KEY_HELP: dict[str, str] = {
    k: v.help + (f" [{v.allowed()}]" if v.low is not None or v.high is not None else "")
    + (f" [{' | '.join(v.choices)}]" if v.choices else "") for k, v in SCHEMA.items()
}

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _unknown_key(key: str, where: str) -> AdnifyError:
    close = difflib.get_close_matches(key, list(SCHEMA), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return AdnifyError(f"unknown recipe key '{key}' in {where}{hint}: valid keys are {', '.join(SCHEMA)}")


def _coerce_scalar(value: Any, kind: type, key: str, where: str) -> Any:
    bad = AdnifyError(f"recipe key '{key}' in {where} expects {kind.__name__}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            number = float(value)
            if number.is_integer():
                return int(number)
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        # PyYAML reads "1e-3" (no dot) as a string, so accept numeric strings here.
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported schema type {kind!r}")  # pragma: no cover - schema bug


def coerce(key: str, value: Any, where: str) -> Any:
    """Check ``value`` against the schema of ``key`` and return it in the schema's type."""
    if key not in SCHEMA:
        raise _unknown_key(key, where)
    spec = SCHEMA[key]
    if value is None:
        if spec.nullable:
            return None
        raise AdnifyError(f"recipe key '{key}' in {where} cannot be null")
    if spec.type is tuple:
        assert spec.item is not None
        if isinstance(value, str):  # "0.08,1.0" from the command line
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            size = f"{spec.length} " if spec.length else ""
            raise AdnifyError(f"recipe key '{key}' in {where} expects a list of {size}values, got {value!r}")
        if spec.length is not None and len(value) != spec.length:
            raise AdnifyError(f"recipe key '{key}' in {where} needs {spec.length} values, got {list(value)!r}")
        items = tuple(_coerce_scalar(v.strip() if isinstance(v, str) else v, spec.item, key, where) for v in value)
        for item in items:
            _check_range(key, spec, item, where)
        return items
    if key == "feature_kd" and isinstance(value, bool):  # recipes and runs written before the choice existed
        value = "dense" if value else "none"
    if spec.choices is None:
        return _check_range(key, spec, _coerce_scalar(value, spec.type, key, where), where)
    if value not in spec.choices:
        raise AdnifyError(
            f"recipe key '{key}' in {where} must be one of {', '.join(spec.choices)}, got {value!r}"
        )
    return value


_RANGE_HINTS = {
    "epochs": " (to only re-estimate the skip-aware norm statistics, set calibrate_skip_norms and pass --max-steps 0)",
    "eval_every_epochs": " (0 = never)",
}


def _check_range(key: str, spec: _Key, value: Any, where: str) -> Any:
    if (spec.low is not None or spec.high is not None) and not isinstance(value, bool) and not spec.admits(value):
        raise AdnifyError(f"recipe key '{key}' in {where} must be {spec.allowed()}, got {value!r}"
                          + _RANGE_HINTS.get(key, ""))
    return value
