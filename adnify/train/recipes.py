"""Training recipes: flat YAML files in timm ``train.py`` vocabulary, plus adnify's own keys.

Every recipe shares one schema, :data:`DEFAULTS`. A recipe file names any subset of its keys
(the shipped ones name all of them, so each reads as a complete spec); command-line overrides
(``key=value``, see :func:`parse_overrides`) win over the file. Values are checked and coerced
against the schema, and a misspelt key is an error rather than silently ignored.

Learning-rate convention (timm's): recipes give ``lr_base`` for a global batch of
``lr_base_size`` images and leave ``lr`` null; the trainer calls :func:`resolve_lr` to scale it
to its own global batch (``batch_size`` is per process, as in timm). An explicit ``lr``, e.g. the
override ``lr=1e-3``, is absolute and used as is.

The shipped recipes live in the top-level ``recipes/`` folder of a source checkout, which the
wheel installs as ``adnify/_recipes`` (see ``pyproject.toml``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import AdnifyError
from ..io.files import atomic_write_text
from .losses import FEATURE_KD

__all__ = [
    "DEFAULTS",
    "KEY_HELP",
    "LOSS_PRESETS",
    "check_config",
    "dump_resolved",
    "list_recipes",
    "load_recipe",
    "parse_overrides",
    "recipe_dir",
    "resolve_lr",
]


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


_SCHEMA: dict[str, _Key] = {
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
    "shared_norms": _Key(False, bool, "one norm copy for both paths (the no-skip-aware-norms ablation)"),
    "labels": _Key("auto", str, "auto: use the dataset's labels; none: the original model is the teacher",
                   choices=("auto", "none")),
    "freeze_bn_stats": _Key(False, bool, "keep BatchNorm running statistics fixed (fine-tuning)"),
    "calibrate_skip_norms": _Key(0, int, "before training, re-estimate the BatchNorm statistics of the skip-aware "
                                 "norm copies over this many training images (base-net, no gradients); 0 = off", **_NONNEG),
    # -- logging and checkpoints --------------------------------------------------------------
    "log_interval": _Key(50, int, "steps between log lines", **_ONE_UP),
    "log_grad_norms": _Key(True, bool, "log the gradient norm each loss term sends into the shared weights on "
                           "every log line (one extra backward per term on those steps)"),
    "eval_every_epochs": _Key(1, int, "epochs between evaluations; 0 = never (the final model is still saved)",
                              **_NONNEG),
    "eval_before_training": _Key(False, bool, "also evaluate before the first step (epoch 0: the converted model)"),
    "checkpoint_every_steps": _Key(None, int, "extra checkpoint every N steps; null = at epoch ends only",
                                   nullable=True, **_ONE_UP),
    "keep_checkpoints": _Key(2, int, "number of most recent checkpoints kept", **_ONE_UP),
}

#: Every valid recipe key and its default value.
DEFAULTS: dict[str, Any] = {k: v.default for k, v in _SCHEMA.items()}
#: One-line description of every key (for ``adnify recipes`` and error messages).
KEY_HELP: dict[str, str] = {k: v.help for k, v in _SCHEMA.items()}

# Metadata a recipe file may carry besides the schema; it is not part of the resolved config.
_META_KEYS = ("summary",)
_SUFFIXES = (".yaml", ".yml")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def recipe_dir() -> Path:
    """Folder of the shipped recipes: ``adnify/_recipes`` in a wheel, ``<repo>/recipes`` in a checkout."""
    package = Path(__file__).resolve().parents[1]  # adnify/
    installed = package / "_recipes"
    if installed.is_dir():
        return installed
    return package.parent / "recipes"


def _available() -> dict[str, Path]:
    folder = recipe_dir()
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in _SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
    return found


def _summary(path: Path) -> str:
    """The recipe's ``summary:`` key, else its first ``# comment`` line."""
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("summary"), str):
        return data["summary"].strip()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line:
            break
    return ""


def list_recipes() -> dict[str, str]:
    """Shipped recipe names and their one-line summaries, sorted by name."""
    return {name: _summary(path) for name, path in sorted(_available().items())}


