"""The validation accuracy a run logs is what ``adnify report --data RUN`` measures on that run's split:
training and reporting evaluate through one pipeline (transform, loader, counting)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

import adnify
from adnify.io.data import load_image_data
from adnify.report import build_report
from adnify.train import train

# The model's timm data config squashes, not centre-crops, and crops much: with wide images the two
# crops see different pixels, so an evaluation that dropped crop_mode would score other images.
TINY = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=10, zero_init_last=False,
            pretrained_cfg_overlay={"crop_mode": "squash", "crop_pct": 0.75})
pytestmark = pytest.mark.usefixtures("one_thread")


def wide(image: Image.Image) -> Image.Image:
    """The digit on the left of a 64x32 canvas."""
    canvas = Image.new("RGB", (64, 32))
    canvas.paste(image, (0, 0))
    return canvas


@pytest.fixture()
def wide_digits(tmp_path) -> Path:
    """32 training and 100 validation digits on wide canvases (so top-1 moves in steps of 1%)."""
    data = load_image_data("builtin:digits")
    path = tmp_path / "digits"
    splits = {"train": data.train.select(range(32)), "validation": data.validation.select(range(100))}
    features = datasets.Features(image=datasets.Image(), label=data.train.features["label"])
    datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {"image": [wide(r["image"]) for r in ds], "label": ds["label"]}, features=features)
        for name, ds in splits.items()}).save_to_disk(str(path))
    return path


def test_last_logged_validation_accuracy_equals_the_report_on_the_runs_split(wide_digits, tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "tiny-adn"
    adnify.convert("resnet18", **TINY).save(str(model))
    run = tmp_path / "run"
    train(str(model), data=str(wide_digits), output=run, recipe="resnet", progress=False,
          overrides=dict(epochs=1, batch_size=8, lr=0.05, workers=0, input_size=(3, 32, 32), warmup_epochs=0, amp=False))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if r["kind"] == "eval"][-1]["acc1"]

    rows, context = build_report(adnify.load(run), "super,base", metrics="acc", data=str(run), device="cpu",
                                 progress=False)

    assert context["examples"] == 100
    assert {r["pattern"]: r["acc1"] for r in rows} == last
