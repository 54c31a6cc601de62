"""Why do the sub-networks between the ends score below the base-net? The skip-aware norms' statistics.

A skip-aware norm copy of a stage is used whenever that stage's skippable half is skipped. Trained with
the base-net alone, its BatchNorm statistics are estimated on the features of the base-net, where every
earlier stage is skipped too. In ``FFFT`` it reads the output of three full stages instead. This script
scores a trained ADN run three ways, on the same test images:

- ``trained``: as the training left it;
- ``per_pattern``: each pattern with the copies' statistics re-estimated under that pattern alone (an
  oracle: one set of statistics per sub-network; it tells whether the statistics are the cause);
- ``mixture``: one set of statistics re-estimated under every pattern that uses a copy, in turn (what
  a deployed network can keep: ``calibrate_skip_norms(..., patterns=...)``).

``--paired`` also gives, per pattern as trained, the standard error of its top-1 minus the base-net's on
these images (paired: both score the same images), and the worst of the differences that chance alone
would give if every sub-network were as good as the base-net (a normal approximation, 10,000 draws).

    python benchmarks/middle_norms.py RUN_DIR --data runs/c31/data -o middle-norms.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

import adnify
from adnify.io.data import load_image_data
from adnify.io.files import atomic_write_text
from adnify.io.images import make_loader
from adnify.report.evaluate import eval_loader, eval_transform, evaluate_patterns
from adnify.train.calibrate import calibrate_skip_norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a trained ADN run (or a saved model folder)")
    parser.add_argument("--data", required=True, help="the data set the run was trained on (train and test splits)")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000, help="training images per re-estimation")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--paired", action="store_true", help="only the paired standard errors against the base-net")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = adnify.load(str(args.run)).eval()
    size = (3, args.input_size, args.input_size)
    data = load_image_data(args.data, split="test", label_column=args.label_column)
    test = eval_loader(net, data, batch_size=256, num_workers=2, input_size=size)
    # A seeded random sample: data sets are often stored sorted by class, and the first rows are one class.
    picked = np.sort(np.random.default_rng(0).permutation(len(data.train))[: args.images])
    calib = make_loader(data.train.select(picked), data,
                        eval_transform(net, size), batch_size=128, shuffle=True, num_workers=2, seed=0)
    patterns = net.patterns()
    if args.paired:
        paired(net, patterns, test, args.output)
        return
    users = [p for p in patterns if "T" in p]  # the patterns that use at least one copy
    acc = {"trained": {p: r.acc1 for p, r in evaluate_patterns(net, patterns, test, progress=False).items()}}
    acc["per_pattern"] = {}
    for p in patterns:
        if p not in users:
            acc["per_pattern"][p] = acc["trained"][p]
            continue
        one = copy.deepcopy(net)
        calibrate_skip_norms(one, calib, max_images=args.images, patterns=[p])
        acc["per_pattern"][p] = evaluate_patterns(one.eval(), [p], test, progress=False)[p].acc1
        print(f"{p}: trained {acc['trained'][p]:.2f}, own statistics {acc['per_pattern'][p]:.2f}", file=sys.stderr)
    mixed = copy.deepcopy(net)
    calibrate_skip_norms(mixed, calib, max_images=args.images * len(users) // 4, patterns=users)
    acc["mixture"] = {p: r.acc1 for p, r in evaluate_patterns(mixed.eval(), patterns, test, progress=False).items()}
    print("| pattern | trained | own statistics | mixture |\n| --- | ---: | ---: | ---: |")
    for p in patterns:
        print(f"| {p} | {acc['trained'][p]:.2f} | {acc['per_pattern'][p]:.2f} | {acc['mixture'][p]:.2f} |")
    if args.output:
        atomic_write_text(args.output, json.dumps({"run": str(args.run), "top1": acc}, indent=2) + "\n")


def paired(net: torch.nn.Module, patterns: list[str], test, output: Path | None) -> None:
    """Per-image correctness of every pattern; the paired standard error of each against the base-net."""
    correct = {p: [] for p in patterns}
    with torch.no_grad():
        for images, labels in test:
            for p in patterns:
                correct[p].append((net(images, skip=p).argmax(1) == labels).float())
    hits = {p: torch.cat(v) for p, v in correct.items()}
    base = hits["T" * net.num_stages]
    n = base.numel()
    rows = {}
    for p in patterns:
        diff = hits[p] - base
        rows[p] = {"top1": float(hits[p].mean() * 100), "minus_base": float(diff.mean() * 100),
                   "paired_se": float(diff.std() / n ** 0.5 * 100)}
    middle = [p for p in patterns if len(set(p)) == 2]
    se = torch.tensor([rows[p]["paired_se"] for p in middle])
    # The worst of the middle's differences if each were pure noise of its own standard error (independent draws
    # overstate it a little: the differences share the base-net's errors).
    chance = (torch.randn(10000, len(middle), generator=torch.Generator().manual_seed(0)) * se).min(1).values
    summary = {"images": n, "median_paired_se": float(se.median()), "chance_worst_median": float(chance.median()),
               "chance_worst_p90": float(chance.quantile(0.1))}
    print("| pattern | top-1 | minus base | paired s.e. |\n| --- | ---: | ---: | ---: |")
    for p, r in rows.items():
        print(f"| {p} | {r['top1']:.2f} | {r['minus_base']:+.2f} | {r['paired_se']:.2f} |")
    print(f"worst of the {len(middle)} middle differences by chance alone: median {summary['chance_worst_median']:.2f},"
          f" 1 in 10 below {summary['chance_worst_p90']:.2f}")
    if output:
        atomic_write_text(output, json.dumps({"rows": rows, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
