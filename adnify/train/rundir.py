"""The run directory: what a training run leaves behind, and its atomic checkpoints.

::

    RUN_DIR/
      config.yaml          resolved recipe (a valid recipe file itself)
      run.json             how to rebuild the run: source, data, options
      start/               the model at step 0 (rebuilds the architecture on resume; the teacher with labels none)
      metrics.jsonl        one JSON object per logged step and per evaluation
      checkpoints/step_000120/   accelerate save_state folders, the last K kept
      final/               the trained model (adnify.load(RUN_DIR) reads it)
      tensorboard/         with --log-with tensorboard

All writes come from the main process; checkpoints are written to ``.step_N.tmp`` by every
process and renamed once complete, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import AdnifyError
from ..io.data import ImageData, load_image_data
from ..io.files import atomic_write_text

__all__ = ["RunDir", "run_image_data"]

_STEP_DIR = re.compile(r"^step_(\d+)$")


def run_image_data(info: dict[str, Any], seed: int) -> ImageData:
    """The data of a run as training splits it (``info``: run.json; ``seed``: the recipe's)."""
    return load_image_data(info["data"], split=info.get("eval_split"), val_split=info.get("val_split", 0.1),
                           image_column=info.get("image_column"), label_column=info.get("label_column"),
                           labels=True, seed=seed)


class RunDir:
    """Paths and files of one run."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.run_json = self.path / "run.json"
        self.start = self.path / "start"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"
        self.final_ema = self.path / "final_ema"

    # -- creation and resumption -----------------------------------------------------------

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        return (Path(path) / "run.json").is_file()

    def check_new(self, *, resume: bool, force: bool) -> None:
        """Refuse to start over an existing directory unless told how (main process, before anything)."""
        if resume:
            if not self.run_json.is_file():
                raise AdnifyError(f"cannot resume {self.path}: it is not a training run (no run.json)")
            return
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            if not force:
                raise AdnifyError(
                    f"{self.path} already exists: pass --resume to continue that run, or --force to start over"
                )

    def clear(self) -> None:
        """Start over (``--force``): remove what an earlier run wrote."""
        if self.path.is_dir():
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif self.path.exists():
            self.path.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def write_run(self, info: dict[str, Any]) -> None:
        atomic_write_text(self.run_json, json.dumps(info, indent=2, default=str) + "\n")

    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AdnifyError(f"cannot read {self.run_json}: {e}") from e

    def recipe(self) -> dict[str, Any]:
        """The run's resolved recipe (config.yaml)."""
        from .recipes import load_recipe

        if not self.config.is_file():
            raise AdnifyError(f"{self.path} has no config.yaml")
        return load_recipe(str(self.config))

    def image_data(self) -> ImageData:
        """The run's data with its validation split rebuilt exactly (same source, fraction and seed)."""
        return run_image_data(self.read_run(), self.recipe()["seed"])

    # -- metrics ------------------------------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (one line, flushed), stamped with the wall-clock ``time``."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "time": round(time.time(), 1)}) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop records written after the checkpoint being resumed (they will be redone)."""
        if not self.metrics.is_file():
            return
        keep = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        steps = [int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
        return sorted(steps)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:06d}"

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoint_steps()
        return self.checkpoint(steps[-1]) if steps else None

    def temp_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f".step_{step:06d}.tmp"

    def begin_checkpoint(self, step: int) -> Path:
        """Main process: an empty temporary folder for ``step`` (removing a stale one)."""
        tmp = self.temp_checkpoint(step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, step: int, keep: int) -> Path:
        """Main process: rename the finished temporary folder into place, then keep only the last ``keep``."""
        final, tmp = self.checkpoint(step), self.temp_checkpoint(step)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        for old_step in self.checkpoint_steps()[: -max(1, keep)]:
            shutil.rmtree(self.checkpoint(old_step), ignore_errors=True)
        return final

    def remove_stale(self) -> None:
        """Main process: drop temporary folders an interrupted save left behind."""
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                if p.name.startswith(".") and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
