"""Serve a dynamic-depth ONNX file with onnxruntime alone, choosing the depth from a latency budget.

The file's metadata (written by ``adnify export --dynamic-depth``) lists the patterns and their
MACs. At start-up each pattern is timed once on this machine; each request then runs the most
accurate affordable depth: the pattern with the most MACs whose measured latency fits the budget.
adnify itself is not needed here: only onnxruntime and numpy.

    adnify export r50-adn --dynamic-depth --format onnx -o r50-adn.onnx
    python examples/serve_dynamic.py r50-adn.onnx --budget-ms 40
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


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


def choose(meta: dict, latency: dict[str, float], budget_ms: float) -> str:
    """The pattern with the most MACs within the budget (the base-net when none fits)."""
    fitting = [p for p in meta["patterns"] if latency[p] <= budget_ms]
    if not fitting:
        return meta["patterns"][-1]
    return max(fitting, key=lambda p: meta["macs"][p])


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
