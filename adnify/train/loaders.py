"""Training inputs: timm's training transform, a reproducible training loader, mixup.

Evaluation (validation, calibration) uses the one evaluation pipeline of ``adnify report``:
:func:`adnify.report.evaluate.eval_transform` and :func:`~adnify.report.evaluate.eval_loader`.

The training loader is built so that a resumed run sees exactly the images an uninterrupted run
would have seen: the shuffle order is a function of ``(seed, epoch)`` only, and every image's
random augmentation is drawn from its own generator seeded by ``(seed, epoch, index)``. Nothing
depends on the global random state, on the number of workers, or on where an epoch was resumed
(``accelerate.skip_first_batches`` skips batches without loading them).

An image that cannot be decoded is replaced by the next row that can (as timm's ``ImageDataset``
does), so a batch stays full (mixup needs that) and the run goes on; the batch names it, and the loop
counts it against the recipe's ``max_broken_fraction``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..adaptive import AdaptiveNet
from ..errors import AdnifyError
from ..io.data import ImageData
from ..io.images import BrokenImage, ImageRows, collate_images, decode_image, make_loader
from ..report.evaluate import eval_transform

__all__ = ["EpochSampler", "SeededImages", "Transforms", "build_mixup", "build_transforms", "calibration_loader",
           "train_loader"]


@dataclass
class Transforms:
    train: Callable
    eval: Callable
    input_size: tuple[int, int, int]


def build_transforms(net: AdaptiveNet, config: dict[str, Any]) -> Transforms:
    """timm's training transform for ``net``'s data config and the recipe, and the evaluation transform
    of ``adnify report`` (:func:`~adnify.report.evaluate.eval_transform`), both at the recipe's input size."""
    from timm.data import create_transform, resolve_model_data_config

    size = net.input_size(config.get("input_size"))
    data_cfg = resolve_model_data_config(net.model)
    train = create_transform(
        size, is_training=True, scale=tuple(config["scale"]), ratio=tuple(config["ratio"]), hflip=config["hflip"],
        color_jitter=config["color_jitter"], auto_augment=config["aa"], interpolation=config["train_interpolation"],
        re_prob=config["reprob"], mean=data_cfg["mean"], std=data_cfg["std"],
    )
    _posterize_any_pillow(train)
    return Transforms(train, eval_transform(net, size), size)


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize, with 0 bits kept giving a black image as Pillow < 13 did (Pillow 13 raises)."""
    from PIL import Image
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep)


def _posterize_any_pillow(transform: Any) -> int:
    """Give the posterize ops of timm's RandAugment/AutoAugment inside ``transform`` :func:`_posterize`.

    RandAugment with increasing magnitudes (the ``deit`` and ``swin`` recipes' ``rand-m9-mstd0.5-inc1``)
    asks to keep 0 bits when the sampled magnitude reaches its maximum, for a few images in a thousand;
    timm passes that to Pillow, which raises from version 13 on and stops the training run.
    Returns the number of ops patched.
    """
    from timm.data.auto_augment import posterize

    patched = 0
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is posterize:
                op.aug_fn = _posterize
                patched += 1
    return patched


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


#: Rows tried in a row before the data is taken for something that is not images at all.
MAX_CONSECUTIVE_BROKEN = 16


class SeededImages(torch.utils.data.Dataset):
    """``dataset[(epoch, index)] -> {"image": tensor, "label": int or -1, "broken": name or None}``,
    augmented reproducibly; a broken row is replaced by the next decodable one (``broken`` names it).

    The global python/numpy/torch random states are saved and restored around each image, so
    loading data (also ahead of time, as accelerate's loader does) never shifts the random
    streams that mixup and drop-path use.
    """

    def __init__(self, data: ImageData, transform: Callable, seed: int) -> None:
        self.rows, self.transform, self.seed = ImageRows(data.train, data, None), transform, seed
        self.source = data.source

    def __len__(self) -> int:
        return len(self.rows)

    def _decoded(self, index: int) -> tuple[Any, int, str | None]:
        """Row ``index``'s image and label, or the next decodable row's, and ``index``'s name if it is broken."""
        rows, broken, names = self.rows, None, []
        for offset in range(MAX_CONSECUTIVE_BROKEN):
            i = (index + offset) % len(rows)
            row = rows.ds[i]
            try:
                image = decode_image(row[rows.image_column], i)
            except BrokenImage as e:
                names.append(str(e))
                broken = broken or str(e)
                continue
            label = row[rows.label_column] if rows.label_column else None
            return image, -1 if label is None else int(label), broken
        raise AdnifyError(f"{MAX_CONSECUTIVE_BROKEN} images in a row of {self.source} cannot be decoded, from "
                          f"{'; '.join(names[:3])}: is it the right data? (recipe key max_broken_fraction)")

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        image, label, broken = self._decoded(int(index))  # the transform's random draws are seeded below
        seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + int(index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed % 2**63)  # the same draws as before for every seed that fitted
                image = self.transform(image)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return {"image": image, "label": label, "broken": broken}


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
        num_workers=workers, collate_fn=collate_images, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(config["seed"]),  # not the global RNG
    )
    return loader, sampler


def calibration_loader(data: ImageData, transform: Callable, config: dict[str, Any],
                       key: str = "calibrate_skip_norms") -> Any:
    """Training images with ``transform``, a seeded random ``config[key]`` of them, or None."""
    count = config[key]
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
