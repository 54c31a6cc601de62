"""Do a trained network's sub-networks want BatchNorm statistics of their own?

With shared norms (the convnet recipes) every BatchNorm keeps one set of running statistics, averaged
during training over the super-net's and the second pass's batches: a mixture that fits neither end.
For each trained run folder this script scores, on the run's evaluation split:

- ``trained``: the statistics as training left them;
- ``mixture``: every BatchNorm re-estimated once, over batches that alternate between the patterns
  (a precise average of what training averaged);
- ``own``: every BatchNorm re-estimated under each pattern alone, one set of statistics per pattern.

A network trained alone (``--baseline``) is re-estimated under its own pattern too, so that the
comparison with ADN stays fair: a precise average can lift any briefly trained network. Statistics
are cumulative averages over ``--images`` training images with the recipe's training transforms
(``--transforms eval`` for the evaluation ones), as BatchNorm saw them in training.

    python benchmarks/pattern_statistics.py runs/lite0/shared_norms-lr2-s1 runs/lite0/base-lr4-s1 -o stats.json

Nothing here changes a run folder: it measures what per-pattern statistics would be worth.

``--shipped`` measures what adnify ships instead (the recipes' ``pattern_statistics``): the statistics
:func:`adnify.train.calibrate.estimate_pattern_statistics` estimates after training, one set per prefix,
every pattern scored with them (the prefix tree), and the study's middle figures (partial-order violations,
the worst sub-network against the base-net). A network trained alone gets its one precise set, as in training:

    python benchmarks/pattern_statistics.py --shipped runs/lite0/shared_norms-lr2-s0 runs/lite0/base-lr4-s0 -o shipped.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from adnify.io.files import atomic_write_text


def reestimated(net: Any, loader: Any, patterns: list[str], images: int) -> Any:
    """A copy of ``net`` whose every BatchNorm holds the cumulative average over ``images`` images of
    ``loader``, each batch run under the next of ``patterns`` in turn."""
    from adnify.train.calibrate import reestimate_batchnorms

    clone = copy.deepcopy(net).eval()
    norms = [m for m in clone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    reestimate_batchnorms(clone, norms, loader, max_images=images, patterns=patterns)
    return clone


def measure(run: Path, *, images: int, transforms: str, which: str) -> dict[str, Any]:
    """The three scores of every pattern ``which`` names (``ends`` or ``all``) for one run folder."""
    import adnify
    from adnify.io.data import load_image_data
    from adnify.report.evaluate import eval_loader, evaluate_patterns
    from adnify.train.loaders import build_transforms, calibration_loader

    meta = json.loads((run / "run.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    net = adnify.load(str(run / "final"))
    size = net.input_size(config.get("input_size"))
    data = load_image_data(meta["data"], split=meta.get("eval_split"), label_column=meta.get("label_column"),
                           val_split=meta.get("val_split", 0.1))
    test = eval_loader(net, data, batch_size=256, num_workers=2, input_size=size)
    built = build_transforms(net, config)
    config = dict(config, _statistics_images=images)
    calib = calibration_loader(data, built.train if transforms == "train" else built.eval, config, "_statistics_images")
    if calib is None:
        raise SystemExit(f"error: {run} has no training images to re-estimate statistics on")
    trained_alone = meta.get("baseline") is not None
    if trained_alone:  # the one pattern it was trained as
        patterns = [meta["baseline"]]
    elif which == "all":
        patterns = net.patterns()
    else:
        patterns = ["F" * net.num_stages, "T" * net.num_stages]
    score = lambda model, pats: {p: a.acc1 for p, a in evaluate_patterns(model, pats, test, progress=False).items()}
    began = time.perf_counter()
    if which == "shipped":
        return shipped(run, net, calib, images, transforms, trained_alone, patterns if trained_alone else
                       net.patterns(), score, began)
    result = {"run": str(run), "trained_alone": trained_alone, "images": images, "transforms": transforms,
              "trained": score(net, patterns)}
    if not trained_alone:
        result["mixture"] = score(reestimated(net, calib, patterns, images), patterns)
    result["own"] = {p: score(reestimated(net, calib, [p], images), [p])[p] for p in patterns}
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def shipped(run: Path, net: Any, calib: Any, images: int, transforms: str, trained_alone: bool,
            patterns: list[str], score: Any, began: float) -> dict[str, Any]:
    """Every pattern of ``net`` scored as trained and with the statistics training estimates when asked."""
    from adnify.train.calibrate import estimate_pattern_statistics

    sys.path.insert(0, str(Path(__file__).parent))
    from claims import middle_figures

    result = {"run": str(run), "trained_alone": trained_alone, "images": images, "transforms": transforms,
              "trained": score(net, patterns)}
    if trained_alone:
        result["shipped"] = {p: score(reestimated(net, calib, [p], images), [p])[p] for p in patterns}
    else:
        net.set_pattern_statistics(estimate_pattern_statistics(net, calib, max_images=images,
                                                               info={"transforms": transforms}))
        result["statistics_values"] = net.pattern_statistics.num_values()
        result["shipped"] = score(net, patterns)
        result["middle_trained"] = middle_figures(result["trained"])
        result["middle_shipped"] = middle_figures(result["shipped"])
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="trained run folders (final/, config.yaml, run.json)")
    parser.add_argument("--images", type=int, default=2048, help="training images per re-estimate (default 2048)")
    parser.add_argument("--transforms", choices=("train", "eval"), default="train")
    parser.add_argument("--patterns", choices=("ends", "all"), default="ends",
                        help="ADN patterns to score: the two ends, or all 2^N (one re-estimate each)")
    parser.add_argument("--shipped", action="store_true",
                        help="score every pattern with the per-prefix statistics adnify estimates and stores")
    parser.add_argument("-o", "--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images must be at least 2, not {args.images}")
    missing = [str(r) for r in args.runs if not (r / "final").is_dir()]
    if missing:
        parser.error(f"not a finished run folder (no final/): {', '.join(missing)}")
    torch.manual_seed(0)
    results = []
    for run in args.runs:
        r = measure(run, images=args.images, transforms=args.transforms,
                    which="shipped" if args.shipped else args.patterns)
        results.append(r)
        if args.shipped:
            for p in r["shipped"]:
                print(f"{run.name:28s} {p}  trained {r['trained'][p]:6.2f}  shipped {r['shipped'][p]:6.2f}", flush=True)
            for key in ("middle_trained", "middle_shipped"):
                if r.get(key):
                    m = r[key]
                    print(f"{run.name:28s} {key}: {m['violations']} violations, worst {m['worst']} "
                          f"{m['worst_vs_base']:+.2f} vs the base-net", flush=True)
            if args.output:
                atomic_write_text(args.output, json.dumps(results, indent=1) + "\n")
            continue
        for p in r["own"]:
            mix = f"{r['mixture'][p]:6.2f}" if "mixture" in r else "     -"
            print(f"{run.name:28s} {p}  trained {r['trained'][p]:6.2f}  mixture {mix}  own {r['own'][p]:6.2f}",
                  flush=True)
        if args.output:  # after every run: a long measurement keeps what it has
            atomic_write_text(args.output, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
