"""``adnify report``: accuracy, MACs, parameters and latency of every sub-network."""

from __future__ import annotations

import contextlib
import copy
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import AdnifyError
from .options import (
    Checkpoint,
    Force,
    Groups,
    Labels,
    MatchByOrder,
    NumClasses,
    Pretrained,
    SharedNorms,
    Stages,
    convert_options,
    parse_ints,
)

_CONVERT = "Conversion (SOURCE is a timm name)"
_DATA = "Accuracy"
_LATENCY = "Latency"
_OUTPUT = "Output and budgets"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Format(str, Enum):
    json = "json"
    csv = "csv"
    md = "md"


def _panel(annotated, panel: str):
    """The option type ``annotated`` of ``adnify convert``, shown under ``panel`` in the help."""
    info = copy.copy(annotated.__metadata__[0])
    info.rich_help_panel = panel
    return Annotated[annotated.__origin__, info]


def report(
    source: Annotated[str, typer.Argument(help="A converted model directory, a training run directory, or a timm name.")],
    patterns: Annotated[str, typer.Option("--patterns", "-p", help="all, super, base, or comma-separated patterns (super,base,TFFF).")] = "all",
    metrics: Annotated[Optional[str], typer.Option(
        "--metrics", "-m", help="Comma-separated: params, macs, latency, acc. Default: params,macs, plus acc with --data "
                                "and latency with --budget-ms.")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="Images for accuracy: a folder, a save_to_disk folder, a Hub name, builtin:digits, or a training "
             "run directory (its own validation split).", rich_help_panel=_DATA)] = None,
    split: Annotated[Optional[str], typer.Option(
        help="Split to evaluate (default: the validation split, else all the data).", rich_help_panel=_DATA)] = None,
    labels: Annotated[Labels, typer.Option(help="auto: use the label column if there is one; none: ignore labels.",
                                           rich_help_panel=_DATA)] = Labels.auto,
    agreement: Annotated[bool, typer.Option(
        "--agreement", help="Report each sub-network's top-1 agreement with the super-net (works without labels).",
        rich_help_panel=_DATA)] = False,
    image_column: Annotated[Optional[str], typer.Option(help="Image column (default: detected).", rich_help_panel=_DATA)] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column (default: detected).", rich_help_panel=_DATA)] = None,
    num_workers: Annotated[int, typer.Option(help="Data loader worker processes.", rich_help_panel=_DATA)] = 0,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size of the latency runs and of the evaluation (default: 1 and 32).")] = None,
    input_size: Annotated[Optional[str], typer.Option(
        help="Input size C,H,W for MACs, latency and evaluation (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps, or auto (cuda when available).")] = "auto",
    dtype: Annotated[DType, typer.Option(help="Data type of latency runs and evaluation.")] = DType.float32,
    static: Annotated[bool, typer.Option("--static", help="Time the exported static sub-networks (net.export).",
                                         rich_help_panel=_LATENCY)] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Time under torch.compile.", rich_help_panel=_LATENCY)] = False,
    warmup: Annotated[int, typer.Option(help="Untimed rounds first.", rich_help_panel=_LATENCY)] = 5,
    repeats: Annotated[int, typer.Option(help="Timed rounds; each runs every pattern once, in shuffled order.",
                                         rich_help_panel=_LATENCY)] = 20,
    format: Annotated[Optional[Format], typer.Option(
        "--format", help="Format of -o (default: from its suffix); without -o, printed instead of the table.",
        rich_help_panel=_OUTPUT)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to this file.",
                                                   rich_help_panel=_OUTPUT)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Save a plot of accuracy (or agreement, or depth) against GMACs "
                                                      "and latency, Pareto front drawn (PNG).", rich_help_panel=_OUTPUT)] = None,
    budget_ms: Annotated[Optional[float], typer.Option(help="Pick the best sub-network within this latency (ms).",
                                                        rich_help_panel=_OUTPUT)] = None,
    budget_gmacs: Annotated[Optional[float], typer.Option(help="Pick the best sub-network within this many GMACs.",
                                                           rich_help_panel=_OUTPUT)] = None,
    select_only: Annotated[bool, typer.Option("--select-only", help="Print only the chosen pattern (for scripts).",
                                              rich_help_panel=_OUTPUT)] = False,
    force: _panel(Force, _OUTPUT) = False,
    pretrained: _panel(Pretrained, _CONVERT) = False,
    checkpoint: _panel(Checkpoint, _CONVERT) = None,
    match_by_order: _panel(MatchByOrder, _CONVERT) = False,
    plan_split: Annotated[Optional[str], typer.Option(
        help="Mandatory part per stage: a fraction (0.5) or block counts (2,2,3,2) (adnify convert --split).",
        rich_help_panel=_CONVERT)] = None,
    groups: _panel(Groups, _CONVERT) = 4,
    stages: _panel(Stages, _CONVERT) = None,
    num_classes: _panel(NumClasses, _CONVERT) = None,
    shared_norms: _panel(SharedNorms, _CONVERT) = False,
) -> None:
    """Accuracy, GMACs, parameters and latency of every sub-network, as a table, a file or a plot.

    Sorted by GMACs (multiply-accumulates, timm's "GFLOPs"); * marks Pareto-optimal rows.

    With --select-only, stdout holds only the chosen pattern (progress goes to stderr).

    Examples:

        adnify report r50-adn --patterns all --metrics params,macs,latency

        adnify report runs/r50 --patterns super,base,TFFF --data ./imagenet --split validation --plot pareto.png

        adnify report lite0-adn --data ./imagenet-sample --format json -o report.json

        adnify report runs/lite0/start --data runs/lite0 -p super,base   # before training, on the run's split

        adnify report swin_tiny_patch4 --budget-ms 40 --select-only
    """
    from rich.console import Console

    from ..io.sources import is_model_dir, open_source
    from ..report import output as ro
    from ..report.build import build_report, parse_metrics, resolve_device
    from ..report.selection import select_within_budget
    from .display import console

    wanted = parse_metrics(metrics) if metrics is not None else ["params", "macs"] + (["acc"] if data else [])
    if budget_ms is not None and "latency" not in wanted:
        wanted.append("latency")
    if data is not None and "acc" not in wanted:
        raise AdnifyError("--data is given but --metrics has no acc: add acc, or leave out --data")
    if select_only and budget_ms is None and budget_gmacs is None:
        raise AdnifyError("--select-only prints the sub-network chosen within a budget: add --budget-ms or --budget-gmacs")
    fmt = _format(format, output)
    for path in (output, plot):
        if path is not None:
            _check_output(path, force)
    if plot is not None:
        _require_matplotlib()

    size = parse_ints(input_size, "--input-size")
    opts = convert_options(pretrained, checkpoint, match_by_order, plan_split, groups, stages, input_size, num_classes,
                           shared_norms)
    if is_model_dir(source):
        given = [flag for flag, on in (("--pretrained", pretrained), ("--checkpoint", checkpoint), ("--match-by-order", match_by_order),
                                       ("--plan-split", plan_split), ("--groups", groups != 4), ("--stages", stages),
                                       ("--num-classes", num_classes is not None), ("--shared-norms", shared_norms)) if on]
        if given:
            raise AdnifyError(f"{', '.join(given)} only apply when SOURCE is a timm name; {source} is a saved model")
    dev = resolve_device(device)
    accelerator = None
    if "acc" in wanted:
        from ..report.evaluate import make_accelerator

        accelerator = make_accelerator(dev)
    main = accelerator is None or accelerator.is_main_process
    status = console.status(f"loading {source}...") if main and not select_only else contextlib.nullcontext()
    with status:
        net = open_source(source, **opts)
    rows, context = build_report(
        net, patterns, metrics=wanted, data=data, split=split, labels=labels is Labels.auto, agreement=agreement,
        image_column=image_column, label_column=label_column, num_workers=num_workers, batch_size=batch_size,
        input_size=size, device=dev, dtype=dtype.value, static=static, compile=compile, warmup=warmup, repeats=repeats,
        accelerator=accelerator)
    if not main:
        return
    context = {"source": source, **context}

    if not select_only:
        _show(console, rows, context, fmt if output is None else None)
    chosen = None
    if budget_ms is not None or budget_gmacs is not None:
        chosen = select_within_budget(rows, budget_ms=budget_ms, budget_gmacs=budget_gmacs)
    if output is not None:
        ro.write_report(rows, output, fmt, context=context, force=force)
    if plot is not None:
        ro.plot_report(rows, plot, context=context, force=force)
    if select_only:
        typer.echo(chosen["pattern"])
        return
    # Notes go to stderr when stdout carries the report itself (--format without -o), to keep it parseable.
    notes = console if output is not None or fmt == "table" else Console(stderr=True)
    for what, path in (("report", output), ("plot", plot)):
        if path is not None:
            notes.print(f"wrote {what} {path}", highlight=False, soft_wrap=True)
    if chosen is not None:
        notes.print(f"best within the budget: [bold]{chosen['pattern']}[/] ({_describe(chosen)})", highlight=False,
                    soft_wrap=True)


