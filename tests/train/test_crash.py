"""A crash loses minutes, not an epoch: checkpoints come by the clock too, and ``--resume`` after ``kill -9``
mid-epoch continues at the same sample with the batches an uninterrupted run would have seen (issue 33)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adnify.train import train

pytestmark = pytest.mark.usefixtures("offline_one_thread")
REPO = Path(__file__).resolve().parents[2]
# 48 training images in batches of 8: 6 steps per epoch. A checkpoint due by the clock after every step,
# none by the step count, so that only the clock's can land mid-epoch.
FAST = dict(epochs=1, batch_size=8, lr=0.02, workers=0, input_size=(3, 32, 32), log_interval=1, warmup_epochs=0,
            amp=False, mixup=0.4, drop_path=0.1, checkpoint_every_steps=None, checkpoint_every_minutes=1e-9,
            keep_checkpoints=10)

KILLED_AT_STEP_4 = """
import os, signal, sys
from adnify.train import train

def kill(info):
    if info.step == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup: as a crash or an OOM kill

train(sys.argv[1], data=sys.argv[2], output=sys.argv[3], overrides={overrides!r}, progress=False, callbacks=[kill])
"""


def losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def digits(save_digits) -> Path:
    return save_digits(48, 16)


def test_resume_after_kill_9_mid_epoch_sees_the_same_next_batches(tiny_adn_dir, digits, tmp_path):
    whole = train(str(tiny_adn_dir), data=str(digits), output=tmp_path / "whole", overrides=FAST, progress=False)
    assert whole.step == 6
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_4.format(overrides=FAST), str(tiny_adn_dir),
                             str(digits), str(tmp_path / "part")], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    part = tmp_path / "part"
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == [f"step_00000{i}" for i in (1, 2, 3)]
    resumed = train(str(part), resume=True, progress=False)
    assert (resumed.status, resumed.step) == ("completed", 6)
    assert losses(part) == losses(tmp_path / "whole")  # steps 4 to 6 saw the same batches (and random draws)
    a, b = load_file(str(tmp_path / "whole" / "final" / "model.safetensors")), load_file(
        str(part / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_by_the_clock_are_on_by_default_and_off_at_0(tiny_adn_dir, digits, tmp_path):
    from adnify.train.recipes import load_recipe

    assert all(load_recipe(name)["checkpoint_every_minutes"] == 30 for name in ("resnet", "deit", "finetune"))
    train(str(tiny_adn_dir), data=str(digits), output=tmp_path / "off", progress=False,
          overrides={**FAST, "checkpoint_every_minutes": 0}, max_steps=3)
    steps = sorted(p.name for p in (tmp_path / "off" / "checkpoints").iterdir())
    assert steps == ["step_000003"]  # only the one a stop writes
