"""One prepared GPU check: what no CPU can show, measured in one short run (issue 34).

Six sections, run in this order, each a set of ratios measured side by side in this one run, written
as one JSON document (to ``--output`` after every section, so a run cut short keeps what it measured,
and on stdout at the end) with a short table on stderr:

train    ADN steps (the recipe's default ``order`` and the other one) against a plain step of the same
         network, under fp16 (accelerate's gradient scaler) and bf16: step-time and peak-memory ratios,
         every loss term finite over the steps (random data, random labels), each term's dtype, and a
         probe showing the KL kernel finite where an fp16 KL overflows. ResNet-50 and ViT-S/16, 224 px.
latency  every sub-network's latency over the super-net's, beside its MACs ratio, at batch 1 and 64,
         fp32 and fp16; channels-last against NCHW for convnets (the faster one times the patterns).
         ResNet-50, Swin-T, ViT-B/16 (the paper's Table 1).
loader   the training loader's images/s (the recipe's augmentation, every CPU as a worker, full-size
         JPEGs) against the ADN step's images/s from ``train``: the share of a step the GPU would wait.
ddp      ``accelerate launch`` with 1 and with 2 processes on the same global batch: per-step losses.
switch   ``set_subnet`` and the first call after a switch, eager and under ``torch.compile``: whether each
         pattern compiles anew, what that costs, and the projected cost of compiling every depth.
onnx     the dynamic-depth ONNX file against static exports, under onnxruntime's CUDA provider.

Each section runs inside its own ``try``: a failure is recorded (error and traceback tail) and the
others still run. A global budget (``--budget-s``, 460 s by default so that start-up fits in 8 min)
skips a section, with a note, when its estimated cost no longer fits. Random weights, models built
locally, no downloads. ``--smoke`` runs the same code on the CPU with tiny shapes, one thread (fp16
becomes fp32 for training and bf16 for inference there: fp16 autocast needs CUDA).

    python benchmarks/device_check.py --output device-check.json          # on a GPU, about 7 min
    python benchmarks/device_check.py --smoke --output /tmp/smoke.json     # on any CPU, 1-3 min
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

# Run in this order: the compile-bound switch section, whose cost varies most, after the predictable ones.
SECTIONS = ("train", "latency", "loader", "ddp", "switch", "onnx")
TRAIN_MODELS = {"resnet50": "resnet", "vit_small_patch16_224": "deit"}  # model -> the recipe it trains with
LATENCY_MODELS = ("resnet50", "swin_tiny_patch4_window7_224", "vit_base_patch16_224")
ONE_MODEL = "resnet50"  # switch, ddp and onnx
KNOWN_MODELS = tuple(dict.fromkeys([*TRAIN_MODELS, *LATENCY_MODELS]))
#: Seconds each section is expected to take on one H100-class GPU; a section starts only if it fits.
ESTIMATE_S = {"train": 110, "latency": 110, "switch": 120, "loader": 45, "ddp": 60, "onnx": 120}
#: Tiny versions of each model for --smoke: same family and code path, a fraction of the work.
SMOKE_KWARGS: dict[str, dict[str, Any]] = {
    "resnet50": dict(layers=(2, 2, 2, 2), channels=(8, 16, 32, 64), stem_width=8),
    "vit_small_patch16_224": dict(img_size=32, patch_size=8, depth=8, embed_dim=32, num_heads=2),
    "vit_base_patch16_224": dict(img_size=32, patch_size=8, depth=8, embed_dim=32, num_heads=2),
    "swin_tiny_patch4_window7_224": dict(img_size=64, window_size=2, embed_dim=16, depths=(2, 2, 2, 2),
                                         num_heads=(1, 1, 2, 2)),
}
SMOKE_INPUT = {"resnet50": 48, "vit_small_patch16_224": 32, "vit_base_patch16_224": 32,
               "swin_tiny_patch4_window7_224": 64}
UINT8_ADVICE = ("the loader is the bottleneck: hand the GPU uint8 batches and normalise there (timm's "
                "PrefetchLoader), decode with pillow-simd or DALI/nvjpeg, or use more CPU cores per GPU")


@dataclass
class Profile:
    """The sizes of a run: the GPU check, or the same code at tiny shapes (--smoke)."""

    smoke: bool
    device: str
    train_batch: int = 64
    train_steps: int = 50
    train_warmup: int = 5
    latency_batches: tuple[int, ...] = (1, 64)
    latency_warmup: int = 5
    latency_repeats: int = 15
    latency_patterns: int | None = None  # None: every pattern; else super, base and patterns in between
    switch_batch: int = 32
    switch_repeats: int = 20
    extra_compiled_patterns: int = 1  # compiled beyond super and base, to measure a compile per pattern
    compile_backend: str = "inductor"
    loader_seconds: float = 20.0
    loader_workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    ddp_global_batch: int = 32
    ddp_steps: int = 20
    onnx_patterns: tuple[str, ...] = ("super", "base")  # each static export of ResNet-50 takes seconds
    onnx_repeats: int = 30

    @classmethod
    def smoke_run(cls) -> "Profile":
        return cls(smoke=True, device="cpu", train_batch=4, train_steps=4, train_warmup=1, latency_batches=(1, 2),
                   latency_warmup=1, latency_repeats=2, latency_patterns=3, switch_batch=2, switch_repeats=3,
                   extra_compiled_patterns=1,
                   compile_backend="eager", loader_seconds=2.0, loader_workers=min(2, len(os.sched_getaffinity(0))),
                   ddp_global_batch=4, ddp_steps=3, onnx_patterns=("base",), onnx_repeats=3)

    @property
    def train_precisions(self) -> tuple[str, ...]:
        return ("fp16", "bf16") if self.device == "cuda" else ("no", "bf16")  # fp16 autocast needs CUDA

    @property
    def infer_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.float16) if self.device == "cuda" else (torch.float32, torch.bfloat16)


class Budget:
    """The run's time budget: sections that no longer fit are skipped, with a note."""

    def __init__(self, seconds: float, smoke: bool) -> None:
        self.seconds, self.smoke, self.start = seconds, smoke, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return self.smoke or estimate_s <= self.left()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_info(profile: Profile) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)),
                            "torch_threads": torch.get_num_threads(), "smoke": profile.smoke}
    if profile.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_conv=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        info.update(name="cpu", gpus=0)
    return info


