"""Image classification data for ``adnify train`` and ``adnify report``.

One entry point, :func:`load_image_data`, reads any of:

- ``builtin:digits``: scikit-learn's 1797 handwritten digits (8x8, upscaled to 32x32 RGB), offline;
- a local image folder: class subfolders, or a flat folder with ``metadata.csv`` (``file_name,label``),
  optionally split into ``train/``, ``validation/``... subfolders;
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
- a folder in the Hugging Face Hub layout (parquet shards and a dataset card), or table files
  (parquet, arrow, csv, json) or folders of them;
- a Hugging Face Hub dataset name (needs the Hub, or its local cache with ``HF_HUB_OFFLINE=1``).

:func:`make_loader` then decodes images lazily, row by row (a corrupt one is named), through a timm transform.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image

from ..errors import AdnifyError, first_line
from .hub import hub_or_cache

__all__ = ["ImageData", "check_labels", "load_image_data"]

BUILTINS = ("digits",)
VALIDATION_SPLITS = ("validation", "valid", "val", "test")
IMAGE_NAMES = ("image", "img", "pixel_values")
LABEL_NAMES = ("label", "labels", "target", "class")
TABLE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class ImageData:
    """Image classification data, split into training and evaluation parts.

    Attributes:
        train: Training examples; None when only evaluation data exists.
        validation: Evaluation examples; None when there are none (``val_split=0``).
        image_column: Column holding the images.
        label_column: Column holding integer labels; None without labels.
        num_classes: Number of classes the labels index into; None without labels.
        class_names: One name per class, when known.
        source: What the user passed, for records.
    """

    train: datasets.Dataset | None
    validation: datasets.Dataset | None
    image_column: str
    label_column: str | None
    num_classes: int | None
    class_names: list[str] | None
    source: str


def load_image_data(
    source: str,
    *,
    split: str | None = None,
    val_split: float = 0.1,
    image_column: str | None = None,
    label_column: str | None = None,
    labels: bool = True,
    seed: int = 0,
) -> ImageData:
    """Load an image classification dataset and pick its training and evaluation splits.

    Args:
        source: ``builtin:digits``, a local folder (images or ``save_to_disk``), or a Hub dataset name.
        split: The split to evaluate on; training then uses the ``train`` split, if it is another one.
            Default: ``train`` for training and the first of validation/valid/val/test for evaluation.
        val_split: Fraction of the training split held out for evaluation when no evaluation split
            exists (also when the only split has another name); 0 holds out nothing.
        image_column: Image column; default: the first ``Image`` feature, else image/img/pixel_values.
        label_column: Label column; default: the first ``ClassLabel``, else label/labels/target/class.
        labels: False ignores labels (``--labels none``).
        seed: Seed of the held-out split.

    Returns:
        The data, its columns and classes.

    Raises:
        AdnifyError: The data cannot be found or read, is empty, or lacks a given column or split.

    Example:
        >>> data = load_image_data("builtin:digits")
        >>> data.num_classes, len(data.train), len(data.validation)
        (10, 1617, 180)
    """
    if not 0 <= val_split < 1:
        raise AdnifyError(f"val_split must be in [0, 1), not {val_split}")
    splits = _load_splits(source)
    if sum(len(ds) for ds in splits.values()) == 0:
        raise AdnifyError(f"{source} holds no examples")
    first = next(iter(splits.values()))
    image_column = _pick_column(first, image_column, "image", _is_image_column)
    feature = first.features[image_column]
    if isinstance(feature, (datasets.Value, datasets.ClassLabel)) and getattr(feature, "dtype", "int64") not in (
            "binary", "large_binary", "string", "large_string"):
        raise AdnifyError(f"column {image_column!r} of {source} holds {getattr(feature, 'dtype', feature)} values, "
                          "not images: pass --image-column with the column of images")
    label_column = _pick_column(first, label_column, "label", _is_label_column) if labels else None
    num_classes = class_names = None
    if label_column is not None:
        splits, num_classes, class_names = _classes(splits, label_column, source)
    train, validation = _pick_splits(splits, split, val_split, seed, source)
    data = ImageData(train, validation, image_column, label_column, num_classes, class_names, source)
    if num_classes is not None:
        check_labels(data, num_classes)
    return data


def check_labels(data: ImageData, num_classes: int) -> None:
    """Raise an AdnifyError if a label of ``data`` falls outside ``[0, num_classes)``.

    Args:
        data: The data to check; nothing to check without labels.
        num_classes: Size of the classifier head the labels index into.
    """
    if data.label_column is None:
        return
    for name, ds in (("training", data.train), ("validation", data.validation)):
        if ds is None or len(ds) == 0:
            continue
        low, high = _label_range(ds, data.label_column)
        bad = high if high is not None and high >= num_classes else low if low is not None and low < 0 else None
        if bad is not None:
            raise AdnifyError(
                f"label {bad} in column {data.label_column!r} of the {name} data of {data.source} (labels {low}..{high}) "
                f"does not fit a head of {num_classes} classes (0..{num_classes - 1}): pick another --label-column, "
                "use a head with more classes, or --labels none"
            )


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


# --- sources --------------------------------------------------------------------------------------


def _load_splits(source: str) -> dict[str, datasets.Dataset]:
    """All splits of ``source``, by name."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTINS:
            raise AdnifyError(f"unknown builtin dataset {name!r}: choose from {', '.join(BUILTINS)}")
        return {"train": _digits()}
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            builder = TABLE_FORMATS.get(path.suffix.lower())
            if builder is None:
                raise AdnifyError(f"{source} is a file of no known table format ({', '.join(TABLE_FORMATS)}): "
                                  "pass such a file, a dataset folder, a folder of images or a save_to_disk folder")
            return _load_local(builder, source, data_files={"train": str(path)})
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            try:
                return _as_dict(datasets.load_from_disk(str(path)))
            except IndexError:  # datasets cannot read back a saved dataset of 0 rows (0 shards)
                raise AdnifyError(f"{source} holds no examples") from None
        if _is_table_folder(path):
            return _load_local(str(path), source)
        return _image_folder(path)
    if _looks_like_path(source):
        raise AdnifyError(f"{source} does not exist")
    online = True
    try:
        with hub_or_cache() as online:
            return _as_dict(datasets.load_dataset(source))
    except Exception as e:
        reason = first_line(e)
        where = ("the Hub cannot be reached from here and its local cache lacks it" if not online
                 else f"{reason}; is the Hub reachable?")
        raise AdnifyError(
            f"could not load dataset {source!r} from the Hugging Face Hub ({where}): "
            "pass a local image folder, a save_to_disk folder or builtin:digits instead"
        ) from e


