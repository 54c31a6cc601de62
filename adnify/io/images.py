"""Rows of image data -> batches: images decoded lazily, row by row, through a transform, collated into
``(images, labels)``.

An image that cannot be decoded (truncated, empty, not an image) does not stop anything: its row comes
back as a black image labelled :data:`BROKEN`, so every batch keeps its shape (as ``accelerate`` needs
across processes), and the batch names it in :attr:`Batch.broken`. Evaluation leaves such rows out;
training reads a replacement (:mod:`adnify.train.loaders`), as timm's ``ImageDataset`` does.
"""

from __future__ import annotations

import io
from typing import Any, Callable

import datasets
import numpy as np
import torch
from PIL import Image

from ..errors import first_line
from .data import ImageData

__all__ = ["BROKEN", "Batch", "BrokenImage", "ImageRows", "collate_images", "decode_image", "make_loader",
           "undecoded"]

#: The label of a row whose image could not be decoded (-1 means "no label").
BROKEN = -2


class BrokenImage(Exception):
    """An image that cannot be decoded; ``str()`` is ``"NAME (reason)"``."""


class Batch(tuple):
    """``(images, labels)`` that also names the rows it could not decode (``broken``); moved to a device
    whole (accelerate calls ``.to``), and picklable from loader workers."""

    broken: tuple[str, ...]

    def __new__(cls, items: Any, broken: Any = ()) -> "Batch":
        batch = super().__new__(cls, items)
        batch.broken = tuple(broken)
        return batch

    def __reduce__(self) -> Any:
        return Batch, (tuple(self), self.broken)

    def to(self, *args: Any, **kwargs: Any) -> "Batch":
        return Batch((t.to(*args, **kwargs) for t in self), self.broken)


def make_loader(
    ds: datasets.Dataset,
    data: ImageData,
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches of ``(images [B, 3, H, W] float, labels [B] long)``, decoded lazily.

    Args:
        ds: ``data.train`` or ``data.validation``.
        data: The data ``ds`` comes from (for its columns).
        transform: Maps an RGB PIL image to a tensor, e.g. from ``timm.data.create_transform``.
        batch_size: Examples per batch.
        shuffle: Reshuffle every epoch, reproducibly from ``seed``.
        num_workers: Worker processes that decode images.
        drop_last: Drop the last incomplete batch.
        seed: Seed of the shuffling.

    Returns:
        A DataLoader; labels are -1 when the data has no labels.
    """
    return torch.utils.data.DataLoader(
        ImageRows(ds, data, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_images,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        persistent_workers=num_workers > 0,
    )


class ImageRows(torch.utils.data.Dataset):
    """``rows[i] -> {"image": tensor, "label": int or -1, "broken": name or None}``: row ``i`` decoded here,
    so that an undecodable image is named by its file (or row) and replaced by a black one labelled
    :data:`BROKEN` instead of ending the run."""

    def __init__(self, ds: datasets.Dataset, data: ImageData, transform: Callable | None) -> None:
        self.ds = undecoded(ds, data.image_column)
        self.transform, self.image_column, self.label_column = transform, data.image_column, data.label_column
        self.source = data.source

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.ds[int(index)]
        label = row[self.label_column] if self.label_column else None
        try:
            image, broken = decode_image(row[self.image_column], int(index)), None
        except BrokenImage as e:
            image, broken, label = Image.new("RGB", (256, 256)), str(e), BROKEN
        return {"image": self.transform(image) if self.transform else image,
                "label": -1 if label is None else int(label), "broken": broken}


def undecoded(ds: datasets.Dataset, column: str) -> datasets.Dataset:
    """``ds`` with its ``Image`` column left as bytes: :func:`decode_image` decodes each one."""
    feature = ds.features.get(column)
    return ds.cast_column(column, datasets.Image(decode=False)) if isinstance(feature, datasets.Image) else ds


def decode_image(value: Any, index: int) -> Image.Image:
    """An RGB image from a decoded image, an array, or an undecoded ``{"bytes", "path"}`` cell.

    Raises:
        BrokenImage: it cannot be decoded; named by its file, else by its row ``index``.
    """
    try:
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            raw = value.get("bytes")
            image = Image.open(io.BytesIO(raw) if raw is not None else value["path"])
            image.load()
            return _to_rgb(image)
        return _to_rgb(value)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        name = value.get("path") if isinstance(value, dict) else None
        raise BrokenImage(f"{name or f'row {index}'} ({first_line(e, with_type=True)})") from None


def collate_images(examples: list[dict[str, Any]]) -> Batch:
    """``[{"image", "label", "broken"}, ...]`` -> ``(images [B, 3, H, W] float, labels [B] long)`` as a
    :class:`Batch` naming its broken rows."""
    images = torch.stack([torch.as_tensor(e["image"]) for e in examples]).float()
    labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return Batch((images, labels), [e["broken"] for e in examples if e.get("broken")])


def _to_rgb(x: Any) -> Image.Image:
    if isinstance(x, Image.Image):
        return _pil_to_rgb(x)
    array = np.asarray(x)
    if array.dtype != np.uint8:
        array = np.clip(array * 255 if array.max() <= 1 else array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    return Image.fromarray(array.squeeze()).convert("RGB")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and 32-bit greyscale scaled to 8 bits (``convert`` would clip them
    to white), palette transparency through RGBA (``convert`` warns otherwise)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0
        return Image.fromarray((np.clip(array / high, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")