def build_net(profile: Profile, model: str, **kwargs: Any) -> tuple[Any, tuple[int, int, int]]:
    """``adnify.convert`` of ``model`` with random weights (tiny with --smoke), on the CPU, and its input size."""
    import adnify

    if profile.smoke:
        kwargs = {**SMOKE_KWARGS[model], "num_classes": 10, **kwargs}
        size = (3, SMOKE_INPUT[model], SMOKE_INPUT[model])
    else:
        size = (3, 224, 224)
    torch.manual_seed(0)
    return adnify.convert(model, input_size=size, **kwargs), size


def medians_and_ratio(times: dict[str, list[float]], reference: str) -> dict[str, Any]:
    """Median ms of each variant, its ratio of medians to ``reference`` and the quartiles of per-round ratios."""
    median = {v: statistics.median(t) for v, t in times.items()}
    out: dict[str, Any] = {"ms": {v: round(1000 * m, 3) for v, m in median.items()}, "ratio": {}, "round_ratio_iqr": {}}
    for v in times:
        if v == reference:
            continue
        out["ratio"][v] = round(median[v] / median[reference], 4)
        rounds = [a / b for a, b in zip(times[v], times[reference])]
        if len(rounds) >= 2:
            q = statistics.quantiles(rounds, n=4)
            out["round_ratio_iqr"][v] = [round(q[0], 4), round(q[2], 4)]
    return out


# ----------------------------------------------------------------------------- 1. training


def peak_memory_mb(device: torch.device, run: Callable[[], None]) -> float:
    """Peak memory that ``run`` adds: ``max_memory_allocated`` on CUDA, malloc'd bytes on the CPU
    (sampled by ``benchmarks/train_step.py``'s thread; rough in a process that has run other work)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from train_step import Peak, malloc_bytes

    before = malloc_bytes()
    with Peak(malloc_bytes) as peak:
        run()
    return (peak.peak - before) / 2**20


def kl_overflow_probe(device: torch.device) -> dict[str, Any]:
    """The KL of two fp16 logit tensors whose log-probabilities leave fp16's range (about 6.5e4):
    computed in fp16 it is not finite; adnify's ``channel_kl`` (float32 inside) is."""
    import torch.nn.functional as F

    from adnify.train.kl import channel_kl

    g = torch.Generator().manual_seed(0)
    dtype = torch.float16
    student = (torch.randn(8, 100, generator=g) * 1e4).to(device, dtype)
    teacher = (torch.randn(8, 100, generator=g) * 1e4).to(device, dtype)
    naive = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")
    ours = channel_kl(student, teacher, channel_dim=-1)
    return {"fp16_kl": float(naive), "fp16_kl_finite": bool(torch.isfinite(naive)), "adnify_kl": float(ours),
            "adnify_kl_finite": bool(torch.isfinite(ours)), "adnify_kl_dtype": str(ours.dtype).removeprefix("torch.")}


def make_variant(variant: str, net: Any, config: dict[str, Any], precision: str, cpu: bool, run_dir: Path,
                 batch: int) -> Callable[[torch.Tensor, torch.Tensor], tuple[Any, bool]]:
    """One training step of ``variant`` (``plain``, ``joint`` or ``sequential``) as ``adnify train`` runs it:
    its own Accelerator (so each variant has its own gradient scaler), the recipe's optimizer and loss."""
    from adnify.train.optim import build_optimizer
    from adnify.train.recipes import resolve_lr
    from adnify.train.rundir import RunDir
    from adnify.train.session import make_accelerator
    from adnify.train.steps import AdnPair, LossConfig, adn_step, plain_step

    accelerator = make_accelerator(config, RunDir(run_dir), mixed_precision=precision, cpu=cpu, log_with=None,
                                   find_unused=False)
    if variant == "plain":
        module = net.export("F" * net.num_stages)
    else:
        module = AdnPair(copy.deepcopy(net), share_prefix=config["share_prefix"])
    optimizer = build_optimizer(module, config, resolve_lr(config, batch))
    module, optimizer = accelerator.prepare(module, optimizer)
    module.train()
    loss = LossConfig.from_config(config, net)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[Any, bool]:
        """The step's ``LossParts`` (still on the device: reading them waits for the GPU) and whether
        the fp16 gradient scaler skipped the update."""
        if variant == "plain":
            parts = plain_step(accelerator, module, x, y)
        else:
            parts = adn_step(accelerator, module, x, y, loss, order=variant)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return parts, bool(optimizer.step_was_skipped)

    return step


