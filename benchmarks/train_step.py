"""Cost of an adnify training step against a plain training step of the same model.

Time: one step = forward(s) + loss + backward(s) + SGD update, for

- ``plain``: the unconverted network, cross-entropy (what ``adnify train --baseline`` runs);
- ``joint``: Algorithm 1, super-net and base-net in one forward call, one backward;
- ``sequential``: super forward+backward, then base forward+backward, one update;
- ``joint-unshared``, ``sequential-unshared``: the base-net pass recomputes the stem
  (``share_prefix: false``), to see what sharing it saves;
- ``joint-compiled``, ``sequential-compiled``: the same with ``compile_loss: true`` (each KL term one
  fused ``torch.compile`` kernel; off in every recipe). Compiling happens in the warm-up rounds.
- ``plain-cl``, ``sequential-cl``: ``plain`` and ``sequential`` with the model and each batch in
  ``torch.channels_last`` (the recipe key ``channels_last``); the batch's conversion is timed too;
- ``finetune``: the label-free ``finetune`` recipe's step (only the skip-aware norm copies train,
  BatchNorm statistics frozen, information maximisation on the base-net): nothing reads the
  super-net, so only the base-net runs;
- ``finetune-kd``: the earlier recipe's step, logit KL + pre-logit MSE to the super-net, which is
  the converted model and so its own teacher (one forward serves both); ``finetune-teacher`` runs a
  frozen copy of the original model as the teacher besides, as label-free steps did before, to show
  what the one shared forward saves.

All variants run side by side in one process, interleaved in a shuffled order every round, so that
load changes on the machine hit them alike; medians are reported (the paper pays about 1.66x a
plain epoch for ResNet-50), and the quartiles of the ratio within each round show the noise. On
the CPU the process's CPU time is reported too: on a machine shared with other work it is a
steadier measure than wall time (use ``--threads 1`` there).

Memory: the peak memory two steps add on top of the model and the data. On CUDA
``torch.cuda.max_memory_allocated`` (in process); on the CPU each variant runs in a fresh
subprocess, and a thread samples the bytes in use by malloc (``mallinfo2``, what tensors hold:
the analogue of ``memory_allocated``) and the resident set size (which also keeps freed but
unreturned heap memory).

Examples::

    python benchmarks/train_step.py --model resnet50 --batch-size 16
    python benchmarks/train_step.py --model resnet18 --batch-size 32 --input-size 3,128,128 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import torch

VARIANTS = ("plain", "joint", "sequential", "joint-unshared", "sequential-unshared", "joint-compiled",
            "sequential-compiled", "finetune", "finetune-kd", "finetune-teacher", "plain-cl", "sequential-cl")


def build(model: str, input_size: tuple[int, ...], batch: int, device: torch.device, seed: int = 0):
    import adnify

    torch.manual_seed(seed)
    net = adnify.convert(model, input_size=input_size).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size, generator=g).to(device)
    y = torch.randint(0, net.model.num_classes, (batch,), generator=g).to(device)
    return net, x, y


def make_finetune_step(variant: str, net: Any, accelerator: Any):
    """A finetune step: skip-norm copies only, statistics frozen; IM (``finetune``) or pre-logit MSE + logit KL."""
    from adnify.train.networks import frozen_teacher, train_only_skip_norms
    from adnify.train.steps import AdnPair, LossConfig, adn_step, freeze_bn_stats

    net = copy.deepcopy(net)
    train_only_skip_norms(net)
    teacher = frozen_teacher(net) if variant == "finetune-teacher" else None
    im = variant == "finetune"
    module = AdnPair(net, pre_logits=not im).train()
    freeze_bn_stats(module)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    dims = tuple(s.channel_dim for s in net.plan.stages)
    loss = (LossConfig(channel_dims=dims, feature_kd=False, logit_kd=False, im_weight=1.0) if im else
            LossConfig(channel_dims=dims, feature_kd=False, kd_weight_pre_logits=10.0))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if teacher is None:
            adn_step(accelerator, module, x, None, loss, order="sequential", super_is_teacher=True)
        else:
            with torch.no_grad():
                teacher_logits = teacher(x)
            adn_step(accelerator, module, x, None, loss, order="sequential", teacher_logits=teacher_logits)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_step(variant: str, net: Any, accelerator: Any):
    """A closure doing one full training step of ``variant`` on (x, y)."""
    from adnify.train.steps import AdnPair, LossConfig, adn_step, plain_step

    if variant.startswith("finetune"):
        return make_finetune_step(variant, net, accelerator)
    order, _, option = variant.partition("-")
    if order == "plain":
        module = net.export("F" * net.num_stages).train()
    else:
        module = AdnPair(copy.deepcopy(net), share_prefix=option != "unshared").train()
    layout = torch.channels_last if option == "cl" else torch.contiguous_format
    module = module.to(memory_format=layout)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    loss = LossConfig(channel_dims=tuple(s.channel_dim for s in net.plan.stages), compiled_kl=option == "compiled")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.contiguous(memory_format=layout)
        if order == "plain":
            plain_step(accelerator, module, x, y)
        else:
            adn_step(accelerator, module, x, y, loss, order=order)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu")
    net, x, y = build(args.model, args.input_size, args.batch_size, device)
    steps = {v: make_step(v, net, accelerator) for v in args.variants}
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    cpu_times: dict[str, list[float]] = {v: [] for v in args.variants}
    rng = random.Random(0)
    for round_ in range(args.warmup + args.repeats):
        order = list(args.variants)
        rng.shuffle(order)
        for v in order:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[v](x, y)
            sync(device)
            if round_ >= args.warmup:
                times[v].append(time.perf_counter() - start)
                cpu_times[v].append(time.process_time() - cpu_start)
    return times, cpu_times


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def malloc_bytes() -> int:
    """Bytes in use by glibc malloc (heap + mmapped blocks): the CPU analogue of memory_allocated."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class Peak:
    """The largest value of ``read()`` while the block runs, sampled every ~0.2 ms by a thread
    (``ru_maxrss`` cannot be reset and also counts start-up peaks)."""

    def __init__(self, read: Any) -> None:
        self.read = read

    def __enter__(self) -> "Peak":
        self.peak, self._stop = self.read(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(0.0002)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def peak_memory_one(args: argparse.Namespace, variant: str, device: torch.device) -> dict[str, float]:
    """Peak extra memory of ``variant``'s two first steps (this process runs only this variant)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu")
    net, x, y = build(args.model, args.input_size, args.batch_size, device)
    step = make_step(variant, net, accelerator)
    del net
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):  # the second step has the optimizer state in place
            step(x, y)
        torch.cuda.synchronize(device)
        return {"before_mb": before / 2**20, "step_mb": (torch.cuda.max_memory_allocated(device) - before) / 2**20}
    before, rss_before = malloc_bytes(), rss_bytes()
    with Peak(malloc_bytes) as allocated, Peak(rss_bytes) as rss:
        for _ in range(2):
            step(x, y)
    return {"before_mb": before / 2**20, "step_mb": (allocated.peak - before) / 2**20,
            "rss_step_mb": (rss.peak - rss_before) / 2**20}


def peak_memory(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    if device.type == "cuda":
        return {v: peak_memory_one(args, v, device) for v in args.variants}
    out = {}
    for v in args.variants:  # ru_maxrss never goes down: one fresh process per variant
        cmd = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size), "--input-size",
               ",".join(map(str, args.input_size)), "--threads", str(args.threads), "--device", args.device,
               "--memory-child", v]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[v] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-size", default="3,224,224")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="plain,joint,sequential", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--no-memory", action="store_true", help="Skip the peak-memory measurement.")
    parser.add_argument("--json", help="Also write the results to this file.")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.input_size = tuple(int(s) for s in args.input_size.split(","))
    args.variants = [v for v in args.variants.split(",") if v]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_child:
        print(json.dumps(peak_memory_one(args, args.memory_child, device)))
        return

    times, cpu_times = time_steps(args, device)
    median = {v: statistics.median(t) for v, t in times.items()}
    cpu_median = {v: statistics.median(t) for v, t in cpu_times.items()}
    result: dict[str, Any] = {
        "model": args.model, "batch_size": args.batch_size, "input_size": list(args.input_size),
        "device": str(device), "threads": args.threads, "repeats": args.repeats,
        "step_ms": {v: 1000 * m for v, m in median.items()},
        "step_iqr_ms": {v: 1000 * (statistics.quantiles(t, n=4)[2] - statistics.quantiles(t, n=4)[0])
                        for v, t in times.items() if len(t) >= 2},
    }
    if "plain" in median:
        result["time_ratio"] = {v: median[v] / median["plain"] for v in median if v != "plain"}
        # Each round times every variant once: the ratio within a round, over the rounds, shows the noise.
        per_round = {v: [a / b for a, b in zip(times[v], times["plain"])] for v in times if v != "plain"}
        result["round_ratio_quartiles"] = {v: statistics.quantiles(r, n=4) for v, r in per_round.items() if len(r) >= 2}
        if device.type == "cpu":  # CPU time of this process: less sensitive to other load on the machine
            result["cpu_step_ms"] = {v: 1000 * m for v, m in cpu_median.items()}
            result["cpu_time_ratio"] = {v: cpu_median[v] / cpu_median["plain"] for v in cpu_median if v != "plain"}
    if {"finetune-kd", "finetune-teacher"} <= median.keys():
        # images/s of the distilling step with one shared super-net/teacher forward, over the old one
        result["finetune_speedup"] = median["finetune-teacher"] / median["finetune-kd"]
        result["finetune_speedup_round_quartiles"] = statistics.quantiles(
            [a / b for a, b in zip(times["finetune-teacher"], times["finetune-kd"])], n=4)
    if {"finetune", "finetune-kd"} <= median.keys():  # no super-net pass at all (IM alone)
        result["finetune_im_speedup"] = median["finetune-kd"] / median["finetune"]
    tuned = [v for v in ("finetune", "finetune-kd", "finetune-teacher") if v in median]
    if tuned:
        result["finetune_images_per_s"] = {v: args.batch_size / median[v] for v in tuned}
    if not args.no_memory:
        memory = peak_memory(args, device)
        result["memory_mb"] = memory
        if "plain" in memory:
            key = "step_mb"
            result["memory_ratio"] = {v: memory[v][key] / memory["plain"][key] for v in memory if v != "plain"}
            if "rss_step_mb" in memory["plain"]:
                result["rss_ratio"] = {v: memory[v]["rss_step_mb"] / memory["plain"]["rss_step_mb"]
                                       for v in memory if v != "plain"}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
