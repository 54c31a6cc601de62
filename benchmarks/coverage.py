"""Which timm families adnify converts: one small model per family, written to docs/coverage.md.

A family is the ``timm.models`` module a model is registered in (``resnet``, ``vision_transformer``...).
Each family's model with the fewest parameters (counted on the meta device, no memory spent) is
converted with random weights in a subprocess with a time limit, at a small input when the model
takes one. timm's ``test_*`` models have one block per stage by design, and the smallest
variants of some families too (``resnet10t``): when a model has nothing adaptive for that reason,
the next smallest is tried (four models at most), and the row says so.

Usage::

    python benchmarks/coverage.py                       # all families -> docs/coverage.md
    python benchmarks/coverage.py --families resnet vit --out /tmp/cov.md --timeout 120 --jobs 2
    python benchmarks/coverage.py --families efficientnet --timeout 600 --merge rows.json --json rows.json
    python benchmarks/coverage.py --json rows.json --resume   # an interrupted sweep: only the families not in rows.json
    python benchmarks/coverage.py --one resnet18        # one model: JSON lines (used internally)
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from adnify.errors import strip_ansi
from adnify.io.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SMALL = 64  # side of the small input tried first
# Big variants are never the smallest of their family: skip counting their parameters.
_BIG = re.compile(r"(large|huge|giant|gigantic|enormous|_xl|xlarge|_l\d|_h\d|_g\d|_e\d|_448|_512|_518|_560|_384)")


# --- one model (runs in a subprocess) ------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(strip_ansi(str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _attempts(default: tuple[int, ...]) -> list[tuple[dict[str, Any], tuple[int, ...]]]:
    """(timm keyword arguments, input size) to try, smallest first."""
    small = (3, SMALL, SMALL)
    out = [({"img_size": SMALL}, small), ({}, small)]
    if tuple(default) != small:
        out.append(({}, tuple(default)))
    return out


def check_one(name: str) -> dict[str, Any]:
    """Convert ``name`` and check the super-net against the original; a JSON-able result."""
    import timm
    import torch

    import adnify
    from adnify.conversion.analysis import default_input_size
    from adnify.report.costs import pattern_costs

    torch.set_num_threads(1)
    cfg_size = tuple(timm.get_pretrained_cfg(name).input_size) if timm.get_pretrained_cfg(name) else (3, 224, 224)
    last_error = ""
    for kwargs, size in _attempts(cfg_size):
        torch.manual_seed(0)
        try:
            model = timm.create_model(name, **kwargs).eval()
        except TypeError as e:  # the model takes no img_size
            last_error = f"{type(e).__name__}: {e}"
            continue
        except Exception as e:
            if kwargs:
                last_error = f"{type(e).__name__}: {e}"
                continue
            return {"status": "error", "message": _one_line(f"create_model failed: {type(e).__name__}: {e}")}
        if not kwargs and size != (3, SMALL, SMALL):
            size = default_input_size(model)
        original = copy.deepcopy(model)
        x = torch.randn(1, *size)
        try:
            with torch.no_grad():
                reference = original(x)
        except Exception as e:
            last_error = f"forward on {size}: {type(e).__name__}: {e}"
            continue
        try:
            net = adnify.convert(model, input_size=size).eval()
        except adnify.AdnifyError as e:
            message = str(e)
            if message.startswith("a forward pass"):
                last_error = message
                continue
            status = "trace" if "could not trace" in message else "n/a"
            return {"status": status, "message": _one_line(message), "input": list(size), "kwargs": kwargs}
        except Exception as e:
            return {"status": "error", "message": _one_line(f"convert failed: {type(e).__name__}: {e}"),
                    "input": list(size), "kwargs": kwargs}
        try:
            with torch.no_grad():
                out = net(x)
                diff = (out - reference).abs().max().item() if isinstance(out, torch.Tensor) else float("nan")
                net(x, skip="base")
            sup, base = pattern_costs(net, ["super", "base"], input_size=size)
        except Exception as e:
            return {"status": "error", "message": _one_line(f"converted, but a check failed: {type(e).__name__}: {e}"),
                    "input": list(size), "kwargs": kwargs}
        stages = [f"{s.name} ({len(s.mandatory)}+{len(s.skippable)})" for s in net.plan.stages]
        return {
            "status": "converted", "stages": net.num_stages, "stage_names": stages, "isotropic": net.plan.isotropic,
            "super_gmacs": sup.gmacs, "base_gmacs": base.gmacs, "max_diff": diff,
            "norms": sum(len(s.norms) for s in net.plan.stages), "input": list(size), "kwargs": kwargs,
            "checks": [("backbone", lambda: check_backbone(name, kwargs, x)), ("dynamic", lambda: check_dynamic(net, x))],
        }
    return {"status": "error", "message": _one_line(f"no input size worked: {last_error}")}


def print_one(name: str) -> None:
    """``check_one`` as JSON lines: the conversion first, then each check as it finishes (a time limit
    that strikes during a check keeps what was printed before it)."""
    result = check_one(name)
    checks = result.pop("checks", None)
    print(json.dumps(result), flush=True)
    if checks is None:
        return
    for key, check in checks:
        print(json.dumps({key: check()}), flush=True)


def check_backbone(name: str, kwargs: dict[str, Any], x: Any) -> dict[str, Any]:
    """The same model as a ``features_only`` backbone: super-net maps equal timm's, base-net maps alike in shape."""
    import timm
    import torch

    import adnify

    torch.manual_seed(0)
    try:
        model = timm.create_model(name, features_only=True, **kwargs).eval()
        with torch.no_grad():
            reference = model(x)
    except Exception as e:  # the family has no feature extraction in timm
        return {"status": "none", "message": _one_line(f"{type(e).__name__}: {e}", 120)}
    try:
        net = adnify.convert(copy.deepcopy(model), input_size=tuple(x.shape[1:])).eval()
        with torch.no_grad():
            maps, base = net(x), net(x, skip="base")
    except adnify.AdnifyError as e:
        return {"status": "n/a", "message": _one_line(str(e), 160)}
    except Exception as e:
        return {"status": "error", "message": _one_line(f"{type(e).__name__}: {e}", 160)}
    reference, maps, base = (list(m.values()) if isinstance(m, dict) else list(m) for m in (reference, maps, base))
    if len(maps) != len(reference) or len(base) != len(reference):
        return {"status": "error", "message": f"{len(maps)}/{len(base)} maps against timm's {len(reference)}"}
    if any(b.shape != r.shape for b, r in zip(base, reference)):
        return {"status": "error", "message": "a base-net map differs in shape from timm's"}
    diff = max((m - r).abs().max().item() for m, r in zip(maps, reference))
    return {"status": "converted", "levels": len(reference), "stages": net.num_stages, "max_diff": diff}


