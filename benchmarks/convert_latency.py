"""What conversion costs at run time: the issue-2 benchmark targets, as ratios measured in one run.

Four measurements, each printed as a row with its target and PASS/MISS:

a. overhead   converted super-net latency / original timm model latency (eager, CPU, batches 1 and 16),
              both timed interleaved by :func:`adnify.report.latency.measure_interleaved`; target <= 1.02.
              An A/A row (the original against an identical deep copy of itself) shows the noise floor.
b. switch     time of ``net.set_subnet(p)`` alternating between two different patterns; target < 50 us.
c. speed-up   base/super latency ratio against base/super MACs ratio (batch 1); target: within 0.05.
d. convert    ``adnify.convert(module)`` time, model creation excluded; target < 2 s. One warm-up
              conversion of another model runs first (one-off library initialisation); the first
              conversion of each model and the median of further ones ("warm") are both reported.

Ratios are medians of per-round ratios: every round runs each candidate once, in shuffled order,
so a background job slows both sides of a ratio alike. MACs are FLOPs / 2 (timm's "GFLOPs").

On a shared, busy machine wall-clock time measures the other jobs more than the model (a load
average above the CPU count gives ratio IQRs of +-30%). ``--clock cpu`` then counts the CPU time of
the timing thread (``time.thread_time``) with one intra-op thread, so time spent descheduled is
not counted; cache sharing still adds some noise. The A/A rows say how far to trust a figure.

Usage::

    python benchmarks/convert_latency.py                      # everything, a few minutes on 2 cores
    python benchmarks/convert_latency.py --only switch convert
    python benchmarks/convert_latency.py --threads 1 --repeats 40 --json results.json
    python benchmarks/convert_latency.py --clock cpu          # on a busy machine
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import timm
import torch

import adnify
from adnify.conversion.analysis import default_input_size
from adnify.report import latency
from adnify.report.costs import pattern_costs
from adnify.report.latency import measure_interleaved

SECTIONS = ("overhead", "switch", "speedup", "convert")
OVERHEAD_MODELS = ("resnet50", "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "mobilenetv2_100")
SPEEDUP_MODELS = ("resnet50", "mobilenetv2_100", "vit_base_patch16_224")
CONVERT_MODELS = ("resnet50", "swin_tiny_patch4_window7_224")
CONVERT_WARMUP_MODEL = "resnet18"
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter  # set from --clock in main()


@dataclass
class Row:
    section: str
    model: str
    setting: str
    value: float
    unit: str
    detail: str
    target: str
    ok: bool | None  # None: informational, no target

    @property
    def verdict(self) -> str:
        return "-" if self.ok is None else ("PASS" if self.ok else "MISS")


def paired_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range of per-round ratios ``num[i] / den[i]``."""
    ratios = [a / b for a, b in zip(num, den)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


def _eval(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval().requires_grad_(False)


def bench_overhead(args: argparse.Namespace) -> list[Row]:
    rows = []
    for name in args.overhead_models:
        original = _eval(timm.create_model(name))
        twin = copy.deepcopy(original)  # A/A control: the same model twice
        net = _eval(adnify.convert(copy.deepcopy(original)))
        size = default_input_size(original)
        for batch in args.batch_sizes:
            x = torch.randn(batch, *size)
            with torch.inference_mode():
                exact = (net(x) - original(x)).abs().max().item()
            repeats = args.repeats if batch == 1 else max(5, args.repeats // 3)
            fns = {"original": lambda: original(x), "copy": lambda: twin(x), "converted": lambda: net(x)}
            t = measure_interleaved(fns, warmup=args.warmup if batch == 1 else min(args.warmup, 2), repeats=repeats)
            orig = t["original"].samples_ms
            r, q1, q3 = paired_ratio(t["converted"].samples_ms, orig)
            aa, aq1, aq3 = paired_ratio(t["copy"].samples_ms, orig)
            detail = (f"{t['converted'].median_ms:.2f} / {t['original'].median_ms:.2f} ms, IQR {q1:.3f}-{q3:.3f}, "
                      f"n={repeats}, max|diff|={exact:.1e}")
            rows.append(Row("overhead", name, f"batch {batch}", r, "x", detail, "<= 1.02", r <= 1.02))
            rows.append(Row("overhead", name, f"batch {batch} A/A", aa, "x",
                            f"noise floor: original copy / original, IQR {aq1:.3f}-{aq3:.3f}", "", None))
            print(f"  overhead {name} b{batch}: {r:.3f} (A/A {aa:.3f})", file=sys.stderr, flush=True)
        gc.collect()
    return rows


def bench_switch(args: argparse.Namespace) -> list[Row]:
    rows = []
    for name in args.switch_models:
        net = adnify.convert(timm.create_model(name))
        a, b = net.patterns()[0], net.patterns()[-1]  # super-net and base-net: every flag flips
        n = args.switch_iterations
        for _ in range(1000):
            net.set_subnet(a)
            net.set_subnet(b)
        best = float("inf")
        for _ in range(5):  # best of 5 batches of n switches: the machine's noise only adds time
            start = clock()
            for _ in range(n // 2):
                net.set_subnet(a)
                net.set_subnet(b)
            best = min(best, (clock() - start) / (2 * (n // 2)))
        us = best * 1e6
        flags = sum(len(s.skippable) + len(s.norms) for s in net.plan.stages)
        rows.append(Row("switch", name, f"{a}<->{b}", us, "us",
                        f"{flags} flags flipped per switch, best of 5 x {n} switches", "< 50 us", us < 50))
        print(f"  switch {name}: {us:.2f} us", file=sys.stderr, flush=True)
    return rows


def bench_speedup(args: argparse.Namespace) -> list[Row]:
    rows = []
    for name in args.speedup_models:
        net = _eval(adnify.convert(timm.create_model(name)))
        costs = {c.pattern: c for c in pattern_costs(net, ["super", "base"])}
        sup, base = net.patterns()[0], net.patterns()[-1]
        mac_ratio = costs[base].macs / costs[sup].macs
        x = torch.randn(1, *default_input_size(net.model))
        fns = {"super": lambda: net(x, skip=sup), "base": lambda: net(x, skip=base)}
        t = measure_interleaved(fns, warmup=args.warmup, repeats=args.repeats)
        lat_ratio, q1, q3 = paired_ratio(t["base"].samples_ms, t["super"].samples_ms)
        gap = lat_ratio - mac_ratio
        detail = (f"latency {t['base'].median_ms:.2f} / {t['super'].median_ms:.2f} ms (IQR {q1:.3f}-{q3:.3f}); "
                  f"MACs {costs[base].gmacs:.2f} / {costs[sup].gmacs:.2f} G = {mac_ratio:.3f}; gap {gap:+.3f}")
        rows.append(Row("speedup", name, "batch 1 base/super", lat_ratio, "x", detail,
                        "|lat-MACs| <= 0.05", abs(gap) <= 0.05))
        print(f"  speedup {name}: latency {lat_ratio:.3f} vs MACs {mac_ratio:.3f}", file=sys.stderr, flush=True)
        gc.collect()
    return rows


def _time_convert(name: str) -> float:
    module = timm.create_model(name)
    gc.collect()
    start = clock()
    adnify.convert(module)
    return clock() - start


def bench_convert(args: argparse.Namespace) -> list[Row]:
    rows = []
    cold = _time_convert(CONVERT_WARMUP_MODEL)
    rows.append(Row("convert", CONVERT_WARMUP_MODEL, "cold, first in process", cold, "s",
                    "warm-up conversion: includes one-off torch.fx / timm initialisation", "", None))
    for name in args.convert_models:
        first = _time_convert(name)
        warm = [_time_convert(name) for _ in range(args.convert_repeats)]
        med = statistics.median(warm)
        rows.append(Row("convert", name, "first", first, "s", "first conversion of this model (after the warm-up)",
                        "< 2 s", first < 2))
        rows.append(Row("convert", name, "warm median", med, "s",
                        f"{len(warm)} runs: {', '.join(f'{w:.2f}' for w in warm)}", "< 2 s", med < 2))
        rows.append(Row("convert", name, "warm min", min(warm), "s", "least disturbed run", "< 2 s", min(warm) < 2))
        print(f"  convert {name}: first {first:.2f} s, warm {med:.2f} s", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("section", "model", "setting", "value", "target", "result", "detail")
    cells = [(r.section, r.model, r.setting, f"{r.value:.3f} {r.unit}" if r.unit != "us" else f"{r.value:.2f} us",
              r.target, r.verdict, r.detail) for r in rows]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header) - 1)]
    line = lambda c: "  ".join(str(v).ljust(w) for v, w in zip(c, widths)) + "  " + c[-1]  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    for c in cells:
        print(line(c))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's; 1 with --clock cpu)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall: time.perf_counter; cpu: CPU time of the timing thread, one intra-op thread")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per candidate")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds at batch 1 (a third of it, and 2 warm-up calls at most, at larger batches)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--overhead-models", nargs="+", default=list(OVERHEAD_MODELS))
    p.add_argument("--speedup-models", nargs="+", default=list(SPEEDUP_MODELS))
    p.add_argument("--switch-models", nargs="+", default=["resnet50", "vit_base_patch16_224"])
    p.add_argument("--switch-iterations", type=int, default=20000)
    p.add_argument("--convert-models", nargs="+", default=list(CONVERT_MODELS))
    p.add_argument("--convert-repeats", type=int, default=5, help="warm conversions per model")
    p.add_argument("--json", metavar="FILE", help="also write the rows and the context as JSON")
    args = p.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.clock == "cpu":
        if args.threads not in (None, 1):
            p.error("--clock cpu counts one thread's CPU time: it needs --threads 1")
        args.threads = 1
        latency._clock = clock  # measure_interleaved reads its clock from this module attribute
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    context = {"torch": torch.__version__, "timm": timm.__version__, "adnify": adnify.__version__,
               "threads": torch.get_num_threads(), "clock": args.clock, "warmup": args.warmup, "repeats": args.repeats,
               "cpus": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2)}
    print("context: " + ", ".join(f"{k}={v}" for k, v in context.items()), flush=True)
    rows: list[Row] = []
    # conversion first: its "first call" figure must not be warmed by the other sections
    for section, fn in (("convert", bench_convert), ("switch", bench_switch), ("overhead", bench_overhead),
                        ("speedup", bench_speedup)):
        if section in args.only:
            rows += fn(args)
    load = os.getloadavg()[0]
    print(f"load average after the run: {load:.2f} (1 min) on {os.cpu_count()} CPUs")
    if args.clock == "wall" and max(load, context["loadavg_1min"]) > (os.cpu_count() or 1):
        print("warning: the machine was busy; wall-clock ratios are unreliable (see the A/A rows): try --clock cpu")
    print_table(rows)
    misses = [r for r in rows if r.ok is False]
    print(f"\n{sum(r.ok is True for r in rows)} PASS, {len(misses)} MISS")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"context": context, "rows": [asdict(r) | {"verdict": r.verdict} for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
