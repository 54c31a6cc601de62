"""How much the prefix tree saves when estimating each sub-network's BatchNorm statistics.

:func:`adnify.train.estimate_pattern_statistics` runs every pattern of a batch at once as a prefix tree
(patterns that share a prefix share its stages' work); a model the tree cannot cut falls back to one pass
per pattern. This script times both on the same model and batches, alternating them ``--repeats`` times
so that machine noise hits both alike, checks that they estimate the same numbers, and prints the ratio:

    python benchmarks/statistics_speed.py                                  # Lite0 at 128 px, 32 patterns
    python benchmarks/statistics_speed.py --model resnet18 --size 64 --images 256

The weights are random (the cost does not depend on them); the images are random too, as the statistics'
values do not matter here, only that both ways agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="a timm model with BatchNorm")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (default 128)")
    parser.add_argument("--images", type=int, default=128, help="images per estimate (default 128)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way, alternated (default 3)")
    parser.add_argument("--shared-norms", action=argparse.BooleanOptionalAction, default=True,
                        help="the convnet recipes' norms (default) or the paper's skip-aware copies")
    args = parser.parse_args()

    import adnify
    from adnify.statistics import batchnorms, statistics_levels
    from adnify.train.calibrate import _sets_by_pattern, _sets_by_tree

    torch.manual_seed(0)
    net = adnify.convert(args.model, shared_norms=args.shared_norms, num_classes=10,
                         input_size=(3, args.size, args.size)).eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, generator=g), torch.zeros(args.batch))
               for _ in range(-(-args.images // args.batch))]
    norms = batchnorms(net.model)
    levels = statistics_levels(net, norms)
    patterns = net.patterns()
    ways = {"prefix tree": _sets_by_tree, "pass per pattern": _sets_by_pattern}
    extra = {"pass per pattern": {"on_pattern": None}}
    times: dict[str, list[float]] = {name: [] for name in ways}
    found: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, way in ways.items():
            began = time.perf_counter()
            found[name], _ = way(net, norms, levels, patterns, batches, max_images=args.images, device="cpu",
                                 on_batch=None, **extra.get(name, {}))
            times[name].append(time.perf_counter() - began)
    tree, passes = found["prefix tree"], found["pass per pattern"]
    equal = all(tree[n].keys() == passes[n].keys() and all(
        torch.equal(a, b) for p in tree[n] for a, b in zip(tree[n][p], passes[n][p])) for n in tree)
    print(f"{args.model} at {args.size} px, {len(patterns)} patterns, {args.images} images, "
          f"{torch.get_num_threads()} thread(s), {'shared norms' if args.shared_norms else 'skip-aware copies'}")
    for name, ts in times.items():
        print(f"  {name:17s} median {statistics.median(ts):7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ts)})")
    ratio = statistics.median(times["pass per pattern"]) / statistics.median(times["prefix tree"])
    print(f"  the prefix tree is {ratio:.2f}x as fast; the statistics are {'identical' if equal else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
