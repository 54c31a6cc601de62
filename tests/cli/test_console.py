"""The console tells the truth: what a run starts, what convert did not do, -q, --version (issue 33)."""

from __future__ import annotations

import datasets
import huggingface_hub.constants
import pytest
import torch
from typer.testing import CliRunner

import adnify
from adnify.cli import app
from adnify.io.data import load_image_data

runner = CliRunner()
FAST = ["--epochs", "1", "--batch-size", "8", "--input-size", "3,32,32", "--set", "workers=0",
        "--set", "warmup_epochs=0", "--set", "amp=false", "--max-steps", "2"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folder(tmp_path):
    """A folder of 24 real digits as PNG files (the data a new user has)."""
    data = load_image_data("builtin:digits")
    for i in range(24):
        row = data.train[i]
        path = tmp_path / "digits" / str(row["label"])
        path.mkdir(parents=True, exist_ok=True)
        row["image"].save(path / f"{i}.png")
    return tmp_path / "digits"


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    adnify.convert("resnet18", channels=(8, 16, 32, 64), stem_width=8, num_classes=10).save(str(tmp_path / "m"))
    return tmp_path / "m"


def test_version_prints_the_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"adnify {adnify.__version__}"


def test_convert_without_output_or_weights_says_what_it_did_not_do():
    result = runner.invoke(app, ["convert", "resnet18", "--num-classes", "10"])
    assert result.exit_code == 0
    assert "nothing was saved: add -o DIR" in result.output
    assert "the weights are random" in result.output and "--pretrained" in result.output


def test_a_run_prints_what_it_starts_before_the_first_step(offline, folder, model_dir, tmp_path):
    result = runner.invoke(app, ["train", str(model_dir), "--data", str(folder), "-o", str(tmp_path / "run"),
                                 *FAST, "--set", "cooldown_epochs=2", "--set", "sched=cosine"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "resnet18: 4 adaptive stages, 16 sub-networks" in out
    assert f"trained, from {model_dir}" in out
    assert "21 training, 3 validation images, 10 classes" in out  # 10% of 24 held out, rounded up
    assert "schedule   1 + 2 cooldown epochs, 2 steps each" in out
    assert "8 (8 per process x 1), learning rate 0.00313 (lr_base 0.1 x 8/256)" in out
    assert "cpu, float32, run directory" in out
    assert "Downloading" not in out and "Generating" not in out


def test_training_from_random_weights_says_so(offline, folder, tmp_path):
    result = runner.invoke(app, ["train", "resnet18", "--data", str(folder), "-o", str(tmp_path / "run"), *FAST,
                                 "-q"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2, lines  # -q: the header in one line, and the final line
    assert lines[0].startswith("training resnet18 (16 sub-networks), weights random")
    assert lines[1].startswith("stopped at step 2")
