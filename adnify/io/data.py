"""Image classification data for ``adnify train`` and ``adnify report``: :func:`load_image_data`
reads a source (:mod:`.data_sources`), picks its image and label columns, its classes and its
training and evaluation splits. :func:`adnify.io.images.make_loader` turns a split into batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import AdnifyError
from .data_sources import VALIDATION_SPLITS, read_splits

__all__ = ["ImageData", "check_labels", "load_image_data"]

IMAGE_NAMES = ("image", "img", "pixel_values")
LABEL_NAMES = ("label", "labels", "target", "class")


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
    splits = read_splits(source)
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
