"""What the training tests share: real digits saved to disk, a tiny converted ResNet, an offline one-thread run."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import datasets
import huggingface_hub.constants
import pytest
import torch

import adnify
from adnify.io.data import load_image_data

#: A tiny ResNet-18 whose every branch is live (no zero-initialised last norms).
TINY_RESNET = dict(channels=(8, 16, 32, 64), stem_width=8, zero_init_last=False)


@pytest.fixture
def offline_one_thread(tmp_path_factory, monkeypatch):
    """One thread (small convolutions on a shared CPU are fastest so) and no hub, in a private datasets cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def save_digits(tmp_path_factory) -> Callable[[int, int], Path]:
    """``save_digits(train, validation)``: a save_to_disk folder of that many real digits (10 classes)."""
    def save(train: int, validation: int) -> Path:
        data = load_image_data("builtin:digits")
        path = tmp_path_factory.mktemp("data") / "digits"
        datasets.DatasetDict(train=data.train.select(range(train)),
                             validation=data.validation.select(range(validation))).save_to_disk(str(path))
        return path
    return save


@pytest.fixture(scope="session")
def save_tiny_adn(tmp_path_factory) -> Callable[[int], Path]:
    """``save_tiny_adn(classes)``: the tiny ResNet-18 with that many classes, converted and saved (seed 0)."""
    def save(classes: int) -> Path:
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("models") / f"tiny-adn-{classes}"
        adnify.convert("resnet18", num_classes=classes, **TINY_RESNET).save(str(path))
        return path
    return save


@pytest.fixture(scope="session")
def tiny_adn_dir(save_tiny_adn) -> Path:
    """The tiny ResNet-18 with 10 classes, converted and saved (seed 0)."""
    return save_tiny_adn(10)