def check_dynamic(net: Any, x: Any) -> dict[str, Any]:
    """The ``--dynamic-depth`` ONNX export: super- and base-net through onnxruntime against the adaptive net."""
    import tempfile

    import numpy as np
    import torch

    import adnify
    from adnify.export import export_dynamic

    try:
        import onnxruntime as ort
    except ImportError:
        return {"status": "skipped", "message": "onnxruntime is not installed"}
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = export_dynamic(net, f"{folder}/net.onnx", input_size=tuple(x.shape[1:]))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            diff = scale = 0.0
            for pattern in ("F" * net.num_stages, "T" * net.num_stages):
                got = session.run(None, {"input": x.numpy(), "skip": np.array([c == "T" for c in pattern])})[0]
                with torch.no_grad():
                    want = net(x, skip=pattern).numpy()
                diff, scale = max(diff, float(np.abs(got - want).max())), max(scale, float(np.abs(want).max()))
        except adnify.AdnifyError as e:
            return {"status": "refused", "message": _one_line(str(e), 200)}
        except Exception as e:
            return {"status": "error", "message": _one_line(f"{type(e).__name__}: {e}", 200)}
    # random weights can make outputs huge (MobileOne: 1e7), so the fp32 check is relative
    return {"status": "converted" if diff <= 1e-4 * max(scale, 1.0) else "mismatch", "max_diff": diff,
            "relative": diff / max(scale, 1e-12)}


# --- the families -------------------------------------------------------------------------------------


def families() -> dict[str, list[str]]:
    """timm module -> its model names."""
    import timm
    from timm.models import _registry

    out: dict[str, list[str]] = {}
    for name in timm.list_models():
        out.setdefault(_registry._model_to_module.get(name, "?"), []).append(name)
    return dict(sorted(out.items()))


def count_params(name: str) -> int | None:
    """Parameters of ``name``, built on the meta device (no memory, no initialisation cost)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name)
        return sum(p.numel() for p in model.parameters())
    except Exception:
        return None


def by_size(names: list[str]) -> list[tuple[str, int | None]]:
    """The family's models, fewest parameters first (big variants not counted)."""
    small = [n for n in names if not _BIG.search(n)] or names
    counted = [(n, count_params(n)) for n in small]
    return sorted(counted, key=lambda t: (t[1] is None, t[1] or 0, t[0]))


