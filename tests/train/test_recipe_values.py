"""Every numeric recipe key set to 0, -1 and 10^9 through the Python API, with a module as the source: the run
either trains or stops with one line before its first step (never a traceback, never a lost model after an
epoch of training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import adnify
from adnify.errors import AdnifyError
from adnify.train import train
from adnify.train.recipe_schema import SCHEMA
from adnify.train.recipes import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

NUMERIC = sorted(k for k, spec in SCHEMA.items() if spec.type in (int, float))
VALUES = (0, -1, 10**9)
# 17 training images in batches of 8: 2 steps per epoch, one of which runs; calibrating on all of them ends in
# a batch of one (at 32 px the last stage's BatchNorm sees one value per channel).
FAST = dict(epochs=1, batch_size=8, lr=0.02, workers=0, input_size=(3, 32, 32), log_interval=1, warmup_epochs=0,
            amp=False, eval_every_epochs=1)


@pytest.fixture(scope="module")
def digits(save_digits) -> Path:
    return save_digits(17, 8)


def test_the_sweep_covers_every_numeric_key():
    assert len(NUMERIC) >= 38 and {"lr", "lr_base_size", "momentum", "smoothing", "workers", "seed"} <= set(NUMERIC)


@pytest.mark.parametrize("key", NUMERIC)
def test_a_numeric_key_at_0_minus_1_and_a_billion_trains_or_stops_before_the_first_step(key, tiny_adn_dir, digits,
                                                                                      tmp_path):
    for value in VALUES:
        out = tmp_path / f"{key}={value}"
        overrides = {**FAST, key: value}
        try:
            load_recipe("resnet", overrides)
        except AdnifyError as err:  # refused while reading the recipe: nothing ran
            assert "\n" not in str(err) and key in str(err), (value, str(err))
            continue
        try:
            result = train(adnify.load(tiny_adn_dir), data=str(digits), output=out, recipe="resnet", overrides=overrides,
                           max_steps=1, progress=False)
        except AdnifyError as err:
            assert "\n" not in str(err), (value, str(err))
            metrics = out / "metrics.jsonl"
            steps = [r for r in map(json.loads, metrics.read_text().splitlines())
                     if r["kind"] == "train"] if metrics.exists() else []
            assert not steps, f"{key}={value} stopped after a step: {err}"
            continue
        assert result.step == 1 and (out / "final" / "adnify.json").is_file(), (key, value)