def section_train(profile: Profile, models: list[str], budget: Budget) -> dict[str, Any]:
    """ADN steps in both orders against a plain step, per model and precision: time, memory, finite losses."""
    from adnify.train.recipes import load_recipe

    device = torch.device(profile.device)
    out: dict[str, Any] = {"batch_size": profile.train_batch, "steps": profile.train_steps,
                           "warmup_steps": profile.train_warmup, "kl_overflow_probe": kl_overflow_probe(device),
                           "models": {}}
    for model in [m for m in TRAIN_MODELS if m in models]:
        if not budget.fits(ESTIMATE_S["train"] / len(TRAIN_MODELS)):
            out["models"][model] = {"skipped": f"time budget: {budget.left():.0f} s left"}
            continue
        recipe = TRAIN_MODELS[model]
        default_order = load_recipe(recipe)["order"]
        orders = [default_order, "joint" if default_order == "sequential" else "sequential"]
        config = load_recipe(recipe, {"batch_size": profile.train_batch})
        net, size = build_net(profile, model)
        net = net.to(device)
        result: dict[str, Any] = {"recipe": recipe, "default_order": default_order, "input_size": list(size)}
        g = torch.Generator().manual_seed(0)
        pool = [(torch.randn(profile.train_batch, *size, generator=g).to(device),
                 torch.randint(0, net.model.num_classes, (profile.train_batch,), generator=g).to(device))
                for _ in range(4)]  # random images, random labels; a few batches cycled
        for precision in profile.train_precisions:
            log(f"train: {model}, {precision}")
            with tempfile.TemporaryDirectory(prefix="adnify-check-") as tmp:
                names = ["plain", *orders]
                steps = {v: make_variant(v, net, config, precision, profile.device == "cpu", Path(tmp), profile.train_batch)
                         for v in names}
                memory = {v: round(peak_memory_mb(device, lambda v=v: [steps[v](*pool[i]) for i in range(2)]), 1)
                          for v in names}  # two steps: the second has the optimizer state in place
                times: dict[str, list[float]] = {v: [] for v in names}
                losses: dict[str, list[dict[str, float]]] = {v: [] for v in names}
                skipped = {v: 0 for v in names}
                dtypes: dict[str, dict[str, str]] = {}
                rng = random.Random(0)
                for i in range(profile.train_warmup + profile.train_steps):
                    order = names[:]
                    rng.shuffle(order)  # interleaved: load changes hit every variant alike
                    for v in order:
                        sync(device)
                        start = time.perf_counter()
                        parts, was_skipped = steps[v](*pool[i % len(pool)])
                        sync(device)
                        if i >= profile.train_warmup:
                            times[v].append(time.perf_counter() - start)
                        losses[v].append(parts.as_floats())
                        dtypes[v] = {k: str(t.dtype).removeprefix("torch.") for k, (_, t) in parts.terms.items()}
                        skipped[v] += was_skipped
                del steps
            timing = medians_and_ratio(times, "plain")
            finite = {v: all(all(map(_finite, row.values())) for row in rows) for v, rows in losses.items()}
            result[precision] = {
                "step_ms": timing["ms"], "step_ratio": timing["ratio"], "step_ratio_round_iqr": timing["round_ratio_iqr"],
                "images_per_s": {v: round(profile.train_batch / (ms / 1000), 1) for v, ms in timing["ms"].items()},
                "peak_memory_mb": memory,
                "memory_ratio": {v: round(memory[v] / memory["plain"], 3) for v in orders if memory["plain"] > 0},
                "all_losses_finite": finite, "scaler_skipped_steps": skipped, "term_dtypes": dtypes,
                "first_loss": {v: rows[0] for v, rows in losses.items()},
                "last_loss": {v: rows[-1] for v, rows in losses.items()},
            }
        out["models"][model] = result
        del net, pool
        gc.collect()
    return out


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


# ----------------------------------------------------------------------------- 2. inference latency


