"""How much unlabelled data label-free conversion needs: base-net top-1 against the number of images.

Two lines, each from the converted pretrained model: "statistics only" re-estimates the skip-aware
norm copies' BatchNorm statistics on that many images (the ``calibrate_skip_norms`` step of
``adnify train``); "recipe" runs ``adnify train --recipe finetune --labels none`` on that many
images (a seeded subset of the training split; ``--recipe-run N=DIR`` takes a finished run of the
same recipe instead, e.g. the full-data headline run). Super- and base-net are scored on a fixed
validation subset. Resumable: each finished point is kept in ``OUT/curve.json``.

    python examples/label_free_curve.py lite0 ../shared/data/tiny-imagenet -o runs/curve \\
        --sizes 500,2500,10000,40400 --val 2000 --label-column imagenet_label --recipe finetune
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import adnify
from adnify.io.data import load_image_data
from adnify.io.files import atomic_write_text
from adnify.report import eval_loader, eval_transform, evaluate_patterns
from adnify.train import calibrate_skip_norms
from adnify.train.loaders import calibration_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a converted model directory")
    parser.add_argument("data", help="a dataset with train and validation splits")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--sizes", default="500,2500,10000,40400")
    parser.add_argument("--val", type=int, default=2000, help="validation images scored (0: all)")
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--extra", action="append", default=[],
                        help="NAME=PATH: also score each point on another dataset (e.g. full-size photos)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--recipe", default=None, help="also train this recipe on each size (the second line)")
    parser.add_argument("--recipe-run", action="append", default=[],
                        help="N=DIR: a finished run of --recipe on N images, used instead of training")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / "curve.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    data = load_image_data(args.data, label_column=args.label_column)
    net = adnify.load(args.model)
    val = data.validation
    if args.val and args.val < len(val):
        val = val.select(np.sort(np.random.default_rng(1).permutation(len(val))[: args.val]))
    scored = {"validation": dataclasses.replace(data, validation=val)}
    for item in args.extra:
        name, path = item.split("=", 1)
        scored[name] = load_image_data(path, val_split=0)  # every image is scored

    sup, base = "F" * net.num_stages, "T" * net.num_stages

    def score() -> dict[str, dict[str, float]]:
        found = {}
        for name, scored_data in scored.items():
            loader = eval_loader(net, scored_data, batch_size=args.batch_size, num_workers=1)
            acc = evaluate_patterns(net, [sup, base], loader, agreement=True, progress=False)
            found[name] = {p: {"acc1": a.acc1, "agreement": a.agreement, "kl_to_super": a.kl_to_super}
                           for p, a in acc.items()}
        return found

    start = {k: v.clone() for k, v in net.state_dict().items()}
    if "0" not in results:
        results["0"] = {"images": 0, "seconds": 0.0, "scores": score()}
        atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    for size in (int(s) for s in args.sizes.split(",")):
        if str(size) in results:
            continue
        net.load_state_dict(start)
        # the images adnify train would calibrate on: calibrate_skip_norms=size, seed 0
        loader = calibration_loader(data, eval_transform(net), {"calibrate_skip_norms": size, "seed": 0,
                                                      "batch_size": args.batch_size, "workers": 1})
        began = time.perf_counter()
        used = calibrate_skip_norms(net, loader, max_images=size)
        seconds = time.perf_counter() - began
        results[str(size)] = {"images": used, "seconds": round(seconds, 1), "scores": score()}
        atomic_write_text(out, json.dumps(results, indent=2) + "\n")
        line = "  ".join(f"{n}: super {s[sup]['acc1']:.1f} base {s[base]['acc1']:.1f}"
                         for n, s in results[str(size)]["scores"].items())
        print(f"{size} images ({seconds:.0f} s): {line}", flush=True)
    if args.recipe:
        given = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.recipe_run)}
        trained = results.setdefault("recipe", {})
        for size in (int(s) for s in args.sizes.split(",")):
            if str(size) in trained:
                continue
            began = time.perf_counter()
            run = given.get(size) or train_on_subset(args, data, val, size)
            seconds = time.perf_counter() - began if size not in given else _run_seconds(run)
            net.load_state_dict(adnify.load(str(run)).state_dict())
            trained[str(size)] = {"images": size, "seconds": round(seconds, 1), "run": str(run), "scores": score()}
            atomic_write_text(out, json.dumps(results, indent=2) + "\n")
            line = "  ".join(f"{n}: super {s[sup]['acc1']:.1f} base {s[base]['acc1']:.1f}"
                             for n, s in trained[str(size)]["scores"].items())
            print(f"recipe, {size} images ({seconds:.0f} s): {line}", flush=True)
    write_table_and_plot(args.output, results, sup, base)


def train_on_subset(args: argparse.Namespace, data, val, size: int) -> Path:
    """``adnify train --recipe R --labels none`` on ``size`` seeded training images; the run directory."""
    import datasets

    from adnify.train import train

    run = args.output / f"run-{size}"
    if (run / "final" / "adnify.json").exists():
        return run
    subset = args.output / f"data-{size}"
    if not (subset / "dataset_dict.json").exists():
        order = np.sort(np.random.default_rng(0).permutation(len(data.train))[:size])
        # the run's own end-of-epoch evaluation is not what is reported (score() is): 64 images keep it short
        datasets.DatasetDict(train=data.train.select(order), validation=val.select(range(min(64, len(val))))
                             ).save_to_disk(str(subset))
    if (run / "run.json").exists():
        train(str(run), resume=True, progress=False)
    else:
        train(args.model, data=str(subset), output=run, recipe=args.recipe, label_column=args.label_column,
              overrides={"labels": "none", "eval_before_training": False}, progress=False)
    return run


def _run_seconds(run: Path) -> float:
    """Wall time of a finished run: from its first to its last logged record, else from its files' times."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["time"] for r in records if "time" in r]
    if len(times) > 1:
        return times[-1] - times[0]
    return (run / "final").stat().st_mtime - (run / "start").stat().st_mtime


