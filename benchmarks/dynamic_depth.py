"""Latency of the dynamic-depth ONNX file against each pattern's static export, in onnxruntime.

For every pattern, the one dynamic file (``skip`` as an input, ``If`` branches) and that pattern's
static export (skipped blocks removed) run side by side, interleaved in a shuffled order every
round so that load changes hit both alike; the ratio of medians is printed per pattern (goal:
within 1.10x), and the file sizes.

    python benchmarks/dynamic_depth.py --model resnet50
    python benchmarks/dynamic_depth.py --model efficientnet_b0 --patterns super,base,TFTFT --json out.json
    python benchmarks/dynamic_depth.py --model resnet50 --shared-norms --pattern-statistics 64   # as the recipes train

``--pattern-statistics N`` gives the model each sub-network's own BatchNorm statistics (estimated on N
random images: only their cost is measured), which the dynamic file selects at run time from the
``skip`` input, while each static export holds its pattern's as constants.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    import torch

    import adnify
    from adnify.conversion.plan import format_pattern

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--patterns", default="all", help="all, or comma-separated (super, base, TTFF...)")
    parser.add_argument("--input-size", default="3,224,224")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--shared-norms", action="store_true", help="one norm set for every pattern (the recipes')")
    parser.add_argument("--pattern-statistics", type=int, default=0, metavar="N",
                        help="give every sub-network its own BatchNorm statistics, from N random images")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    size = tuple(int(s) for s in args.input_size.split(","))
    torch.manual_seed(0)
    net = adnify.convert(args.model, input_size=size, shared_norms=args.shared_norms).eval()
    if args.pattern_statistics:
        from adnify.train.calibrate import estimate_pattern_statistics

        images = [(torch.randn(8, *size), torch.zeros(8)) for _ in range(-(-args.pattern_statistics // 8))]
        net.set_pattern_statistics(estimate_pattern_statistics(net, images, max_images=args.pattern_statistics))
    patterns = net.patterns() if args.patterns == "all" else [
        format_pattern(adnify.parse_pattern(p, net.num_stages)) for p in args.patterns.split(",")]
    with tempfile.TemporaryDirectory(prefix="adnify-dynamic-") as tmp:  # the static files take ~1.4 GB for ResNet-50
        result = measure(net, patterns, Path(tmp), size, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def measure(net: Any, patterns: list[str], folder: Path, size: tuple[int, ...], args: argparse.Namespace,
            providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",)) -> dict[str, Any]:
    """Export ``patterns`` and the dynamic file into ``folder``; time both side by side under ``providers``
    (``benchmarks/device_check.py`` passes onnxruntime's CUDA provider)."""
    import onnxruntime as ort

    from adnify.export import export_dynamic
    from adnify.export import export_file

    began = time.perf_counter()
    dynamic_file = export_dynamic(net, folder / "dynamic.onnx", format="onnx")
    static_files = {p: export_file(net, p, folder / f"{p}.onnx", format="onnx") for p in patterns}
    print(f"exported {len(patterns)} static files and the dynamic one in {time.perf_counter() - began:.0f} s",
          flush=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    dynamic = ort.InferenceSession(str(dynamic_file), options, providers=list(providers))
    static = {p: ort.InferenceSession(str(f), options, providers=list(providers))
              for p, f in static_files.items()}
    x = np.random.default_rng(0).standard_normal((args.batch_size, *size), dtype=np.float32)
    runs = {("dynamic", p): (lambda p=p: dynamic.run(None, {"input": x, "skip": np.array([c == "T" for c in p])}))
            for p in patterns}
    runs.update({("static", p): (lambda p=p: static[p].run(None, {"input": x})) for p in patterns})
    for p in patterns:  # same numbers from both files
        np.testing.assert_allclose(runs[("dynamic", p)]()[0], runs[("static", p)]()[0], rtol=1e-3, atol=1e-4)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    rng = random.Random(0)
    for round_ in range(args.warmup + args.repeats):
        order = list(runs)
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            runs[key]()
            if round_ >= args.warmup:
                times[key].append(time.perf_counter() - start)
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    ratio = {p: median[("dynamic", p)] / median[("static", p)] for p in patterns}
    result = {
        "model": args.model, "shared_norms": args.shared_norms, "pattern_statistics": args.pattern_statistics,
        "input_size": list(size), "batch_size": args.batch_size, "threads": args.threads,
        "repeats": args.repeats, "session_providers": dynamic.get_providers(),  # onnxruntime falls back silently
        "dynamic_ms": {p: median[("dynamic", p)] for p in patterns},
        "static_ms": {p: median[("static", p)] for p in patterns},
        "ratio": ratio, "ratio_median": statistics.median(ratio.values()), "ratio_max": max(ratio.values()),
        "dynamic_file_mb": dynamic_file.stat().st_size / 1e6,
        "static_file_mb": {p: f.stat().st_size / 1e6 for p, f in static_files.items()},
    }
    for p in patterns:
        print(f"{p}  dynamic {median[('dynamic', p)]:7.2f} ms  static {median[('static', p)]:7.2f} ms  "
              f"ratio {ratio[p]:.3f}")
    print(f"ratio median {result['ratio_median']:.3f}, max {result['ratio_max']:.3f}; dynamic file "
          f"{result['dynamic_file_mb']:.1f} MB, super-net static file {result['static_file_mb'].get('F' * net.num_stages, 0):.1f} MB")
    return result


if __name__ == "__main__":
    main()
