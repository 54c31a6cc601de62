"""How much ``adnify report`` costs, against the obvious baselines.

(tree) For resnet50, tf_efficientnet_lite0 and vit_small_patch16_224 (random weights, one batch of
    random images): the evaluation pass of all 2^N sub-networks over the pass of the super-net alone,
    measured, beside the MACs-ideal ratio of the pattern tree (MACs of the tree walk / the super-net's)
    and the MACs ratio of one pass per pattern (what evaluation cost before the tree). Target: measured
    within 1.15x of the MACs-ideal. Also the evaluation pass's images/s (super-net alone) beside the
    bare timm model's forward at the same batch and layout.
(layout) The evaluation of all sub-networks with the images in NCHW or channels-last, in forward passes
    of the whole batch, 4 or 16 images: the evidence for :func:`adnify.report.layout.fastest_layout`.
(macs) A ``--patterns all --metrics params,macs`` report of resnet50 (16 sub-networks) against one
    MACs count of the plain timm model, and against counting every static export in turn.
    Target: under 3x one count.
(accuracy) The whole ``adnify report`` process for all 32 Lite0 sub-networks on the images of
    ../shared/data/imagenet-sample (``--limit N``: the first N, linked into a temporary folder) against
    the same process for the super-net alone, one torch thread. Target: at most 8x.

Run::

    python benchmarks/report_speed.py                         # (tree), one thread
    python benchmarks/report_speed.py --models resnet50 --batch-size 8 --repeats 2
    python benchmarks/report_speed.py --models tf_efficientnet_lite0 --per-pattern   # also as before the tree
    python benchmarks/report_speed.py --part layout --repeats 1
    python benchmarks/report_speed.py --part accuracy --limit 48
    python benchmarks/report_speed.py --part macs

Timings are medians over rounds in which every variant runs once, in turn; CPU time
(``time.process_time``) is printed beside wall time because on a shared machine it is much less
disturbed by other jobs. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import adnify
from adnify.conversion.plan import parse_pattern
from adnify.report import build_report
from adnify.report.costs import count_macs, pattern_costs
from adnify.report.evaluate import evaluate_patterns, make_accelerator
from adnify.report.layout import CPU_FORWARD_BATCH, Layout, fastest_layout
from adnify.report.pattern_tree import PatternTree

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-sample"
MODELS = ("resnet50", "tf_efficientnet_lite0", "vit_small_patch16_224")


def interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each callable, called in turn ``repeats`` times after one untimed round."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def tree_part(models: list[str], batch_size: int, repeats: int, per_pattern: bool) -> None:
    print(f"(tree) evaluation pass of all sub-networks / of the super-net alone; {batch_size} random images at the "
          f"model's input size, median of {repeats} interleaved rounds, {torch.get_num_threads()} thread(s)")
    header = (f"    {'model':24s} {'N':>2s} {'one pass each (MACs)':>20s} {'tree (MACs)':>11s} {'measured CPU':>12s} "
              f"{'(wall)':>7s} {'measured/ideal':>14s} | {'eval img/s':>10s} {'bare img/s':>10s}  layout")
    print(header)
    accelerator = make_accelerator("cpu")
    for name in models:
        torch.manual_seed(0)
        net = adnify.convert(name).eval()
        bare = timm.create_model(name).eval()
        layout = fastest_layout(net, "cpu")
        x = torch.randn(batch_size, *net.input_size())
        batch = [(x, torch.zeros(batch_size, dtype=torch.long))]
        one = torch.randn(1, *net.input_size())
        tree = PatternTree.build(net)
        flags = [parse_pattern(p, net.num_stages) for p in net.patterns()]
        super_flops = _flops(lambda: net(one))
        ideal = _flops(lambda: tree.run(one, flags)) / super_flops
        separate = sum(c.macs for c in pattern_costs(net, net.patterns())) / (super_flops / 2)

        def evaluate(patterns: list[str], tree: bool = True) -> None:
            evaluate_patterns(net, patterns, batch, accelerator=accelerator, layout=layout, progress=False, tree=tree)

        def forward_bare() -> None:
            with torch.no_grad():
                for chunk in layout.split(x):
                    bare(layout.apply(chunk))

        fns = {"super": lambda: evaluate(["super"]), "all": lambda: evaluate(net.patterns()), "bare": forward_bare}
        if per_pattern:
            fns["each"] = lambda: evaluate(net.patterns(), tree=False)
        times = interleaved(fns, repeats)
        (w1, c1), (wa, ca), (wb, cb) = times["super"], times["all"], times["bare"]
        each = f"   one pass each, measured: {times['each'][1] / c1:.2f}x CPU" if per_pattern else ""
        print(f"    {name:24s} {net.num_stages:2d} {separate:19.2f}x {ideal:10.2f}x {ca / c1:11.2f}x {wa / w1:6.2f}x "
              f"{ca / c1 / ideal:13.3f}x | {batch_size / c1:10.1f} {batch_size / cb:10.1f}  {layout.describe()}{each}",
              flush=True)
    print("    (target: measured/ideal <= 1.15; img/s from CPU time: the evaluation pass of the super-net alone and "
          "the bare timm model's forward, same images, layout and passes)")


def layout_part(models: list[str], batch_size: int, repeats: int) -> None:
    """Evaluation of all patterns in each memory format and forward batch: the evidence for fastest_layout."""
    variants = {f"{fmt}, {'all' if fb is None else fb} a pass": Layout(fmt, fb)
                for fmt in ("contiguous", "channels_last") for fb in (None, 4, CPU_FORWARD_BATCH)}
    print(f"(layout) all sub-networks through the pattern tree, {batch_size} random images, sub-network images/s "
          f"(CPU time), median of {repeats} interleaved rounds, {torch.get_num_threads()} thread(s)")
    print(f"    {'model':24s} " + " ".join(f"{k:>22s}" for k in variants) + "   default")
    accelerator = make_accelerator("cpu")
    for name in models:
        net = adnify.convert(name).eval()
        batch = [(torch.randn(batch_size, *net.input_size()), torch.zeros(batch_size, dtype=torch.long))]
        times = interleaved({k: lambda layout=layout: evaluate_patterns(
            net, net.patterns(), batch, accelerator=accelerator, layout=layout, progress=False)
            for k, layout in variants.items()}, repeats)
        rates = [batch_size * len(net.patterns()) / times[k][1] for k in variants]
        print(f"    {name:24s} " + " ".join(f"{r:22.1f}" for r in rates) + f"   {fastest_layout(net, 'cpu').describe()}",
              flush=True)


def macs_part(repeats: int) -> None:
    net = adnify.convert("resnet50")
    plain = timm.create_model("resnet50").eval()
    x = torch.randn(1, 3, 224, 224)
    times = interleaved({
        "one MACs count of the plain model": lambda: count_macs(plain, x),
        "adnify report --patterns all": lambda: build_report(net, "all", metrics="params,macs", progress=False),
    }, repeats)
    times.update(interleaved({"counting each static export in turn":
                              lambda: [count_macs(net.export(p), x) for p in net.patterns()]}, 1))
    one_wall, one_cpu = times["one MACs count of the plain model"]
    print(f"(macs) resnet50, 16 sub-networks, params + MACs; median of {repeats} interleaved runs, "
          f"{torch.get_num_threads()} thread(s)")
    for name, (wall, cpu) in times.items():
        print(f"    {name:38s} wall {wall:6.2f} s = {wall / one_wall:5.2f}x   CPU {cpu:6.2f} s = {cpu / one_cpu:5.2f}x")
    print("    (target: the report under 3x one count)")


def _process(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``adnify`` process on one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adnify", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def accuracy_part(limit: int | None, repeats: int) -> None:
    if not DATA.is_dir():
        print(f"(accuracy) skipped: {DATA} not found")
        return
    images = sorted(p for p in DATA.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:limit]
    with tempfile.TemporaryDirectory() as folder:  # links, not copies, to the images
        for p in images:
            (Path(folder) / p.name).symlink_to(p.resolve())
        common = ["report", "tf_efficientnet_lite0", "--metrics", "acc", "--data", folder, "--labels", "none",
                  "--agreement", "--device", "cpu", "--format", "json"]
        runs: dict[str, list[tuple[float, float]]] = {"super": [], "all": []}
        for _ in range(repeats):
            for which in runs:
                runs[which].append(_process([*common, "--patterns", which]))
    (w1, c1), (wa, ca) = ([statistics.median(v[i] for v in runs[k]) for i in (0, 1)] for k in ("super", "all"))
    print(f"(accuracy) the whole `adnify report` process, tf_efficientnet_lite0, {len(images)} images of "
          f"imagenet-sample, one torch thread, median of {repeats}")
    print(f"    --patterns super   wall {w1:7.1f} s   CPU {c1:7.1f} s")
    print(f"    --patterns all     wall {wa:7.1f} s   CPU {ca:7.1f} s")
    print(f"    all / super        wall {wa / w1:7.2f}x  CPU {ca / c1:7.2f}x   (target: <= 8x; 20.6x before the tree)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("tree", "layout", "macs", "accuracy", "all"), default="tree")
    parser.add_argument("--models", default=",".join(MODELS), help="parts (tree), (layout): comma-separated timm names")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="parts (tree), (layout): images per evaluated batch (default 16, 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--per-pattern", action="store_true",
                        help="part (tree): also time one pass per pattern (evaluation before the tree; slow)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of parts (tree) and (macs)")
    parser.add_argument("--limit", type=int, default=None, help="part (accuracy): the first N images (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.part in ("tree", "all"):
        tree_part(models, args.batch_size or 16, args.repeats, args.per_pattern)
    if args.part in ("layout", "all"):
        layout_part(models, args.batch_size or 32, args.repeats)
    if args.part in ("macs", "all"):
        macs_part(args.repeats)
    if args.part in ("accuracy", "all"):
        accuracy_part(args.limit, args.repeats)


if __name__ == "__main__":
    main()
