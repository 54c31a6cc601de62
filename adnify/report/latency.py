"""Latency of several callables measured side by side, fairly, on a noisy machine.

Follows timm ``benchmark.py``: warm-up calls first, then timed calls, the device
synchronised before and after each timed call, everything under
``torch.inference_mode`` (on by default here, so callers need not add it).
Unlike a loop per callable, :func:`measure_interleaved` runs every callable once
per repeat in a seeded, shuffled order, so thermal drift, a background job or a
frequency change hits all candidates alike instead of whichever ran last.

Example::

    fns = {p: (lambda p=p: model(x, skip=p)) for p in ("FFFF", "TTTT")}
    timings = measure_interleaved(fns, warmup=5, repeats=20)
    timings["TTTT"].median_ms
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import AdnifyError

_clock: Callable[[], float] = time.perf_counter  # replaced in tests by a fake clock


@dataclass
class Timing:
    """Wall-clock time of one callable, in milliseconds, over ``len(samples_ms)`` calls."""

    name: str
    median_ms: float
    iqr_ms: float  # interquartile range: 75th minus 25th percentile (linear interpolation)
    min_ms: float
    samples_ms: list[float]


@dataclass
class TimingContext:
    """What a latency number depends on; store it next to the numbers."""

    batch_size: int
    input_size: tuple[int, ...]
    dtype: str
    device: str
    threads: int
    warmup: int
    repeats: int
    torch_version: str
    compile: bool
    static: bool


def summarize(name: str, samples_ms: list[float]) -> Timing:
    """Median, interquartile range and minimum of ``samples_ms``."""
    if not samples_ms:
        raise AdnifyError(f"no latency samples for {name!r}")
    samples = list(samples_ms)
    if len(samples) > 1:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    return Timing(name, statistics.median(samples), iqr, min(samples), samples)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def measure_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 5,
    repeats: int = 20,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], Any] | None = None,
    seed: int = 0,
    inference: bool = True,
) -> dict[str, Timing]:
    """Time every callable in ``fns``, interleaved, and return a :class:`Timing` per name.

    Args:
        fns: name -> callable without arguments (one forward pass, say).
        warmup: untimed calls of each callable first (round-robin), not part of the samples.
        repeats: timed rounds; each round calls every callable exactly once, in an order
            shuffled with ``random.Random(seed)``.
        device: where the work runs; CUDA and MPS are synchronised before and after each
            timed call, so asynchronous kernels are counted.
        progress: called as ``progress(done, total)`` after each warm-up and timed round.
        seed: seed of the shuffled call order (the same seed gives the same order).
        inference: run everything under ``torch.inference_mode()``; pass ``False`` to time
            callables that need autograd.
    """
    if not fns:
        raise AdnifyError("nothing to measure: no callables given")
    if warmup < 0 or repeats < 1:
        raise AdnifyError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    sync = _synchronizer(torch.device(device))
    names = list(fns)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in names}
    total = warmup + repeats
    with torch.inference_mode(inference):
        for step in range(warmup):
            for name in names:
                fns[name]()
            sync()
            if progress is not None:
                progress(step + 1, total)
        gc.collect()
        for step in range(repeats):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                sync()
                start = _clock()
                fns[name]()
                sync()
                samples[name].append((_clock() - start) * 1000.0)
            if progress is not None:
                progress(warmup + step + 1, total)
    return {name: summarize(name, samples[name]) for name in names}


def timing_context(
    *,
    batch_size: int,
    input_size: tuple[int, ...],
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    compile: bool = False,
    static: bool = False,
) -> TimingContext:
    """A :class:`TimingContext` with the thread count and torch version filled in."""
    return TimingContext(
        batch_size=int(batch_size),
        input_size=tuple(int(s) for s in input_size),
        dtype=str(dtype).removeprefix("torch."),
        device=str(torch.device(device)),
        threads=torch.get_num_threads(),
        warmup=int(warmup),
        repeats=int(repeats),
        torch_version=torch.__version__,
        compile=bool(compile),
        static=bool(static),
    )