def run_one(name: str, timeout: float) -> dict[str, Any]:
    """``check_one`` in a subprocess with a time limit."""
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        result = _merge_lines(e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))
        if not result:
            return {"status": "timeout", "message": f"over the {timeout:.0f} s limit", "seconds": timeout}
        for key in ("backbone", "dynamic"):  # converted in time; a check ran out of it
            result.setdefault(key, {"status": "timeout", "message": f"over the model's {timeout:.0f} s limit"})
        return {**result, "seconds": timeout}
    result = _merge_lines(proc.stdout)
    if proc.returncode != 0 or not result:
        tail = _one_line(f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        if "status" not in result:
            result = {"status": "error", "message": tail}
        for key in ("backbone", "dynamic"):  # the process died during a check
            if result["status"] == "converted":
                result.setdefault(key, {"status": "error", "message": tail})
    result["seconds"] = round(time.time() - start, 1)
    return result


def _merge_lines(stdout: str) -> dict[str, Any]:
    """The JSON lines ``--one`` printed, as one row."""
    out: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            out.update(json.loads(line))
    return out


def _too_shallow(name: str, result: dict[str, Any]) -> bool:
    """Nothing adaptive: maybe this variant's depth (one block per stage), not the family's design."""
    return result["status"] == "n/a" and result.get("message", "").startswith("nothing to adapt")


def cover_family(family: str, names: list[str], timeout: float, tries: int = 4) -> dict[str, Any]:
    """The family's smallest model; a deeper one when the smallest has one block per stage."""
    ranked = by_size(names)
    # after the smallest, regular models only: timm's test_* models are all one block per stage
    ranked = ranked[:1] + [(n, p) for n, p in ranked[1:] if not n.startswith("test_")]
    rows: list[dict[str, Any]] = []
    for name, params in ranked[:tries]:
        result = run_one(name, timeout)
        rows.append({"family": family, "model": name, "params": params, "models": len(names), **result})
        if not _too_shallow(name, result):
            break
    if len(rows) == 1:
        return rows[0]
    if _too_shallow(rows[-1]["model"], rows[-1]):  # nothing adaptive in any: report the smallest
        return {**rows[0], "note": f"also tried {', '.join(r['model'] for r in rows[1:])}"}
    return {**rows[-1], "note": f"smaller {', '.join(r['model'] for r in rows[:-1])}: nothing adaptive"}


# --- the report ----------------------------------------------------------------------------------------


def _result_text(row: dict[str, Any]) -> str:
    status = row["status"]
    if status == "converted":
        text = (f"converted: {row['stages']} stage{'s' if row['stages'] != 1 else ''}"
                f"{' (isotropic, grouped)' if row.get('isotropic') else ''}, "
                f"{row['super_gmacs']:.4f} / {row['base_gmacs']:.4f} GMACs super/base, "
                f"max\\|diff\\| {row['max_diff']:.1e}")
    elif status == "n/a":
        text = f"not applicable: {row['message']}"
    elif status == "trace":
        text = f"not applicable (trace): {row['message']}"
    elif status == "timeout":
        text = f"timeout: {row['message']}"
    else:
        text = f"error: {row['message']}"
    if row.get("note"):
        text += f" ({row['note']})"
    return text.replace("|", "\\|").replace("\\\\|", "\\|")


def _check_text(row: dict[str, Any], key: str) -> str:
    """The ``backbone`` or ``dynamic`` check of a row, as a table cell."""
    found = row.get(key)
    if not found:
        return "-"
    status = found["status"]
    if status == "converted" and key == "backbone":
        return f"{found['levels']} maps, {found['stages']} stages, max\\|diff\\| {found['max_diff']:.1e}"
    if status == "converted":
        return (f"exact: max\\|diff\\| {found['max_diff']:.0e}, relative {found.get('relative', 0.0):.0e} "
                "(super, base)")
    if status == "mismatch":
        return f"MISMATCH: max\\|diff\\| {found['max_diff']:.1e}, relative {found['relative']:.1e}"
    if key == "backbone":
        status = {"none": "no features_only in timm", "n/a": "not applicable", "timeout": "timeout"}.get(status, "error")
    return f"{status}: {found['message']}".replace("|", "\\|")


def summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    keys = {"converted": "converted", "n/a": "not applicable", "trace": "trace failed", "timeout": "timeout",
            "error": "error"}
    counts = {v: 0 for v in keys.values()}
    for row in rows:
        counts[keys.get(row["status"], "error")] += 1
    return counts


def _check_summary(rows: list[dict[str, Any]]) -> str:
    """How the converted families fared in the backbone and dynamic-export checks."""
    parts = []
    for key, label in (("backbone", "Backbone"), ("dynamic", "Dynamic export")):
        counts: dict[str, int] = {}
        for row in rows:
            if row.get(key):
                status = row[key]["status"]
                counts[status] = counts.get(status, 0) + 1
        parts.append(f"{label}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda t: -t[1])) + ".")
    return " ".join(parts)


def write_markdown(rows: list[dict[str, Any]], path: Path, *, timeout: float) -> None:
    import timm
    import torch

    counts = summary(rows)
    lines = [
        "# Coverage of timm families",
        "",
        f"Generated by `python benchmarks/coverage.py` on {datetime.date.today().isoformat()} "
        f"(timm {timm.__version__}, torch {torch.__version__}, {platform.machine()} CPU, one thread per model, "
        f"each in a subprocess with a time limit: `--timeout`, {timeout:.0f} s for the last run).",
        "",
        "One model per family (the `timm.models` module it is registered in): the one with the fewest",
        "parameters. timm's `test_*` models and some small variants have one block per stage: when the",
        "smallest has nothing adaptive, the next smallest is tried (four at most), as the row notes.",
        "Random weights, eval mode, fp32, batch 1, a 64x64 input when the model takes one (`img_size=64`",
        "for ViT-like models), else its default input size.",
        "",
        "- **converted**: number of adaptive stages (`mandatory+skippable` blocks per stage in the",
        "  `stages` column); super-net / base-net MACs (FLOPs / 2, `adnify.report.costs.pattern_costs`) at the",
        "  input shown, so rows are not comparable with each other; max\\|diff\\| = largest absolute",
        "  difference between the super-net and the original model.",
        "- **not applicable**: the one-line `AdnifyError` (nothing adaptive, or torch.fx cannot trace).",
        "- **backbone**: the same model built with `features_only=True` and converted: how many feature",
        "  maps it returns, its adaptive stages, and the largest difference between the super-net's maps and",
        "  timm's (the base-net's maps are checked to have timm's shapes).",
        "- **dynamic export**: `adnify export --dynamic-depth --format onnx` of the converted classifier,",
        "  run in onnxruntime for the super- and base-net pattern: the largest difference from the adaptive",
        "  model, absolute and relative to its largest output (random weights make some outputs huge), exact",
        "  when the relative difference is at most 1e-4; or the one-line refusal that names the static",
        "  `--pattern` export as the way out.",
        "",
        "Summary: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("converted", "not applicable"))
        + f" ({len(rows)} families). " + _check_summary(rows),
        "",
        "| family | model | params (M) | input | result | stages | backbone | dynamic export |",
        "| --- | --- | ---: | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        params = f"{row['params'] / 1e6:.1f}" if row.get("params") else "?"
        size = "x".join(str(s) for s in row.get("input", [])[1:]) or "-"
        stages = ", ".join(row.get("stage_names", [])).replace("|", "\\|")
        lines.append(f"| {row['family']} | `{row['model']}` | {params} | {size} | {_result_text(row)} | {stages} "
                     f"| {_check_text(row, 'backbone')} | {_check_text(row, 'dynamic')} |")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help="check one model and print a JSON line")
    parser.add_argument("--families", nargs="*", help="only these families (timm module names)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "coverage.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--merge", type=Path, help="rows of an earlier run (--json); families run now replace theirs")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per model")
    parser.add_argument("--jobs", type=int, default=2, help="models checked at once")
    parser.add_argument("--resume", action="store_true", help="keep the families already in --json, check the rest")
    args = parser.parse_args(argv)
    if args.resume and not args.json:
        parser.error("--resume needs --json FILE (the rows written so far)")

    if args.one:
        print_one(args.one)
        return 0

    start = time.time()
    fams = families()
    if args.families:
        unknown = sorted(set(args.families) - set(fams))
        if unknown:
            parser.error(f"unknown families {unknown}; known: {', '.join(fams)}")
        fams = {k: v for k, v in fams.items() if k in args.families}
    rows: list[dict[str, Any]] = []
    if args.resume and args.json.exists():
        rows = [r for r in json.loads(args.json.read_text()) if r["family"] in fams]
        print(f"resuming: {len(rows)} of {len(fams)} families already checked", flush=True)
    todo = {k: v for k, v in fams.items() if k not in {r["family"] for r in rows}}
    with futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = {pool.submit(cover_family, fam, names, args.timeout): fam for fam, names in todo.items()}
        for job in futures.as_completed(jobs):
            row = job.result()
            rows.append(row)
            if args.json:  # after every family: an interrupted sweep resumes with --resume
                atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
            print(f"[{len(rows)}/{len(fams)}] {row['family']}: {row['model']} -> {_result_text(row)} "
                  f"({row.get('seconds', 0)} s)", flush=True)
    if args.merge:
        done = {r["family"] for r in rows}
        rows += [r for r in json.loads(args.merge.read_text()) if r["family"] not in done]
    rows.sort(key=lambda r: r["family"])
    write_markdown(rows, args.out, timeout=args.timeout)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    counts = summary(rows)
    print(f"{len(rows)} families: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f" -> {args.out} ({(time.time() - start) / 60:.0f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
