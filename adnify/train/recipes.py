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
from pathlib import Path
from typing import Any

import yaml

from ..errors import AdnifyError, first_line
from ..io.files import atomic_write_text
from .recipe_schema import DEFAULTS, KEY_HELP, SCHEMA, coerce

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


# Metadata a recipe file may carry besides the schema; it is not part of the resolved config.
_META_KEYS = ("summary",)
_SUFFIXES = (".yaml", ".yml")



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


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AdnifyError(f"cannot read recipe {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise AdnifyError(f"recipe {path} is not valid YAML: {first_line(e)}") from None
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
        config[key] = coerce(key, value, str(path))
    given = {key: coerce(key, value, "overrides") for key, value in (overrides or {}).items()}
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
        spec = SCHEMA.get(key)
        if spec is not None and spec.type is str and value is not None and not isinstance(value, str):
            value = raw.strip()  # YAML 1.1 reads "no"/"on"/"1" as bool/int; a str key wants the text
        out[key] = coerce(key, value, f"override '{item}'")
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
