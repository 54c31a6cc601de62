"""What the user sees (main process only) and what goes to metrics.jsonl and the trackers."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .header import epoch_label

__all__ = ["Meter", "TrainProgress", "console"]

console = Console()

class Meter:
    """Means of the loss parts since the last log line, and the throughput."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.images = 0
        self.started = time.perf_counter()

    def add(self, values: dict[str, float], images: int) -> None:
        for key, value in values.items():  # loss terms every step; gradient norms on probed steps only
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1
        self.images += images

    def pause(self, seconds: float) -> None:
        """Exclude time spent outside training steps (evaluation, checkpoints)."""
        self.started += seconds

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = {k: v / max(self.counts[k], 1) for k, v in self.sums.items()}
        out["images_per_s"] = self.images / elapsed
        return out


def _fmt(value: float) -> str:
    if value == 0 or math.isnan(value) or math.isinf(value):
        return f"{value:.3g}"
    return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.2e}"


def stats_line(values: dict[str, float], lr: float) -> str:
    parts = [f"loss {_fmt(values['loss'])}"]
    parts += [f"{key[5:]} {_fmt(v)}" for key, v in values.items() if key.startswith("loss_")]
    parts.append(f"lr {lr:.2e}")
    if "images_per_s" in values:
        parts.append(f"{values['images_per_s']:.0f} img/s")
    return "  ".join(parts)


class TrainProgress:
    """A rich progress bar over all steps of the run; does nothing when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        self._broken: set[str] = set()
        self._bar: Progress | None = None
        if enabled:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console, transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=done, stats="")

    def __enter__(self) -> "TrainProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, epoch: int, epochs: int, total: int, stats: str) -> None:
        """One step done in 0-based ``epoch`` of ``epochs`` set by the user (``total`` with the cooldown)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=epoch_label(epoch + 1, epochs, total), stats=stats)

    def print(self, message: str) -> None:
        if self.enabled:
            console.print(message, highlight=False, soft_wrap=True)

    def header(self, lines: list[str]) -> None:
        """What the run starts: shown also when the bar is off (``-q`` passes a one-line header)."""
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)

    def broken(self, name: str) -> None:
        """Name an undecodable image the first time it is met in the run, for the first few only."""
        if name not in self._broken and len(self._broken) < 10:
            self._broken.add(name)
            self.print(f"warning: skipped an image that cannot be decoded: {name}")

    @contextlib.contextmanager
    def evaluating(self, description: str) -> Iterator[Callable[[int, int | None], None]]:
        """A second line on the bar while an evaluation runs; yields ``update(done, total)`` (batches), the
        ``progress`` of :func:`adnify.report.evaluate.evaluate_patterns`."""
        if self._bar is None:
            yield lambda done, total: None
            return
        bar = self._bar
        task = bar.add_task(description, total=None, stats="")
        try:
            yield lambda done, total: bar.update(task, completed=done, total=total)
        finally:
            bar.remove_task(task)
