"""Everything ``adnify report`` measures about the sub-networks of one adaptive model.

:func:`build_report` returns rows (one per sub-network, see :mod:`adnify.report.output` for
their keys and the JSON schema) and the measurement context, ready for
:func:`~adnify.report.output.render_table`, :func:`~adnify.report.output.write_report`,
:func:`~adnify.report.output.plot_report` and :func:`~adnify.report.selection.select_within_budget`.

- **params, macs**: :func:`adnify.report.costs.pattern_costs`, one counted pass of the super-net
  (``torch.utils.flop_counter``) with per-block MACs subtracted for skipped blocks; always
  measured (cheap, and the table is sorted by MACs).
- **latency**: every pattern timed in the same run, interleaved
  (:func:`adnify.report.latency.measure_interleaved`), on the adaptive net itself or, with
  ``static=True``, on ``net.export(pattern)``; optionally under ``torch.compile``.
- **acc**: top-1/top-5 (or agreement with the super-net) of all patterns in one pass over
  the data (:mod:`adnify.report.evaluate`).

Example::

    rows, context = build_report(net, "super,base,TFFF", metrics=("params", "macs", "latency"))
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

from ..adaptive import AdaptiveNet
from ..conversion.plan import format_pattern, parse_pattern
from ..errors import AdnifyError
from ..io.broken import DEFAULT_FRACTION
from ..io.data import ImageData, load_image_data
from .costs import MACS_METHOD, pattern_costs
from .evaluate import eval_loader, evaluate_patterns, make_accelerator, progress_bar
from .latency import measure_interleaved, timing_context
from .layout import fastest_layout
from .selection import Row

if TYPE_CHECKING:
    from accelerate import Accelerator

METRICS = ("params", "macs", "latency", "acc")
_METRIC_ALIASES = {"accuracy": "acc", "top1": "acc", "agreement": "acc", "gmacs": "macs", "flops": "macs"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_LATENCY_BATCH = 1
DEFAULT_EVAL_BATCH = 32


def parse_patterns(text: str | Sequence[str], num_stages: int) -> list[str]:
    """``"all"``, ``"super"``, ``"base"``, ``"TFFF,FTFF"`` or a list of those -> distinct patterns.

    Raises:
        AdnifyError: a pattern is not ``num_stages`` letters of T/F (nor an alias).
    """
    from ..conversion.plan import all_patterns

    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item.lower() == "all":
            out += all_patterns(num_stages)
            continue
        try:
            out.append(format_pattern(parse_pattern(item, num_stages)))
        except ValueError as e:
            raise AdnifyError(f"{e}; or 'all', comma-separated (e.g. all, or super,base,{'T' + 'F' * (num_stages - 1)})") from None
    if not out:
        raise AdnifyError("no patterns given: pass 'all', 'super', 'base' or pattern strings like " + "T" * num_stages)
    return list(dict.fromkeys(out))


def parse_metrics(text: str | Iterable[str]) -> list[str]:
    """``"params,macs,latency,acc"`` -> the metric names, validated (``accuracy``/``agreement`` mean ``acc``)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        name = _METRIC_ALIASES.get(item, item)
        if name not in METRICS:
            raise AdnifyError(f"unknown metric {item!r}: choose from {', '.join(METRICS)} (comma-separated)")
        out.append(name)
    return list(dict.fromkeys(out))


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise AdnifyError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; anything else as given (checked)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise AdnifyError(f"unknown device {device!r}: use cpu, cuda, cuda:1, mps or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AdnifyError(f"device {device} requested, but CUDA is not available here: use --device cpu")
    return dev


def _training_run(data: Any) -> Any:
    """The :class:`~adnify.train.rundir.RunDir` that ``--data`` names, else None."""
    from ..train.rundir import RunDir

    return RunDir(data) if isinstance(data, (str, os.PathLike)) and RunDir.is_run(data) else None


def _run_eval_data(run: Any, seed: int, *, split: str | None, image_column: str | None, label_column: str | None,
                   labels: bool) -> ImageData:
    """``--data RUN_DIR``: the training run's validation split, rebuilt exactly (``seed``: its recipe's)."""
    from ..train.rundir import run_image_data

    given = [flag for flag, value in (("--split", split), ("--image-column", image_column),
                                      ("--label-column", label_column)) if value]
    if given:
        raise AdnifyError(f"--data {run.path} is a training run: its validation split is evaluated, "
                          f"so {', '.join(given)} do not apply")
    data = run_image_data(run.read_run(), seed)
    if data.validation is None:
        raise AdnifyError(f"training run {run.path} held out no validation split")
    return data if labels else replace(data, label_column=None, num_classes=None)


def build_report(
    net: AdaptiveNet,
    patterns: str | Sequence[str] = "all",
    *,
    metrics: str | Iterable[str] = ("params", "macs"),
    data: str | ImageData | None = None,
    split: str | None = None,
    labels: bool = True,
    agreement: bool = False,
    image_column: str | None = None,
    label_column: str | None = None,
    num_workers: int = 0,
    batch_size: int | None = None,
    input_size: Sequence[int] | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype = "float32",
    static: bool = False,
    compile: bool = False,
    warmup: int = 5,
    repeats: int = 20,
    accelerator: "Accelerator | None" = None,
    progress: bool = True,
) -> tuple[list[Row], dict[str, Any]]:
    """Measure the requested metrics of the requested sub-networks of ``net``.

    Args:
        net: the adaptive model (it is moved to ``device``/``dtype``).
        patterns: ``"all"``, ``"super"``, ``"base"``, comma-separated patterns, or a list.
        metrics: any of params, macs, latency, acc; params and macs are always measured.
        data: for ``acc``: a ``--data`` source for :func:`adnify.io.data.load_image_data`, a training
            run directory (its validation split, rebuilt as training made it), or loaded
            :class:`~adnify.io.data.ImageData`. The evaluation split is ``split``, else the
            validation split, else the whole data.
        split, labels, image_column, label_column: as in :func:`adnify.io.data.load_image_data`.
        agreement: also report each sub-network's top-1 agreement with the super-net
            (the only accuracy figure when the data has no labels).
        num_workers: data loader worker processes.
        batch_size: batch size of the latency runs and of the evaluation (default 1 and 32).
        input_size: C,H,W for MACs, latency and evaluation (default: the run's when ``data`` is a
            training run, else the model's).
        device: cpu, cuda, mps or auto. dtype: float32, float16 or bfloat16 (latency and evaluation;
            MACs are counted in float32, they do not depend on the dtype).
        static: time ``net.export(pattern)`` (skipped blocks removed) instead of the adaptive net.
        compile: time under ``torch.compile`` (compiled during the warm-up).
        warmup, repeats: untimed and timed rounds of the latency measurement.
        accelerator: for the evaluation under ``accelerate launch`` (default: made when needed).
            Latency is then measured by the main process only.
        progress: rich progress bars on stderr.

    Returns:
        ``(rows, context)``: one row per pattern in the order given, and what the figures depend on.

    Raises:
        AdnifyError: a bad pattern, metric, dtype or device; ``acc`` without data; data without
            labels and without ``agreement``; unreadable data.
    """
    pats = parse_patterns(patterns, net.num_stages)
    wanted = set(parse_metrics(metrics))
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    run = _training_run(data)
    run_recipe = run.recipe() if run is not None else None
    if input_size is None and run_recipe is not None:
        input_size = run_recipe["input_size"]  # score at the size training evaluated at
    size = net.input_size(input_size)
    if batch_size is not None and batch_size < 1:
        raise AdnifyError(f"batch size must be at least 1, got {batch_size}")
    if "acc" in wanted and data is None:
        raise AdnifyError("the acc metric needs data: pass --data DIR (an image folder, a save_to_disk folder or a Hub name)")

    net.to(device="cpu", dtype=torch.float32)  # MACs are counted on the CPU, in float32
    costs = pattern_costs(net, pats, input_size=size)
    rows: list[Row] = [{"pattern": c.pattern, "skipped_blocks": c.skipped_blocks, "params": c.params,
                        "gmacs": c.gmacs, "latency_ms": None, "latency_iqr_ms": None,
                        "acc1": None, "acc5": None, "agreement": None} for c in costs]
    by_pattern = {r["pattern"]: r for r in rows}
    context: dict[str, Any] = {
        "model": net.source.get("model") or net.source.get("class"),
        "checkpoint": net.source.get("checkpoint"),
        "stages": net.num_stages,
        "patterns": len(pats),
        "macs_method": MACS_METHOD,
        "macs_input_size": list(size),
        "macs_unit": "GMACs = multiply-accumulates per image (timm's and the paper's 'GFLOPs'); FLOPs = 2 x MACs",
        "params_note": "parameters the sub-network uses (skipped blocks and unused norm twins excluded)",
    }

    main = True
    if "acc" in wanted:
        if isinstance(data, ImageData):
            loaded = data
        elif run is not None:
            loaded = _run_eval_data(run, run_recipe["seed"], split=split, image_column=image_column,
                                    label_column=label_column, labels=labels)
        else:
            loaded = load_image_data(str(data), split=split, val_split=0.0, image_column=image_column,
                                     label_column=label_column, labels=labels)
        has_labels = loaded.label_column is not None
        if not has_labels and not agreement:
            why = "--labels none was given" if not labels else f"{loaded.source} has no label column"
            raise AdnifyError(f"accuracy needs labels, but {why}: pass --agreement to report each sub-network's "
                              "agreement with the super-net instead")
        eval_batch = batch_size or DEFAULT_EVAL_BATCH
        loader = eval_loader(net, loaded, batch_size=eval_batch, num_workers=num_workers, input_size=size)
        accelerator = accelerator or make_accelerator(dev)
        how: dict[str, Any] = {}
        fraction = run_recipe["max_broken_fraction"] if run_recipe else DEFAULT_FRACTION
        results = evaluate_patterns(net, pats, loader, labels=has_labels, agreement=agreement,
                                    accelerator=accelerator, dtype=torch_dtype, progress=progress, record=how,
                                    max_broken_fraction=fraction, on_broken=_warn_broken)
        for p, res in results.items():
            by_pattern[p].update(acc1=res.acc1, acc5=res.acc5, agreement=res.agreement)
        dev, main = accelerator.device, accelerator.is_main_process
        measured = (["top-1", "top-5"] if has_labels else []) + (["agreement with the super-net's top-1"]
                                                                 if agreement or not has_labels else [])
        context.update({
            "data": loaded.source,
            "split": split or ("validation" if loaded.validation is not None else "all (one split)"),
            "examples": next(iter(results.values())).examples,
            "broken_images": how["broken_images"],
            "broken_names": how["broken_names"],
            "accuracy": ", ".join(measured) + " (%)",
            "eval_batch_size": eval_batch,
            "evaluation": how["evaluation"],
            "eval_memory_format": how["memory_format"],
            "eval_forward_batch": how["forward_batch"],
            "eval_transform": "timm resolve_model_data_config + create_transform(is_training=False)",
            "processes": accelerator.num_processes,
        })

    if "latency" in wanted and main:
        lat_batch = batch_size or DEFAULT_LATENCY_BATCH
        timings = measure_latency(net, pats, batch_size=lat_batch, input_size=size, device=dev, dtype=torch_dtype,
                                  static=static, compile=compile, warmup=warmup, repeats=repeats, progress=progress)
        for p, t in timings.items():
            by_pattern[p].update(latency_ms=t.median_ms, latency_iqr_ms=t.iqr_ms)
        ctx = timing_context(batch_size=lat_batch, input_size=size, dtype=torch_dtype, device=dev, warmup=warmup,
                             repeats=repeats, compile=compile, static=static)
        context.update({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(ctx).items()})
        context["memory_format"] = fastest_layout(net, dev).memory_format
        context["latency_method"] = ("median and IQR in ms per batch; all patterns interleaved in one run, "
                                     "device synchronised, inference_mode")
    elif "acc" in wanted:
        context.update({"device": str(dev), "dtype": str(torch_dtype).removeprefix("torch.")})
    return rows, context


def _warn_broken(name: str) -> None:
    print(f"warning: skipped an image that cannot be decoded: {name}", file=sys.stderr)


def measure_latency(net: AdaptiveNet, patterns: Sequence[str], *, batch_size: int, input_size: Sequence[int],
                    device: torch.device, dtype: torch.dtype, static: bool = False, compile: bool = False,
                    warmup: int = 5, repeats: int = 20, progress: bool = True) -> dict:
    """Latency of every pattern, measured interleaved in one run; pattern -> :class:`~adnify.report.latency.Timing`."""
    net.eval().to(device=device, dtype=dtype)
    # the fastest memory format on the device (channels-last for convnets); the batch is the one asked for
    x = fastest_layout(net, device).apply(torch.randn(batch_size, *input_size, device=device, dtype=dtype))
    fns: dict[str, Callable[[], Any]] = {}
    for p in patterns:
        if static:
            # the net's own tensors (already on device/dtype): 2^N exports, one set of weights
            module = net.export(p, share=True).eval().to(device=device, dtype=dtype)
            fn: Callable[..., Any] = module
        else:
            fn = _bound(net, p)
        fns[p] = torch.compile(fn) if compile else fn
    calls = {p: (lambda f=f: f(x)) for p, f in fns.items()}
    bar = progress_bar(f"timing {len(patterns)} sub-network{'s' * (len(patterns) > 1)}: rounds", warmup + repeats, progress)
    with _compile_limits(len(patterns) if compile else 0), bar as update:
        return measure_interleaved(calls, warmup=warmup, repeats=repeats, device=device,
                                   progress=lambda done, _total: update(done))


def _bound(net: AdaptiveNet, pattern: str) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> Any:
        return net(x, skip=pattern)

    return run


@contextlib.contextmanager
def _compile_limits(n: int):
    """Let dynamo keep one compiled graph per pattern (its default recompile limit is 8)."""
    if n == 0:
        yield
        return
    import torch._dynamo.config as cfg

    names = [k for k in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(cfg, k)]
    with cfg.patch({k: max(getattr(cfg, k), 2 * n + 8) for k in names}):
        yield
