"""Serve a dynamic-depth ONNX file with onnxruntime, choosing the depth from a latency budget.

The file's metadata (written by ``adnify export --dynamic-depth``) lists the patterns, their blocks
and MACs. At start-up each pattern is timed once on this machine; each request then runs the depth
that ``adnify report --budget-ms`` would choose (:func:`adnify.report.select_within_budget`: the
deepest pattern whose measured latency fits, the cheaper one on a tie). The model itself runs on
onnxruntime alone; adnify is imported only for that rule.

    adnify export r50-adn --dynamic-depth --format onnx -o r50-adn.onnx
    python examples/serve_dynamic.py r50-adn.onnx --budget-ms 40
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort

from adnify import AdnifyError
from adnify.report import select_within_budget


def latency_table(session: ort.InferenceSession, meta: dict, repeats: int = 5) -> dict[str, float]:
    """Median milliseconds per pattern at batch 1 on this machine."""
    shape = [1 if d in (-1, None) else d for d in meta["inputs"]["input"]]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    table = {}
    for pattern in meta["patterns"]:
        skip = np.array([c == "T" for c in pattern])
        session.run(None, {"input": x, "skip": skip})  # warm-up
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            session.run(None, {"input": x, "skip": skip})
            times.append((time.perf_counter() - began) * 1000)
        table[pattern] = float(np.median(times))
    return table


def report_rows(meta: dict, latency: dict[str, float]) -> list[dict]:
    """The file's patterns as rows of ``adnify report`` (no accuracy: deeper counts as better)."""
    skippable = [len(stage["skippable"]) for stage in meta["stages"]]
    return [{"pattern": p, "skipped_blocks": sum(n for n, c in zip(skippable, p) if c == "T"),
             "gmacs": meta["macs"][p] / 1e9, "latency_ms": latency[p]} for p in meta["patterns"]]


def choose(meta: dict, latency: dict[str, float], budget_ms: float) -> str:
    """The pattern ``adnify report --budget-ms`` would choose; the one with the fewest MACs when none fits."""
    rows = report_rows(meta, latency)
    try:
        return select_within_budget(rows, budget_ms=budget_ms)["pattern"]
    except AdnifyError as e:
        print(f"{e}; serving the cheapest")
        return min(rows, key=lambda r: r["gmacs"])["pattern"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a dynamic-depth .onnx file")
    parser.add_argument("--budget-ms", type=float, action="append", help="latency budget(s) to serve under")
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["adnify"])
    latency = latency_table(session, meta)
    for pattern in sorted(latency, key=lambda p: -meta["macs"][p]):
        print(f"{pattern}  {meta['macs'][pattern] / 1e9:.3f} GMACs  {latency[pattern]:.1f} ms")
    shape = [1 if d in (-1, None) else d for d in meta["inputs"]["input"]]
    image = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)  # a request
    for budget in args.budget_ms or [min(latency.values()) * 1.5, max(latency.values())]:
        pattern = choose(meta, latency, budget)
        logits = session.run(None, {"input": image, "skip": np.array([c == "T" for c in pattern])})[0]
        print(f"budget {budget:.1f} ms -> {pattern} ({latency[pattern]:.1f} ms): class {int(logits.argmax())}")


if __name__ == "__main__":
    main()
