"""Real collections hold broken files: they are skipped, named and counted, never the end of a run (issue 33)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import adnify
from adnify.cli import app
from adnify.errors import AdnifyError
from adnify.io.data import load_image_data
from adnify.io.images import BROKEN, decode_image
from adnify.report.evaluate import eval_loader
from adnify.train import train


pytestmark = pytest.mark.usefixtures("offline_one_thread")
runner = CliRunner()

BROKEN_TRAIN = ("truncated.jpg", "empty.jpg", "garbage.JPEG")
UNUSUAL = ("cmyk.jpg", "grey.png", "grey_alpha.png", "palette.png", "rgba.png", "deep.png", "png_named.JPEG")
FAST = dict(epochs=1, batch_size=8, workers=0, input_size=(3, 32, 32), warmup_epochs=0, amp=False, log_interval=1,
            max_broken_fraction=0.5)


def build_folder(root: Path) -> Path:
    """train/ with 22 good images, one of each unusual mode and 3 broken files (32 in all: 4 full batches of 8);
    validation/ with 10 good images and 1 empty file."""
    rng = np.random.default_rng(0)

    def image(channel: int) -> Image.Image:
        pixels = rng.integers(0, 128, (40, 40, 3), dtype=np.uint8)
        pixels[..., channel] = 255
        return Image.fromarray(pixels)

    for split, good in (("train", 11), ("validation", 5)):
        for label, channel in (("a", 0), ("b", 2)):
            (root / split / label).mkdir(parents=True)
            for i in range(good):
                image(channel).save(root / split / label / f"{i}.png")
    a, base = root / "train" / "a", image(0)
    base.convert("CMYK").save(a / "cmyk.jpg")  # as in ImageNet's training set
    base.convert("L").save(a / "grey.png")
    base.convert("LA").save(a / "grey_alpha.png")
    base.convert("P").save(a / "palette.png", transparency=0)
    base.convert("RGBA").save(a / "rgba.png")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(a / "deep.png")  # 16-bit
    base.save(a / "png_named.JPEG", format="PNG")  # as in ImageNet's training set
    jpeg = io.BytesIO()
    base.save(jpeg, format="JPEG")
    (a / "truncated.jpg").write_bytes(jpeg.getvalue()[:200])
    (root / "train" / "b" / "empty.jpg").write_bytes(b"")
    (root / "train" / "b" / "garbage.JPEG").write_bytes(bytes(range(256)) * 4)
    (root / "validation" / "b" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_folder(tmp_path_factory.mktemp("broken") / "images")


@pytest.fixture(scope="module")
def model_dir(save_tiny_adn) -> Path:
    return save_tiny_adn(2)


@pytest.fixture(scope="module")
def trained(folder, model_dir, tmp_path_factory) -> tuple[Path, str]:
    """A run of one epoch through the CLI on the folder: (run directory, console output)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    sets = [f"--set={k}={list(v) if isinstance(v, tuple) else str(v).lower()}" for k, v in FAST.items()]
    result = runner.invoke(app, ["train", str(model_dir), "--data", str(folder), "-o", str(out), *sets])
    assert result.exit_code == 0, result.output
    return out, result.output


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_images_of_every_unusual_mode_decode_as_rgb(folder):
    for name in UNUSUAL:
        image = decode_image({"path": str(folder / "train" / "a" / name), "bytes": None}, 0)
        assert image.mode == "RGB" and image.size == (40, 40), name
    deep = np.asarray(decode_image({"path": str(folder / "train" / "a" / "deep.png"), "bytes": None}, 0))
    assert 0 < deep.mean() < 255 and deep.min() < deep.max()  # scaled to 8 bits, not clipped to white


def test_a_batch_that_loses_images_keeps_its_shape_and_names_them(folder, model_dir):
    data = load_image_data(str(folder), split="train")
    net = adnify.load(model_dir)
    batches = list(eval_loader(net, data, batch_size=8, input_size=(3, 32, 32)))
    assert all(images.shape == (8, 3, 32, 32) and labels.shape == (8,) for images, labels in batches)
    labels = torch.cat([labels for _, labels in batches])
    assert int((labels == BROKEN).sum()) == 3
    named = sorted(Path(name.split(" (")[0]).name for batch in batches for name in batch.broken)
    assert named == sorted(BROKEN_TRAIN)


def test_training_skips_counts_and_names_every_broken_image(trained):
    run, output = trained
    assert "3 training images could not be decoded and were skipped" in output
    assert all(name in output for name in BROKEN_TRAIN) and "empty.png" in output
    last = records(run, "train")[-1]
    assert last["broken_images"] == 3 and last["step"] == 4  # every image of the epoch was read: 4 full batches
    evaluation = records(run, "eval")[-1]
    assert (evaluation["broken_images"], evaluation["images"]) == (1, 10)


def test_report_leaves_broken_images_out_and_says_how_many(trained):
    run, _ = trained
    rows, context = adnify.report.build_report(adnify.load(run), "super,base", metrics=["acc"], data=run, progress=False)
    assert (context["examples"], context["broken_images"]) == (10, 1)
    assert [Path(n.split(" (")[0]).name for n in context["broken_names"]] == ["empty.png"]
    assert all(r["acc1"] is not None for r in rows)


def test_a_copied_final_model_is_measured_at_its_training_size_and_transform(trained, folder, tmp_path):
    run, _ = trained
    copy = tmp_path / "shipped"
    shutil.copytree(run / "final", copy)
    of_run = adnify.report.build_report(adnify.load(run), "super,base", metrics=["acc"], data=run, progress=False)
    of_copy = adnify.report.build_report(adnify.load(copy), "super,base", metrics=["acc"], data=str(folder),
                                         split="validation", progress=False)
    assert of_copy[1]["macs_input_size"] == of_run[1]["macs_input_size"] == [3, 32, 32]
    assert [r["acc1"] for r in of_copy[0]] == [r["acc1"] for r in of_run[0]]
    saved = json.loads((copy / "adnify.json").read_text())["source"]["data_config"]
    assert saved["input_size"] == [3, 32, 32] and {"crop_pct", "interpolation", "mean", "std"} <= saved.keys()
    info = runner.invoke(app, ["info", str(copy)])
    assert "input 3x32x32 (as trained)" in info.output


def test_a_mostly_broken_folder_stops_in_one_line_naming_files_and_the_key(folder, model_dir, tmp_path):
    with pytest.raises(AdnifyError) as err:  # 3 of 32 broken; 5% allows 2
        train(str(model_dir), data=str(folder), output=tmp_path / "run", overrides={**FAST, "max_broken_fraction": 0.05},
              progress=False)
    message = str(err.value)
    assert "\n" not in message and "max_broken_fraction" in message and "3 images" in message
    assert any(name in message for name in BROKEN_TRAIN)


def test_resume_on_data_that_changed_size_is_one_line(folder, model_dir, tmp_path):
    data = tmp_path / "images"
    shutil.copytree(folder, data)
    out = tmp_path / "run"
    train(str(model_dir), data=str(data), output=out, overrides=FAST, max_steps=1, progress=False)
    (data / "train" / "a" / "0.png").unlink()
    with pytest.raises(AdnifyError) as err:
        train(str(out), resume=True, progress=False)
    assert "\n" not in str(err.value) and "31 training" in str(err.value) and "32" in str(err.value)
