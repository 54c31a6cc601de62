"""Training and evaluation inputs: timm transforms, a reproducible training loader, mixup.

The training loader is built so that a resumed run sees exactly the images an uninterrupted run
would have seen: the shuffle order is a function of ``(seed, epoch)`` only, and every image's
random augmentation is drawn from its own generator seeded by ``(seed, epoch, index)``. Nothing
depends on the global random state, on the number of workers, or on where an epoch was resumed
(``accelerate.skip_first_batches`` skips batches without loading them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import AdnifyError
from ..io.data import ImageData, ImageRows, make_loader

__all__ = ["EpochSampler", "SeededImages", "Transforms", "build_mixup", "build_transforms", "eval_loader",
           "train_loader"]


@dataclass
class Transforms:
    train: Callable
    eval: Callable
    input_size: tuple[int, int, int]


def build_transforms(model: nn.Module, config: dict[str, Any]) -> Transforms:
    """timm's training and evaluation transforms for ``model``'s data config and the recipe."""
    from timm.data import create_transform, resolve_model_data_config

    data_cfg = resolve_model_data_config(model)
    size = tuple(config["input_size"]) if config.get("input_size") else tuple(data_cfg["input_size"])
    mean, std = data_cfg["mean"], data_cfg["std"]
    train = create_transform(
        size, is_training=True, scale=tuple(config["scale"]), ratio=tuple(config["ratio"]), hflip=config["hflip"],
        color_jitter=config["color_jitter"], auto_augment=config["aa"], interpolation=config["train_interpolation"],
        re_prob=config["reprob"], mean=mean, std=std,
    )
    evaluation = create_transform(size, is_training=False, interpolation=data_cfg.get("interpolation", "bilinear"),
                                  crop_pct=data_cfg.get("crop_pct"), mean=mean, std=std)
    return Transforms(train, evaluation, size)  # type: ignore[arg-type]


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)``: a permutation that depends only on ``(seed, epoch)``.

    With ``limit``, each epoch is the first ``limit`` indices of its permutation: a fresh seeded
    draw of that many examples every epoch (the recipe's ``epoch_images``).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, limit: int | None = None) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0
        self.limit = size if limit is None else min(limit, size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        return iter([(self.epoch, i) for i in order[: self.limit]])

    def __len__(self) -> int:
        return self.limit


class SeededImages(torch.utils.data.Dataset):
    """``dataset[(epoch, index)] -> (image tensor, label or -1)``, augmented reproducibly.

    The global python/numpy/torch random states are saved and restored around each image, so
    loading data (also ahead of time, as accelerate's loader does) never shifts the random
    streams that mixup and drop-path use.
    """

    def __init__(self, data: ImageData, transform: Callable, seed: int) -> None:
        self.rows, self.transform, self.seed = ImageRows(data.train, data, None), transform, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        row = self.rows[int(index)]  # decoded; the transform's random draws are seeded below
        seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + int(index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                image = self.transform(row["image"])
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return image, row["label"]


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in batch]).float(), torch.tensor([b[1] for b in batch], dtype=torch.long)


def train_loader(data: ImageData, transform: Callable, config: dict[str, Any], num_processes: int
                 ) -> tuple[torch.utils.data.DataLoader, EpochSampler]:
    """The shuffled training loader (full batches only, as mixup needs) and its sampler."""
    if data.train is None or len(data.train) == 0:
        raise AdnifyError(f"{data.source} has no training examples")
    batch, n = config["batch_size"], len(data.train)
    if config["epoch_images"] is not None:
        n = min(n, config["epoch_images"])
    if n < batch * num_processes:
        raise AdnifyError(
            f"{data.source} has {n} training images, fewer than one global batch of {batch * num_processes} "
            f"({batch} x {num_processes} processes): lower the batch size, e.g. --batch-size {max(1, n // num_processes)}"
        )
    sampler = EpochSampler(len(data.train), config["seed"], limit=n)
    workers = config["workers"]
    loader = torch.utils.data.DataLoader(
        SeededImages(data, transform, config["seed"]), batch_size=batch, sampler=sampler, drop_last=True,
        num_workers=workers, collate_fn=_collate, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(config["seed"]),  # not the global RNG
    )
    return loader, sampler


def eval_loader(data: ImageData, transform: Callable, config: dict[str, Any]) -> torch.utils.data.DataLoader | None:
    """The validation loader, or None when there is no validation split."""
    if data.validation is None or len(data.validation) == 0:
        return None
    return make_loader(data.validation, data, transform, batch_size=config["batch_size"],
                       num_workers=min(config["workers"], 2))


def calibration_loader(data: ImageData, transform: Callable, config: dict[str, Any]) -> Any:
    """Training images with evaluation transforms, a seeded random ``calibrate_skip_norms`` of them, or None."""
    count = config["calibrate_skip_norms"]
    if count <= 0 or data.train is None or len(data.train) == 0:
        return None
    order = np.random.default_rng(config["seed"]).permutation(len(data.train))[:count]
    subset = data.train.select(np.sort(order), keep_in_memory=True)
    return make_loader(subset, data, transform, batch_size=config["batch_size"], shuffle=True,
                       num_workers=min(config["workers"], 2), seed=config["seed"])


def build_mixup(config: dict[str, Any], num_classes: int) -> Any:
    """timm ``Mixup`` when mixup or cutmix is on, else None (label smoothing is folded into it)."""
    if config["mixup"] <= 0 and config["cutmix"] <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=config["mixup"], cutmix_alpha=config["cutmix"], prob=config["mixup_prob"],
                 switch_prob=config["mixup_switch_prob"], mode=config["mixup_mode"],
                 label_smoothing=config["smoothing"], num_classes=num_classes)