def section_latency(profile: Profile, models: list[str], budget: Budget) -> dict[str, Any]:
    """Every pattern's latency over the super-net's beside its MACs ratio, per dtype and batch, in the faster layout."""
    from adnify.report.costs import pattern_costs
    from adnify.report.latency import measure_interleaved
    from adnify.report.layout import is_convnet

    device = torch.device(profile.device)
    out: dict[str, Any] = {"warmup": profile.latency_warmup, "repeats": profile.latency_repeats, "models": {}}
    todo = [m for m in LATENCY_MODELS if m in models]
    for model in todo:
        if not budget.fits(ESTIMATE_S["latency"] / len(LATENCY_MODELS)):
            out["models"][model] = {"skipped": f"time budget: {budget.left():.0f} s left"}
            continue
        net, size = build_net(profile, model)
        net = net.eval()
        patterns = net.patterns()
        if profile.latency_patterns is not None:
            patterns = [*patterns[: profile.latency_patterns - 1], patterns[-1]]
        costs = {c.pattern: c.macs for c in pattern_costs(net, patterns, input_size=size)}  # MACs = FLOPs / 2
        super_p, base_p = patterns[0], patterns[-1]
        result: dict[str, Any] = {"input_size": list(size), "super_gmacs": round(costs[super_p] / 1e9, 4),
                                  "macs_ratio": {p: round(costs[p] / costs[super_p], 4) for p in patterns}}
        layouts = ["contiguous", "channels_last"] if is_convnet(net) else ["contiguous"]
        for dtype in profile.infer_dtypes:
            name = str(dtype).removeprefix("torch.")
            copies = {lay: _copy_as(net, device, dtype, lay) for lay in layouts}
            for batch in profile.latency_batches:
                log(f"latency: {model}, {name}, batch {batch}")
                x = torch.randn(batch, *size).to(device, dtype)
                inputs = {lay: x.contiguous(memory_format=_FORMAT[lay]) for lay in layouts}
                entry: dict[str, Any] = {}
                layout = layouts[0]
                if len(layouts) > 1:  # which layout is faster, on the super- and the base-net
                    fns = {f"{lay}/{p}": (lambda lay=lay, p=p: copies[lay](inputs[lay], skip=p))
                           for lay in layouts for p in (super_p, base_p)}
                    t = measure_interleaved(fns, warmup=profile.latency_warmup, repeats=profile.latency_repeats,
                                            device=device)
                    entry["layout_ms"] = {k2: round(v.median_ms, 3) for k2, v in t.items()}
                    layout = min(layouts, key=lambda lay: t[f"{lay}/{super_p}"].median_ms + t[f"{lay}/{base_p}"].median_ms)
                fns = {p: (lambda p=p: copies[layout](inputs[layout], skip=p)) for p in patterns}
                t = measure_interleaved(fns, warmup=profile.latency_warmup, repeats=profile.latency_repeats, device=device)
                ms = {p: t[p].median_ms for p in patterns}
                ratio = {p: ms[p] / ms[super_p] for p in patterns}
                gap = {p: ratio[p] - costs[p] / costs[super_p] for p in patterns}
                entry.update(layout=layout, ms={p: round(v, 3) for p, v in ms.items()},
                             latency_ratio={p: round(v, 4) for p, v in ratio.items()},
                             base_super_latency=round(ratio[base_p], 4),
                             base_super_macs=round(costs[base_p] / costs[super_p], 4),
                             max_abs_gap=round(max(map(abs, gap.values())), 4))
                result[f"{name}/batch{batch}"] = entry
            del copies
        out["models"][model] = result
        del net
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


_FORMAT = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _copy_as(net: Any, device: torch.device, dtype: torch.dtype, layout: str) -> Any:
    return copy.deepcopy(net).to(device=device, dtype=dtype, memory_format=_FORMAT[layout]).eval()


# ----------------------------------------------------------------------------- 3. switching, eager and compiled


def _timed(device: torch.device, fn: Callable[[], Any]) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return 1000 * (time.perf_counter() - start)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def section_switch(profile: Profile, models: list[str], budget: Budget) -> dict[str, Any]:
    """A switch of sub-network and the first call after it, eager and under ``torch.compile``."""
    import torch._dynamo

    if ONE_MODEL not in models:
        return {"skipped": f"{ONE_MODEL} not in --models"}
    device = torch.device(profile.device)
    dtype = profile.infer_dtypes[1] if device.type == "cuda" else torch.float32
    net, size = build_net(profile, ONE_MODEL)
    net = net.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    x = torch.randn(profile.switch_batch, *size).to(device, dtype).contiguous(memory_format=torch.channels_last)
    patterns = net.patterns()
    super_p, base_p = patterns[0], patterns[-1]
    n = profile.switch_repeats
    out: dict[str, Any] = {"model": ONE_MODEL, "batch_size": profile.switch_batch,
                           "dtype": str(dtype).removeprefix("torch."),
                           "backend": profile.compile_backend, "patterns": len(patterns)}
    # set_subnet alone: flag flips on the host, alternating between two patterns
    flips = []
    for i in range(2000 if not profile.smoke else 200):
        start = time.perf_counter()
        net.set_subnet(base_p if i % 2 else super_p)
        flips.append(time.perf_counter() - start)
    out["set_subnet_us"] = round(1e6 * statistics.median(flips), 2)

    def first_and_steady(model: Any) -> dict[str, float]:
        """The first call after switching super -> base, and base's steady state (medians over rounds)."""
        first, steady = [], []
        for _ in range(3):
            net.set_subnet(super_p)
            for _ in range(2):
                model(x)
            net.set_subnet(base_p)
            first.append(_timed(device, lambda: model(x)))
            steady.extend(_timed(device, lambda: model(x)) for _ in range(n))
        net.set_subnet(super_p)
        super_ms = statistics.median(_timed(device, lambda: model(x)) for _ in range(n))
        return {"first_call_after_switch_ms": round(statistics.median(first), 3),
                "base_steady_ms": round(statistics.median(steady), 3), "super_steady_ms": round(super_ms, 3)}

    with torch.inference_mode():
        log("switch: eager")
        out["eager"] = first_and_steady(net)
        log(f"switch: torch.compile, backend {profile.compile_backend}")
        torch._dynamo.reset()
        compiled = torch.compile(net, backend=profile.compile_backend)
        graphs0 = _graphs()
        net.set_subnet(super_p)
        compile_super = _timed(device, lambda: compiled(x))
        graphs_super = _graphs()
        net.set_subnet(base_p)
        compile_base = _timed(device, lambda: compiled(x))
        graphs_base = _graphs()
        steady = first_and_steady(compiled)
        graphs_after = _graphs()
        extra = [p for p in patterns[1:-1]][: profile.extra_compiled_patterns]
        per_pattern = []
        for p in extra:  # what one more depth costs the first time it runs compiled
            if not budget.fits(2 * max([compile_base, *per_pattern]) / 1000):
                break  # recorded as fewer extra patterns
            net.set_subnet(p)
            per_pattern.append(_timed(device, lambda: compiled(x)))
        graphs_extra = _graphs()
        extra = extra[: len(per_pattern)]
        limit = getattr(torch._dynamo.config, "recompile_limit", None) or getattr(torch._dynamo.config,
                                                                                  "cache_size_limit", None)
        recompiles = graphs_base > graphs_super
        first_compiles = [compile_base, *per_pattern]
        out["compiled"] = {
            "first_call_super_ms": round(compile_super, 1), "first_call_base_ms": round(compile_base, 1),
            **steady, "graphs": {"super": graphs_super - graphs0, "after_base": graphs_base - graphs0,
                                 "after_switching_back_and_forth": graphs_after - graphs0,
                                 f"after_{len(extra)}_more_patterns": graphs_extra - graphs0},
            "every_pattern_compiles_anew": recompiles and graphs_extra - graphs_after >= len(extra),
            "switching_back_recompiles": graphs_after > graphs_base,
            "extra_patterns": extra, "extra_first_call_ms": [round(t, 1) for t in per_pattern],
            "recompile_limit": limit,
            "projected_all_patterns_compile_s": round((compile_super + statistics.median(first_compiles)
                                                       * (len(patterns) - 1)) / 1000, 1),
        }
        if limit is not None and len(patterns) > limit:
            out["compiled"]["note"] = (f"{len(patterns)} patterns but torch._dynamo.config.recompile_limit = {limit}: "
                                       "past it, further patterns run eagerly unless the limit is raised")
        out["compiled_speedup"] = {
            "super": round(out["eager"]["super_steady_ms"] / out["compiled"]["super_steady_ms"], 3),
            "base": round(out["eager"]["base_steady_ms"] / out["compiled"]["base_steady_ms"], 3)}
        torch._dynamo.reset()
    return out