def _is_table_folder(path: Path) -> bool:
    """A folder ``datasets.load_dataset`` reads as tables: the Hub layout (a dataset card with
    ``configs``) or data files (parquet, arrow, csv, json) anywhere inside, rather than images."""
    card = path / "README.md"
    if card.is_file():
        parts = card.read_text(encoding="utf-8", errors="replace").split("---", 2)
        if len(parts) == 3 and not parts[0].strip() and "configs:" in parts[1]:
            return True
    # metadata.csv / metadata.jsonl belong to an image folder
    return any(p.suffix.lower() in TABLE_FORMATS and not p.name.startswith("metadata.") for p in path.rglob("*"))


def _load_local(path_or_builder: str, source: str, **kwargs: Any) -> dict[str, datasets.Dataset]:
    try:
        return _as_dict(datasets.load_dataset(path_or_builder, **kwargs))
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as e:
        raise AdnifyError(f"cannot read the dataset {source}: {first_line(e)}") from e


def _image_folder(path: Path) -> dict[str, datasets.Dataset]:
    """Read an image folder; top-level subfolders named like splits become splits.

    Files are listed explicitly: ``datasets`` would otherwise infer splits from file names
    (``n02917067_bullet_train.JPEG`` alone would become the train split).
    """
    subdirs = [p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subdirs and all(name.lower() in ("train", *VALIDATION_SPLITS) for name in subdirs):
        data_files = {name.lower(): f"{name}/**" for name in subdirs}
    else:
        data_files = {"train": "**"}
    extensions = set(ImageFolder.EXTENSIONS)
    if not any(p.suffix.lower() in extensions for p in path.rglob("*")):
        raise AdnifyError(f"no images found in {path}")
    try:
        return _as_dict(datasets.load_dataset("imagefolder", data_dir=str(path), data_files=data_files))
    except (ValueError, FileNotFoundError) as e:
        raise AdnifyError(f"cannot read the image folder {path}: {first_line(e)}") from e


def _digits() -> datasets.Dataset:
    """scikit-learn's digits as 32x32 RGB images with a 10-class ClassLabel."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise AdnifyError(
            'builtin:digits needs scikit-learn: pip install scikit-learn (or pip install "adnify[builtin-data]")'
        ) from e
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    images = [Image.fromarray(p).resize((32, 32), Image.BILINEAR).convert("RGB") for p in pixels]
    features = datasets.Features(
        image=datasets.Image(), label=datasets.ClassLabel(names=[str(i) for i in range(10)])
    )
    return datasets.Dataset.from_dict({"image": images, "label": digits.target}, features=features)


def _as_dict(loaded: datasets.Dataset | datasets.DatasetDict) -> dict[str, datasets.Dataset]:
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _looks_like_path(source: str) -> bool:
    """True for ``/x``, ``./x``, ``~/x``, ``a/b/c``; Hub names are ``name`` or ``owner/name``."""
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1


# --- columns, classes and splits ------------------------------------------------------------------


def _pick_column(ds: datasets.Dataset, given: str | None, kind: str, test: Callable) -> str | None:
    """The ``given`` column (which must exist), else the first column that passes ``test``."""
    if given is not None:
        if given not in ds.column_names:
            raise AdnifyError(f"no {kind} column {given!r}: the columns are {', '.join(ds.column_names)}")
        return given
    for strict in (True, False):
        for name, feature in ds.features.items():
            if test(name, feature, strict):
                return name
    if kind == "image":
        raise AdnifyError(f"no image column found among {', '.join(ds.column_names)}: pass --image-column")
    return None


def _is_image_column(name: str, feature: Any, strict: bool) -> bool:
    return isinstance(feature, datasets.Image) if strict else name.lower() in IMAGE_NAMES


def _is_label_column(name: str, feature: Any, strict: bool) -> bool:
    return isinstance(feature, datasets.ClassLabel) if strict else name.lower() in LABEL_NAMES


def _classes(
    splits: dict[str, datasets.Dataset], column: str, source: str
) -> tuple[dict[str, datasets.Dataset], int, list[str] | None]:
    """Number and names of the classes; string labels are encoded as a ClassLabel (sorted names)."""
    feature = next(iter(splits.values())).features[column]
    if isinstance(feature, datasets.ClassLabel):
        return splits, feature.num_classes, list(feature.names)
    dtype = feature.pa_type if isinstance(feature, datasets.Value) else None
    if dtype is not None and (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)):
        names = sorted({y for ds in splits.values() for y in ds.unique(column) if y is not None})
        label = datasets.ClassLabel(names=names)
        return {k: ds.cast_column(column, label) for k, ds in splits.items()}, len(names), names
    if dtype is None or not pa.types.is_integer(dtype):
        raise AdnifyError(f"label column {column!r} holds {feature}, not integers or strings")
    folder = Path(source).expanduser()
    names = _classes_txt(folder / "classes.txt") if folder.is_dir() else None
    if names is not None:
        return splits, len(names), names
    highs = [_label_range(ds, column)[1] for ds in splits.values() if len(ds)]
    return splits, max((h for h in highs if h is not None), default=-1) + 1, None


def _classes_txt(path: Path) -> list[str] | None:
    """Class names from ``classes.txt``, one per line: ``name`` or ``id<TAB>name`` (e.g. an ImageNet wnid)."""
    if not path.is_file():
        return None
    lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return [line.split("\t", 1)[-1].strip() for line in lines if line.strip()]


def _label_range(ds: datasets.Dataset, column: str) -> tuple[int | None, int | None]:
    values = ds.select_columns(column).with_format("arrow")[:][column]
    low_high = pc.min_max(values)
    return low_high["min"].as_py(), low_high["max"].as_py()


def _pick_splits(
    splits: dict[str, datasets.Dataset], split: str | None, val_split: float, seed: int, source: str
) -> tuple[datasets.Dataset | None, datasets.Dataset | None]:
    """Training and evaluation splits (see :func:`load_image_data`)."""
    if split is not None:
        if split not in splits:
            raise AdnifyError(f"no split {split!r} in {source}: the splits are {', '.join(splits)}")
        train = splits["train"] if "train" in splits and split != "train" else None
        return train, _non_empty(splits[split], split, source)
    val_name = next((name for name in VALIDATION_SPLITS if name in splits), None)
    if "train" in splits:
        train_name = "train"
    elif len(splits) == 1:
        train_name, val_name = next(iter(splits)), None
    elif val_name is not None:
        return None, _non_empty(splits[val_name], val_name, source)
    else:
        raise AdnifyError(f"no train or validation split in {source}: pick one of {', '.join(splits)} with --split")
    train = _non_empty(splits[train_name], train_name, source)
    if val_name is not None:
        return train, _non_empty(splits[val_name], val_name, source)
    if val_split <= 0:
        return train, None
    if len(train) < 2:
        raise AdnifyError(f"{source} has {len(train)} example: too few to hold out a validation split")
    # Indices kept in memory: no index cache written beside the data (e.g. into a save_to_disk folder).
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = min(max(1, math.ceil(len(train) * val_split)), len(train) - 1)
    validation = train.select(np.sort(order[:n_val]), keep_in_memory=True)
    return train.select(np.sort(order[n_val:]), keep_in_memory=True), validation


def _non_empty(ds: datasets.Dataset, name: str, source: str) -> datasets.Dataset:
    if len(ds) == 0:
        raise AdnifyError(f"the {name} split of {source} is empty")
    return ds
