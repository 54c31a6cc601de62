"""Every sub-network of a training run against the model it started from, on the run's validation split.

A run directory keeps the converted model it started from (``start/``) and the trained one
(``final/``). This script rebuilds the run's validation split exactly as ``adnify train`` made it
(same data, ``val_split`` and seed), evaluates all ``2**N`` sub-networks of both models in one pass
each, and prints a Markdown table: top-1 before (for a converted pretrained model: naive block
dropping) and after, how many images each sub-network newly gets right and newly gets wrong, and
the mean KL(start super-net || sub-network) per image before and after: how closely each sub-network
follows the model the run started from (for a converted pretrained model, the original). On a few
hundred images top-1 moves by whole images; the KL moves smoothly.
(``adnify report RUN --data RUN`` and ``adnify report RUN/start --data RUN`` give the two top-1
columns alone.)

Usage::

    adnify train lite0-adn --recipe finetune --data ../shared/data/imagenet-sample --labels none \\
        --val-split 0.4 -o runs/lite0
    python examples/compare_run_to_start.py runs/lite0
    python examples/compare_run_to_start.py runs/lite0 --patterns FFFFF,TTTTT --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import adnify
from adnify.report import eval_loader
from adnify.train.rundir import RunDir, run_image_data


def predictions(net: adnify.AdaptiveNet, patterns: list[str], loader) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Log-probabilities of every image under every pattern (each batch decoded once), and the labels."""
    preds: dict[str, list[torch.Tensor]] = {p: [] for p in patterns}
    labels = []
    net.eval()
    with torch.inference_mode():
        for images, target in loader:
            labels.append(target)
            for p in patterns:
                preds[p].append(net(images, skip=p).float().log_softmax(1))
    return {p: torch.cat(v) for p, v in preds.items()}, torch.cat(labels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="training run directory (with start/, final/, run.json, config.yaml)")
    ap.add_argument("--patterns", default="all", help="all, or comma-separated patterns (default: all)")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    if not (run / "run.json").is_file() or not (run / "final" / "adnify.json").is_file():
        print(f"error: {run} is not a finished training run (needs run.json and final/)", file=sys.stderr)
        return 2
    rundir = RunDir(run)
    info, config = rundir.read_run(), rundir.recipe()
    start, final = adnify.load(str(run / "start")), adnify.load(str(run / "final"))
    data = run_image_data(info, config["seed"])  # the validation split exactly as training made it
    if data.validation is None or data.label_column is None:
        print("error: the run's validation split has no labels to score", file=sys.stderr)
        return 2
    patterns = start.patterns() if args.patterns == "all" else [p.strip() for p in args.patterns.split(",")]
    super_net = "F" * start.num_stages
    loader = eval_loader(start, data, batch_size=args.batch_size, input_size=config["input_size"])
    before, labels = predictions(start, list(dict.fromkeys([super_net, *patterns])), loader)
    after, _ = predictions(final, patterns, loader)
    reference = before[super_net]

    def kl(logp: torch.Tensor) -> float:
        return F.kl_div(logp, reference, log_target=True, reduction="batchmean").item()

    n = len(labels)
    print(f"{run}: {n} validation images (seed {config['seed']}, val_split {info.get('val_split')})\n")
    print("| pattern | top-1 start % | top-1 trained % | change | newly right | newly wrong "
          "| KL to start super-net, start → trained |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in patterns:
        ok_b, ok_a = before[p].argmax(1) == labels, after[p].argmax(1) == labels
        acc_b, acc_a = 100 * ok_b.float().mean().item(), 100 * ok_a.float().mean().item()
        print(f"| {p} | {acc_b:.1f} | {acc_a:.1f} | {acc_a - acc_b:+.1f} | {int((ok_a & ~ok_b).sum())} "
              f"| {int((ok_b & ~ok_a).sum())} | {kl(before[p]):.3f} → {kl(after[p]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