def _check_output(path: Path, force: bool) -> None:
    """Fail now, before any measuring, if ``path`` cannot be written."""
    from ..io.files import check_writable

    check_writable(path, force=force)
    if path.is_dir():
        raise AdnifyError(f"cannot write {path}: it is a directory")
    parent = next(p for p in path.parents if p.exists())  # the nearest existing folder, created up to path
    if not parent.is_dir():
        raise AdnifyError(f"cannot write {path}: {parent} is not a directory")


def _format(fmt: Optional[Format], output: Optional[Path]) -> str:
    if fmt is not None:
        return fmt.value
    if output is None:
        return "table"
    suffix = output.suffix.lower().lstrip(".")
    suffix = {"markdown": "md"}.get(suffix, suffix)
    if suffix not in ("json", "csv", "md"):
        raise AdnifyError(f"cannot tell the format of {output} from its suffix: pass --format json, csv or md")
    return suffix


def _show(console, rows, context, fmt: Optional[str]) -> None:
    """The rich table, or the report text in ``fmt`` when one was asked for without -o."""
    from ..report import output as ro

    if fmt in (None, "table"):
        title = f"{context.get('model') or context['source']}: {len(rows)} sub-network{'s' * (len(rows) > 1)}"
        console.print(ro.render_table(rows, title=title, context=_short(context)))
    elif fmt == "json":
        typer.echo(ro.to_json(rows, context=context), nl=False)
    elif fmt == "csv":
        typer.echo(ro.to_csv(rows), nl=False)
    else:
        typer.echo(ro.to_markdown(rows, context=context), nl=False)


def _short(context: dict) -> dict:
    """The context keys worth a caption line under the table (the files carry all of them)."""
    keys = ("device", "dtype", "batch_size", "input_size", "threads", "static", "compile", "data", "examples",
            "broken_images", "accuracy", "evaluation")
    short = {k: context[k] for k in keys if context.get(k) is not None}
    short["MACs"] = "per image, " + "x".join(str(s) for s in context["macs_input_size"])
    return short


def _describe(row: dict) -> str:
    parts = [f"{row['gmacs']:.3f} GMACs"]
    if row.get("latency_ms") is not None:
        parts.append(f"{row['latency_ms']:.2f} ms")
    for key, name in (("acc1", "top-1"), ("agreement", "agreement")):
        if row.get(key) is not None:
            parts.append(f"{name} {row[key]:.2f}%")
            break
    return ", ".join(parts)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AdnifyError('--plot needs matplotlib: pip install "adnify[plot]"') from None


def register(app: typer.Typer) -> None:
    app.command()(report)