# ----------------------------------------------------------------------------- 4. the training loader


def find_sample(explicit: str | None) -> Path | None:
    """The project's ImageNet sample: ``--data``, else ``shared/data`` beside or inside the repository."""
    if explicit:
        return Path(explicit)
    root = Path(__file__).resolve().parents[1]
    for candidate in (root / "shared/data/imagenet-sample", root.parent / "shared/data/imagenet-sample"):
        if candidate.is_dir():
            return candidate
    return None


def generated_jpegs(folder: Path, count: int, size: tuple[int, int], classes: int = 4) -> Path:
    """``count`` JPEGs of ``size`` (ImageNet's typical 500x375 for the GPU run) in class folders.

    Smooth random colour fields, not noise: noise compresses badly and decodes slower than photos.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        cls = folder / f"class{i % classes}"
        cls.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(cls / f"{i:05d}.jpg", quality=90)
    return folder


def section_loader(profile: Profile, models: list[str], budget: Budget, data: str | None,
                   train_result: dict[str, Any] | None) -> dict[str, Any]:
    """The training loader's images/s per recipe against the ADN step's images/s measured by ``train``."""
    import datasets

    from adnify.io.data import load_image_data
    from adnify.train.loaders import build_transforms, train_loader
    from adnify.train.recipes import load_recipe

    todo = [m for m in TRAIN_MODELS if m in models]
    out: dict[str, Any] = {"workers": profile.loader_workers, "batch_size": profile.train_batch, "models": {}}
    with tempfile.TemporaryDirectory(prefix="adnify-jpegs-") as tmp:
        folder = None if profile.smoke else find_sample(data)  # the smoke run never depends on shared data
        if folder is None:
            count, size = (16, (160, 120)) if profile.smoke else (512, (500, 375))
            folder = generated_jpegs(Path(tmp), count, size)
            out["data"] = f"generated: {count} JPEGs of {size[0]}x{size[1]}"
        else:
            out["data"] = str(folder)
        datasets.disable_progress_bars()
        images = load_image_data(str(folder))
        # Several batches per worker in an epoch: with a 500-image sample, 16 workers and batch 64, an
        # epoch would end before every worker had a batch, and the measurement would count the drain.
        wanted = 4 * profile.loader_workers * profile.train_batch
        if len(images.train) < wanted:
            copies = -(-wanted // len(images.train))
            images = dataclasses.replace(images, train=datasets.concatenate_datasets([images.train] * copies))
        out["train_images"] = len(images.train)
        for model in todo:
            recipe = TRAIN_MODELS[model]
            config = load_recipe(recipe, {"batch_size": profile.train_batch, "workers": profile.loader_workers})
            net, size = build_net(profile, model)
            transforms = build_transforms(net, {**config, "input_size": list(size)})
            loader, sampler = train_loader(images, transforms.train, config, 1)
            log(f"loader: {recipe} recipe, {profile.loader_workers} workers")
            count, epoch, start, seen = 0, 0, None, 0
            while True:  # epochs until the time is up; the first batch of each worker (start-up) is not counted
                sampler.set_epoch(epoch)
                for batch in loader:
                    seen += 1
                    if seen <= profile.loader_workers:
                        start = time.perf_counter()
                        continue
                    count += len(batch[0])  # (images, labels)
                    if time.perf_counter() - start >= profile.loader_seconds:
                        break
                else:
                    epoch += 1
                    continue
                break
            rate = count / (time.perf_counter() - start)
            del loader
            entry: dict[str, Any] = {"recipe": recipe, "augmentation": {k: config[k] for k in ("aa", "reprob", "scale",
                                     "train_interpolation", "color_jitter")}, "input_size": list(size),
                                     "images_per_s": round(rate, 1), "images": count}
            step = _step_rate(train_result, model, profile)
            if step is not None:
                entry["adn_step_images_per_s"] = step
                entry["gpu_wait_share"] = round(max(0.0, 1 - rate / step), 3)  # of each step's time
                if rate < step:
                    entry["advice"] = UINT8_ADVICE
            out["models"][model] = entry
    return out


def _step_rate(train_result: dict[str, Any] | None, model: str, profile: Profile) -> float | None:
    """images/s of the recipe's default ADN step at the default precision, from the train section."""
    try:
        found = train_result["models"][model]
        return found[profile.train_precisions[0]]["images_per_s"][found["default_order"]]
    except (KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- 5. two processes


def ddp_child(args: argparse.Namespace) -> None:
    """Run by ``accelerate launch``: ADN steps on this process's share of a fixed global batch; losses to JSON."""
    from accelerate.state import PartialState

    from adnify.train.optim import build_optimizer
    from adnify.train.recipes import load_recipe, resolve_lr
    from adnify.train.rundir import RunDir
    from adnify.train.session import make_accelerator
    from adnify.train.steps import AdnPair, LossConfig, adn_step, freeze_bn_stats

    profile = _profile(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = None
    if world > 1 and torch.cuda.is_available() and torch.cuda.device_count() < world:
        backend = "gloo"  # NCCL refuses two ranks on one GPU; gloo reduces CUDA tensors too
        PartialState(backend=backend)
    config = load_recipe(TRAIN_MODELS[ONE_MODEL])
    precision = "fp16" if torch.cuda.is_available() and not profile.smoke else "no"
    accelerator = make_accelerator(config, RunDir(args.ddp_child), mixed_precision=precision,
                                   cpu=not torch.cuda.is_available(), log_with=None,
                                   find_unused=config["order"] == "sequential")
    net, size = build_net(profile, ONE_MODEL)
    batch = profile.ddp_global_batch
    optimizer = build_optimizer(net, config, resolve_lr(config, batch))
    model, optimizer = accelerator.prepare(AdnPair(net, share_prefix=config["share_prefix"]), optimizer)
    model.train()
    freeze_bn_stats(model)  # batch statistics of half a batch differ from the whole batch's
    loss = LossConfig.from_config(config, net)
    share, rank = batch // accelerator.num_processes, accelerator.process_index
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(profile.ddp_steps):
        x = torch.randn(batch, *size, generator=g)
        y = torch.randint(0, net.model.num_classes, (batch,), generator=g)
        x, y = (t[rank * share:(rank + 1) * share].to(accelerator.device) for t in (x, y))
        parts = adn_step(accelerator, model, x, y, loss, order=config["order"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(parts.as_floats())
    info = {"losses": losses, "backend": backend or getattr(accelerator.state, "backend", None),
            "device": str(accelerator.device), "precision": precision, "order": config["order"]}
    Path(args.ddp_child, f"{accelerator.num_processes}-{rank}.json").write_text(json.dumps(info))


def section_ddp(profile: Profile, models: list[str], budget: Budget, args: argparse.Namespace) -> dict[str, Any]:
    """Per-step losses of ``accelerate launch`` with 1 and with 2 processes on the same global batch."""
    if ONE_MODEL not in models:
        return {"skipped": f"{ONE_MODEL} not in --models"}
    gpus = torch.cuda.device_count() if profile.device == "cuda" else 0
    out: dict[str, Any] = {"model": ONE_MODEL, "global_batch": profile.ddp_global_batch, "steps": profile.ddp_steps,
                           "gpus_used": min(gpus, 2), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="adnify-ddp-") as tmp:
        for n in (1, 2):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"]
            if n > 1:  # torch.distributed.run; without CUDA the child's accelerator runs gloo on the CPU
                cmd.append("--multi_gpu")
            elif profile.device == "cpu":
                cmd.append("--cpu")
            cmd += [__file__, "--ddp-child", tmp, *(["--smoke"] if profile.smoke else [])]
            log(f"ddp: accelerate launch --num_processes {n}")
            env = {**os.environ, "OMP_NUM_THREADS": "1"} if profile.device == "cpu" else dict(os.environ)
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=max(60, budget.left()) if not profile.smoke else 600)
            out["runs"][n] = {"command": " ".join(cmd[2:]), "seconds": round(time.perf_counter() - start, 1),
                              "returncode": done.returncode}
            if done.returncode != 0:
                raise RuntimeError(f"accelerate launch --num_processes {n} failed: {done.stderr.strip()[-2000:]}")
        one = json.loads(Path(tmp, "1-0.json").read_text())
        two = [json.loads(Path(tmp, f"2-{r}.json").read_text()) for r in range(2)]
    ref = [row["loss"] for row in one["losses"]]
    mean2 = [statistics.fmean(r["losses"][i]["loss"] for r in two) for i in range(len(ref))]  # equal shares
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(mean2, ref)]
    tolerance = 1e-2 if one["precision"] == "fp16" else 1e-4
    out.update(precision=one["precision"], order=one["order"], backend=two[0]["backend"], devices=[r["device"] for r in two],
               losses_one_process=[round(v, 6) for v in ref], losses_two_processes=[round(v, 6) for v in mean2],
               max_relative_difference=max(rel), tolerance=tolerance, same_losses=max(rel) <= tolerance,
               all_finite=all(map(_finite, ref + mean2)))
    return out


# ----------------------------------------------------------------------------- 6. ONNX on the GPU


def section_onnx(profile: Profile, models: list[str], budget: Budget, install_log: str | None) -> dict[str, Any]:
    """The dynamic-depth ONNX file against static exports under onnxruntime's CUDA provider (CPU with --smoke)."""
    import onnxruntime as ort

    from adnify.conversion.plan import format_pattern, parse_pattern
    from dynamic_depth import measure

    if ONE_MODEL not in models:
        return {"skipped": f"{ONE_MODEL} not in --models"}
    available = ort.get_available_providers()
    out: dict[str, Any] = {"onnxruntime": ort.__version__, "available_providers": available}
    if install_log is not None:
        out["install_onnxruntime_gpu"] = install_log
    if profile.device == "cuda":
        if "CUDAExecutionProvider" not in available:
            out["skipped"] = ("onnxruntime's CUDAExecutionProvider is not available: pip install onnxruntime-gpu "
                              "(or rerun with --install-ort-gpu)")
            return out
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    net, size = build_net(profile, ONE_MODEL)
    net = net.eval()
    patterns = [format_pattern(parse_pattern(p, net.num_stages)) for p in profile.onnx_patterns]
    # measure records how the net was built: its norms as converted, and no per-pattern statistics estimated here.
    options = argparse.Namespace(model=ONE_MODEL, batch_size=1, threads=max(1, len(os.sched_getaffinity(0)) // 2),
                                 warmup=3, repeats=profile.onnx_repeats, shared_norms=net.shared_norms,
                                 pattern_statistics=0)
    log(f"onnx: exporting {len(patterns)} static files and the dynamic one, providers {providers[0]}")
    with tempfile.TemporaryDirectory(prefix="adnify-onnx-") as tmp:
        result = measure(net, patterns, Path(tmp), size, options, providers=providers)
    return {**out, "providers": providers, **result}


def _ort_cuda() -> bool:
    """Whether onnxruntime is installed with its CUDA provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


# ----------------------------------------------------------------------------- the run


def run_section(name: str, fn: Callable[[], dict[str, Any]], doc: dict[str, Any], budget: Budget,
                output: Path | None, estimate_s: float | None = None) -> None:
    """Run one section, recording its result or its error, and write the document so far."""
    estimate_s = ESTIMATE_S[name] if estimate_s is None else estimate_s
    if not budget.fits(estimate_s):
        doc["sections"][name] = {"status": "skipped", "note": f"time budget: {budget.left():.0f} s left, "
                                 f"the section needs about {estimate_s:.0f} s"}
    else:
        log(f"section {name} ({budget.elapsed():.0f} s elapsed)")
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON document only
                result = fn()
            status = "skipped" if "skipped" in result else "ok"
            doc["sections"][name] = {"status": status, **result}
        except Exception as err:  # recorded; the other sections still run
            from adnify.errors import first_line

            log(f"section {name} failed: {first_line(err, with_type=True)}")
            doc["sections"][name] = {"status": "error", "error": first_line(err, with_type=True),
                                     "traceback": traceback.format_exc().splitlines()[-25:]}
        doc["sections"][name]["seconds"] = round(time.perf_counter() - start, 1)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    doc["elapsed_s"] = round(budget.elapsed(), 1)
    write(doc, output)


def write(doc: dict[str, Any], output: Path | None) -> None:
    if output is not None:
        from adnify.io.files import atomic_write_text

        atomic_write_text(output, json.dumps(doc, indent=2, default=str) + "\n")


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The headline figures: (section, what, value)."""
    rows: list[tuple[str, str, str]] = []
    s = doc["sections"]
    for name, sec in s.items():
        if sec.get("status") != "ok":
            rows.append((name, sec.get("status", "?"), str(sec.get("error") or sec.get("note") or sec.get("skipped"))[:90]))
    train = s.get("train", {})
    for model, r in train.get("models", {}).items():
        for prec in ("fp16", "bf16", "no"):
            if prec in r:
                p = r[prec]
                ratios = ", ".join(f"{k} {v:.2f}x" for k, v in p["step_ratio"].items())
                mem = ", ".join(f"{k} {v:.2f}x" for k, v in p["memory_ratio"].items())
                finite = "finite" if all(p["all_losses_finite"].values()) else "NOT FINITE"
                rows.append(("train", f"{model} {prec}", f"step {ratios}; memory {mem}; losses {finite}"))
    for model, r in s.get("latency", {}).get("models", {}).items():
        for key, e in r.items():
            if isinstance(e, dict) and "base_super_latency" in e:
                rows.append(("latency", f"{model} {key}", f"base/super {e['base_super_latency']:.3f} vs MACs "
                             f"{e['base_super_macs']:.3f} ({e['layout']}, max gap {e['max_abs_gap']:.3f})"))
    sw = s.get("switch", {})
    if "compiled" in sw:
        c = sw["compiled"]
        rows.append(("switch", "eager", f"set_subnet {sw['set_subnet_us']} us; first call after switch "
                     f"{sw['eager']['first_call_after_switch_ms']} ms, steady {sw['eager']['base_steady_ms']} ms"))
        rows.append(("switch", f"compiled ({sw['backend']})", f"first call super {c['first_call_super_ms']} ms, base "
                     f"{c['first_call_base_ms']} ms; every pattern compiles anew: {c['every_pattern_compiles_anew']}; "
                     f"all {sw['patterns']} patterns ~{c['projected_all_patterns_compile_s']} s"))
    for model, e in s.get("loader", {}).get("models", {}).items():
        share = e.get("gpu_wait_share")
        versus = "" if share is None else f" vs ADN step {e['adn_step_images_per_s']} images/s: GPU waits {share:.0%}"
        rows.append(("loader", f"{e['recipe']} recipe", f"{e['images_per_s']} images/s{versus}"))
    ddp = s.get("ddp", {})
    if "same_losses" in ddp:
        rows.append(("ddp", f"2 processes ({ddp['backend'] or 'default'})", f"same losses: {ddp['same_losses']} "
                     f"(max relative difference {ddp['max_relative_difference']:.1e})"))
    onnx = s.get("onnx", {})
    if "ratio" in onnx:
        rows.append(("onnx", onnx["providers"][0], ", ".join(f"{p} {v:.3f}" for p, v in onnx["ratio"].items())))
    return rows


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"device check: {doc['device']['name']} ({doc['elapsed_s']} s)")
    for col in ("section", "what", "measured"):
        table.add_column(col)
    for row in summary_rows(doc):
        table.add_row(*row)
    Console(stderr=True, width=160).print(table)


def _profile(args: argparse.Namespace) -> Profile:
    profile = Profile.smoke_run() if args.smoke else Profile(smoke=False, device="cuda")
    if args.batch_size:
        profile = replace(profile, train_batch=args.batch_size)
    return profile


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="python benchmarks/device_check.py --output device-check.json")
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU with tiny shapes")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--models", default=",".join(KNOWN_MODELS), help=f"comma list of {', '.join(KNOWN_MODELS)}")
    parser.add_argument("--output", help="write the JSON here after every section (default: device-check-<device>.json)")
    parser.add_argument("--budget-s", type=float, default=460.0, help="skip sections that would not fit (GPU run)")
    parser.add_argument("--batch-size", type=int, help="training batch (default 64; 4 with --smoke)")
    parser.add_argument("--data", help="image folder for the loader section (default: shared/data/imagenet-sample)")
    parser.add_argument("--install-ort-gpu", action="store_true", help="pip install onnxruntime-gpu first")
    parser.add_argument("--ddp-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step.py, dynamic_depth.py
    if args.ddp_child:
        ddp_child(args)
        return 0
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in KNOWN_MODELS]
    if unknown:
        return fail(f"unknown model {unknown[0]!r}: known models are {', '.join(KNOWN_MODELS)}")
    sections = [s for s in args.sections.split(",") if s]
    if any(s not in SECTIONS for s in sections):
        bad = next(s for s in sections if s not in SECTIONS)
        return fail(f"unknown section {bad!r}: known sections are {', '.join(SECTIONS)}")
    if not args.smoke and not torch.cuda.is_available():
        return fail("no CUDA GPU here: this check measures a GPU; run it where one is, or pass --smoke for the "
                    "short CPU run that tests the script")
    profile = _profile(args)
    if profile.smoke:  # tiny ops on a busy CPU: more threads only wait on each other (seconds instead of ms)
        torch.set_num_threads(1)
    budget = Budget(args.budget_s, profile.smoke)
    doc: dict[str, Any] = {"schema": "adnify-device-check/1", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "command": " ".join(sys.argv), "device": device_info(profile), "profile": asdict(profile),
                           "sections": {}}
    output = Path(args.output or f"device-check-{slug(doc['device']['name'])}.json")
    install_log = None
    if args.install_ort_gpu and "onnx" in sections:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "onnxruntime-gpu"], capture_output=True, text=True)
        install_log = "installed" if done.returncode == 0 else f"failed: {(done.stderr or done.stdout).strip()[-300:]}"
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "train": lambda: section_train(profile, models, budget),
        "latency": lambda: section_latency(profile, models, budget),
        "switch": lambda: section_switch(profile, models, budget),
        "loader": lambda: section_loader(profile, models, budget, args.data, doc["sections"].get("train")),
        "ddp": lambda: section_ddp(profile, models, budget, args),
        "onnx": lambda: section_onnx(profile, models, budget, install_log),
    }
    estimates = {"onnx": 10.0} if profile.device == "cuda" and not _ort_cuda() else {}  # only says why it skips
    for name in SECTIONS:
        if name in sections:
            run_section(name, runners[name], doc, budget, output, estimates.get(name))
    print(json.dumps(doc, indent=2, default=str))
    print_table(doc)
    log(f"written to {output}")
    return 1 if any(sec.get("status") == "error" for sec in doc["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
