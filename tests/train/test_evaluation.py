"""The validation ``adnify train`` runs: capped by ``eval_images``, shown on the bar, and null where not measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import adnify
from adnify.report.evaluate import evaluate_patterns
from adnify.train import train
from adnify.train.progress import TrainProgress

TINY = dict(channels=(8, 16, 32, 64), stem_width=8, zero_init_last=False)

FAST = dict(epochs=1, batch_size=8, lr=0.02, workers=0, input_size=(3, 32, 32), log_interval=1, warmup_epochs=0,
            amp=False, epoch_images=8)  # one step


pytestmark = pytest.mark.usefixtures("offline_one_thread")


@pytest.fixture(scope="module")
def digits(save_digits) -> Path:
    """16 training and 20 validation digits (10 classes)."""
    return save_digits(16, 20)


def model(tmp_path: Path, num_classes: int) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"tiny-{num_classes}"
    if not path.exists():
        adnify.convert("resnet18", num_classes=num_classes, **TINY).save(str(path))
    return path


def evals(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


def test_eval_images_caps_every_evaluation(digits, tmp_path):
    out = tmp_path / "run"
    train(str(model(tmp_path, 10)), data=str(digits), output=out, recipe="resnet", progress=False,
          overrides={**FAST, "eval_images": 7, "eval_before_training": True})
    assert [r["images"] for r in evals(out)] == [7, 7]
    full = tmp_path / "full"
    train(str(model(tmp_path, 10)), data=str(digits), output=full, recipe="resnet", progress=False, overrides=FAST)
    assert [r["images"] for r in evals(full)] == [20]


def test_a_label_free_run_on_labels_of_other_classes_logs_null_accuracy_not_zero(digits, tmp_path):
    """The labels (0..9) fit in the 12-class head's range, but they are not its classes: nothing to score."""
    out = tmp_path / "run"
    result = train(str(model(tmp_path, 12)), data=str(digits), output=out, recipe="resnet", progress=False,
                   overrides={**FAST, "labels": "none", "freeze_bn_stats": True})
    last = evals(out)[-1]
    assert set(last["acc1"]) == {"FFFF", "TTTT"} and all(v is None for v in last["acc1"].values())
    assert last["agreement"]["FFFF"] == 100.0 and last["kl_to_super"]["TTTT"] > 0
    assert result.evaluation["TTTT"]["acc1"] is None
    # labels of the head's own classes are still scored in a label-free run
    same = tmp_path / "same"
    train(str(model(tmp_path, 10)), data=str(digits), output=same, recipe="resnet", progress=False,
          overrides={**FAST, "labels": "none", "freeze_bn_stats": True})
    assert all(v is not None for v in evals(same)[-1]["acc1"].values())


def test_the_training_bar_shows_an_evaluation_while_it_runs():
    torch.manual_seed(0)
    net = adnify.convert("resnet18", num_classes=10, input_size=(3, 32, 32), **TINY)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    shown: list[tuple] = []
    with TrainProgress(True, 10, 0) as bar:
        with bar.evaluating("evaluating FFFF, TTTT") as update:
            def spy(done, total):
                shown.append((done, total, [t.description for t in bar._bar.tasks]))
                update(done, total)

            evaluate_patterns(net, ["super", "base"], torch.utils.data.DataLoader(data, batch_size=4), progress=spy)
        after = [t.description for t in bar._bar.tasks]
    assert shown[-1] == (2, 2, ["train", "evaluating FFFF, TTTT"])
    assert after == ["train"]  # gone once the evaluation ends
