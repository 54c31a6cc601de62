"""Specification of adnify.report.latency: interleaved, warmed-up, synchronised timing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from adnify.report import latency
from adnify.errors import AdnifyError
from adnify.report.latency import Timing, measure_interleaved, summarize, timing_context


def _recorders(names, calls):
    return {n: (lambda n=n: calls.append(n)) for n in names}


def test_each_repeat_calls_each_fn_once_after_warmup():
    calls: list[str] = []
    names = ["FFF", "TFF", "TTT"]
    result = measure_interleaved(_recorders(names, calls), warmup=2, repeats=10)
    warm, timed = calls[:6], calls[6:]
    assert sorted(warm) == sorted(names * 2)
    assert len(timed) == 30
    rounds = [timed[i : i + 3] for i in range(0, 30, 3)]
    assert all(sorted(r) == names for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1, "order should be shuffled across repeats"
    assert {n: len(t.samples_ms) for n, t in result.items()} == {n: 10 for n in names}


def test_order_is_seeded():
    a: list[str] = []
    b: list[str] = []
    measure_interleaved(_recorders("abcd", a), warmup=0, repeats=5, seed=3)
    measure_interleaved(_recorders("abcd", b), warmup=0, repeats=5, seed=3)
    assert a == b


def test_samples_come_from_timed_calls_only(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(latency, "_clock", lambda: now[0])
    cost = {"fast": 0.001, "slow": 0.004}  # seconds per call on the fake clock

    def make(name):
        def fn():
            now[0] += cost[name]
        return fn

    result = measure_interleaved({n: make(n) for n in cost}, warmup=3, repeats=4)
    assert result["fast"].samples_ms == pytest.approx([1.0] * 4)
    assert result["slow"].samples_ms == pytest.approx([4.0] * 4)


def test_slow_fn_measures_slower_than_fast_fn():
    result = measure_interleaved({"slow": lambda: time.sleep(0.02), "fast": lambda: None}, warmup=1, repeats=5)
    assert result["slow"].min_ms >= 15.0
    assert result["slow"].median_ms > result["fast"].median_ms + 10.0


def test_summary_statistics():
    samples = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 100.0]
    t = summarize("x", samples)
    assert t == Timing("x", 5.0, pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25)), 1.0, samples)
    assert summarize("one", [4.0]).iqr_ms == 0.0


def test_runs_under_inference_mode_unless_disabled():
    seen: list[bool] = []
    measure_interleaved({"a": lambda: seen.append(torch.is_inference_mode_enabled())}, warmup=1, repeats=1)
    measure_interleaved(
        {"a": lambda: seen.append(torch.is_inference_mode_enabled())}, warmup=0, repeats=1, inference=False
    )
    assert seen == [True, True, False]


def test_cuda_device_is_synchronised_around_each_timed_call(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    measure_interleaved({"a": lambda: events.append("call")}, warmup=0, repeats=2, device="cuda")
    assert events == ["sync", "call", "sync"] * 2


def test_progress_and_argument_checks():
    seen: list[tuple[int, int]] = []
    measure_interleaved({"a": lambda: None}, warmup=2, repeats=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    with pytest.raises(AdnifyError):
        measure_interleaved({}, repeats=1)
    with pytest.raises(AdnifyError):
        measure_interleaved({"a": lambda: None}, repeats=0)


def test_timing_context_fills_environment():
    ctx = timing_context(batch_size=8, input_size=[3, 224, 224], dtype=torch.float16, warmup=2, repeats=9)
    assert ctx.input_size == (3, 224, 224)
    assert ctx.dtype == "float16" and ctx.device == "cpu"
    assert ctx.threads == torch.get_num_threads()
    assert ctx.torch_version == torch.__version__
    assert (ctx.warmup, ctx.repeats, ctx.compile, ctx.static) == (2, 9, False, False)