def write_table_and_plot(out: Path, results: dict, sup: str, base: str) -> None:
    """``curve.md`` (a table) and ``curve.png`` (base-net top-1 against images, super-net as a line)."""
    trained = results.get("recipe", {})
    results = {k: v for k, v in results.items() if k != "recipe"}
    names = list(next(iter(results.values()))["scores"])
    rows = sorted(results.values(), key=lambda r: r["images"])
    lines = ["| unlabelled images | " + " | ".join(f"{n}: super / base top-1" for n in names) + " | seconds |",
             "| ---: | " + " | ".join("---" for _ in names) + " | ---: |"]
    for r in rows:
        cells = [f"{r['scores'][n][sup]['acc1']:.1f} / {r['scores'][n][base]['acc1']:.1f}" for n in names]
        lines.append(f"| {r['images'] or 'none (naive)'} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    if trained:
        lines += ["", "| unlabelled images (the recipe) | " + " | ".join(f"{n}: super / base top-1" for n in names)
                  + " | seconds |", "| ---: | " + " | ".join("---" for _ in names) + " | ---: |"]
        for r in sorted(trained.values(), key=lambda r: r["images"]):
            cells = [f"{r['scores'][n][sup]['acc1']:.1f} / {r['scores'][n][base]['acc1']:.1f}" for n in names]
            lines.append(f"| {r['images']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    atomic_write_text(out / "curve.md", "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [r for r in rows if r["images"]]
        xs = [r["images"] for r in points]
        ax.plot(xs, [r["scores"][name][base]["acc1"] for r in points], "o-", label="base-net, statistics only")
        if trained:
            done = sorted(trained.values(), key=lambda r: r["images"])
            ax.plot([r["images"] for r in done], [r["scores"][name][base]["acc1"] for r in done], "s-",
                    label="base-net, the recipe")
        ax.axhline(rows[0]["scores"][name][base]["acc1"], color="gray", ls=":", label="base-net, naive")
        ax.axhline(rows[0]["scores"][name][sup]["acc1"], color="k", ls="--", label="super-net (= original)")
        ax.set_xscale("log")
        ax.set_xlabel("unlabelled training images")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
