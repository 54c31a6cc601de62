"""Rows of image data -> batches: images decoded lazily, row by row (a corrupt one is named by its
row and file), through a transform, collated into ``(images, labels)``."""

from __future__ import annotations

import io
from typing import Any, Callable

import datasets
import numpy as np
import torch
from PIL import Image

from ..errors import AdnifyError, first_line
from .data import ImageData

__all__ = ["ImageRows", "collate_images", "decode_image", "make_loader", "undecoded"]


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
    """``rows[i] -> {"image": tensor, "label": int or -1}``: row ``i`` decoded here, so that a
    corrupt image is reported by its row (and file) instead of as a decoder's traceback."""

    def __init__(self, ds: datasets.Dataset, data: ImageData, transform: Callable | None) -> None:
        self.ds = undecoded(ds, data.image_column)
        self.transform, self.image_column, self.label_column = transform, data.image_column, data.label_column
        self.source = data.source

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.ds[int(index)]
        image = decode_image(row[self.image_column], int(index), self.source)
        label = row[self.label_column] if self.label_column else None
        return {"image": self.transform(image) if self.transform else image, "label": -1 if label is None else int(label)}


def undecoded(ds: datasets.Dataset, column: str) -> datasets.Dataset:
    """``ds`` with its ``Image`` column left as bytes: :func:`decode_image` decodes each one."""
    feature = ds.features.get(column)
    return ds.cast_column(column, datasets.Image(decode=False)) if isinstance(feature, datasets.Image) else ds


def decode_image(value: Any, index: int, source: str) -> Image.Image:
    """An RGB image from a decoded image, an array, or an undecoded ``{"bytes", "path"}`` cell."""
    try:
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            raw = value.get("bytes")
            image = Image.open(io.BytesIO(raw) if raw is not None else value["path"])
            image.load()
            return image.convert("RGB")
        return _to_rgb(value)
    except Exception as e:
        name = value.get("path") if isinstance(value, dict) else None
        what = f"row {index}" + (f" ({name})" if name else "")
        raise AdnifyError(f"the image in {what} of {source} cannot be decoded: {first_line(e, with_type=True)}; "
                          "remove or replace it") from None


def collate_images(examples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[{"image", "label"}, ...]`` -> ``(images [B, 3, H, W] float, labels [B] long)``."""
    images = torch.stack([torch.as_tensor(e["image"]) for e in examples]).float()
    return images, torch.tensor([e["label"] for e in examples], dtype=torch.long)


def _to_rgb(x: Any) -> Image.Image:
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    array = np.asarray(x)
    if array.dtype != np.uint8:
        array = np.clip(array * 255 if array.max() <= 1 else array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    return Image.fromarray(array.squeeze()).convert("RGB")