def _unknown_key(key: str, where: str) -> AdnifyError:
    close = difflib.get_close_matches(key, list(_SCHEMA), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return AdnifyError(f"unknown recipe key '{key}' in {where}{hint}: valid keys are {', '.join(_SCHEMA)}")


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


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check ``value`` against the schema of ``key`` and return it in the schema's type."""
    if key not in _SCHEMA:
        raise _unknown_key(key, where)
    spec = _SCHEMA[key]
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


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AdnifyError(f"cannot read recipe {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise AdnifyError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AdnifyError(f"recipe {path} must be a mapping of key: value, got {type(data).__name__}")
    return {str(k): v for k, v in data.items() if k not in _META_KEYS}


def _locate(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    available = _available()
    looks_like_path = path.suffix in _SUFFIXES or os.sep in text or "/" in text
    if not looks_like_path and text in available:  # a shipped name wins over a same-named local file
        return available[text]
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise AdnifyError(f"recipe file {path} not found")
        return path
    close = difflib.get_close_matches(text, list(available), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    names = ", ".join(available) or f"none found in {recipe_dir()}"
    raise AdnifyError(f"unknown recipe '{text}'{hint}: available recipes are {names}, or pass a path to a .yaml file")


def load_recipe(name_or_path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve a recipe into a complete config with every key of :data:`DEFAULTS`.

    Args:
        name_or_path: a shipped recipe name (see :func:`list_recipes`) or a path to a YAML file.
        overrides: values that win over the file, e.g. from :func:`parse_overrides`.

    Raises:
        AdnifyError: unknown recipe, unknown key, or a value of the wrong type.

    Example:
        >>> load_recipe("deit", {"epochs": 5})["epochs"]
        5
    """
    path = _locate(name_or_path)
    config = dict(DEFAULTS)
    for key, value in _read(path).items():
        config[key] = _coerce(key, value, str(path))
    given = {key: _coerce(key, value, "overrides") for key, value in (overrides or {}).items()}
    preset = given.get("loss_preset", config["loss_preset"])
    if preset is not None:  # the preset replaces the file's loss keys; overrides beside it still win
        config.update(LOSS_PRESETS[preset])
    if given.keys() & {"label_weight", "distill_weight"}:
        if given.get("alpha") is not None:
            raise AdnifyError("set either alpha (the paper's label_weight = alpha, distill_weight = 1 - alpha) or "
                              "label_weight/distill_weight, not both")
        config["alpha"] = None  # an explicit weight replaces the alpha a recipe file or preset gives
    config.update(given)
    check_config(config)
    return config


#: The named losses of ``loss_preset``: every loss key each one sets.
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    # Algorithm 1 as the paper writes it, with adnify's reading of the unspecified feature reduction.
    "paper": dict(alpha=0.5, distill=True, feature_kd="dense", feature_kd_stages=None, kd_weight_features=1.0,
                  logit_kd=True, kd_topk=None, base_label_weight=0.0, distill_warmup_epochs=0.0, temperature=1.0,
                  teacher_weight=0.0),
    # wchkang/depth train_adn.py as its published classification commands run it (no --fpn).
    "official": dict(alpha=0.5, distill=True, feature_kd="none", feature_kd_stages=None, kd_weight_features=1.0,
                     logit_kd=True, kd_topk=500, base_label_weight=0.0, distill_warmup_epochs=0.0, temperature=1.0,
                     teacher_weight=0.0),
}

# timm's optimizers that use Nesterov momentum, which torch rejects with momentum 0.
_NESTEROV = ("sgd", "nesterov", "nesterovw")


def check_config(config: dict[str, Any]) -> None:
    """Checks that span several keys (each key's own range is checked when it is read).

    Raises:
        AdnifyError: one line naming the keys and what is allowed.
    """
    opt = str(config["opt"]).lower().split("_")[-1]
    if opt in _NESTEROV and config["momentum"] <= 0:
        raise AdnifyError(f"momentum must be above 0 with opt {config['opt']} (Nesterov momentum): set momentum, or "
                          "opt=momentum for SGD without Nesterov")
    if config["alpha"] is None and config["label_weight"] == 0 and config["labels"] != "none" and config["distill"] \
            and config["train_params"] == "all" and config["base_label_weight"] == 0:
        raise AdnifyError("label_weight is 0 and base_label_weight is 0: nothing learns from the labels")
    stages = config["feature_kd_stages"]
    if stages is not None and len(set(stages)) != len(stages):
        raise AdnifyError(f"feature_kd_stages names a stage twice: {list(stages)}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["lr=1e-3", "epochs=5", "aa=null"]`` into typed values, checked against the schema.

    Each value is read as YAML (so ``null``, ``true``, ``[0.5, 1.0]`` work); an empty value means null.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")  # accept --flag spelling: warmup-epochs=3
        if not sep or not key:
            raise AdnifyError(f"override '{item}' must look like key=value, e.g. lr=1e-3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # an unquoted string YAML rejects, e.g. "a: b"; the schema check decides
        spec = _SCHEMA.get(key)
        if spec is not None and spec.type is str and value is not None and not isinstance(value, str):
            value = raw.strip()  # YAML 1.1 reads "no"/"on"/"1" as bool/int; a str key wants the text
        out[key] = _coerce(key, value, f"override '{item}'")
    return out


def resolve_lr(config: dict[str, Any], global_batch_size: int) -> float:
    """The absolute learning rate: ``lr`` if set, else ``lr_base`` scaled to ``global_batch_size``.

    ``global_batch_size`` is ``batch_size x processes x gradient-accumulation steps``.
    """
    if config.get("lr") is not None:
        return float(config["lr"])
    ratio = global_batch_size / config["lr_base_size"]
    if config.get("lr_base_scale", "linear") == "sqrt":
        ratio = math.sqrt(ratio)
    return float(config["lr_base"]) * ratio


def _plain(value: Any) -> Any:
    # safe_dump cannot write tuples; lists load back into the same tuples through the schema.
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dump_resolved(config: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a resolved config as YAML (atomically) so the run can be reproduced with ``load_recipe``."""
    text = "# adnify resolved recipe: pass this file's path wherever a recipe name is accepted\n"
    text += yaml.safe_dump(_plain(dict(config)), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text, force=True)
