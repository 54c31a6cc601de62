"""Where image data is read from; :func:`read_splits` returns every split of a source, by name:

- ``builtin:digits``: scikit-learn's 1797 handwritten digits (8x8, upscaled to 32x32 RGB), offline;
- a local image folder: class subfolders, or a flat folder with ``metadata.csv`` (``file_name,label``),
  optionally split into ``train/``, ``validation/``... subfolders;
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
- a folder in the Hugging Face Hub layout (parquet shards and a dataset card), or table files
  (parquet, arrow, csv, json) or folders of them;
- a Hugging Face Hub dataset name (needs the Hub, or its local cache with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import datasets
import numpy as np
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image

from ..errors import AdnifyError, first_line
from .hub import hub_or_cache

__all__ = ["BUILTINS", "TABLE_FORMATS", "VALIDATION_SPLITS", "read_splits"]

BUILTINS = ("digits",)
VALIDATION_SPLITS = ("validation", "valid", "val", "test")
TABLE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


@contextlib.contextmanager
def progress_bars_off() -> Iterator[None]:
    """No ``datasets`` progress bars inside: reading local files downloads nothing, and its bars
    ("Downloading data", "Generating train split") would say otherwise."""
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def read_splits(source: str) -> dict[str, datasets.Dataset]:
    """All splits of ``source``, by name; only a download from the Hub shows ``datasets``' progress bars."""
    if source.startswith("builtin:") or Path(source).expanduser().exists():
        with progress_bars_off():
            return _read_splits(source)
    return _read_splits(source)


def _read_splits(source: str) -> dict[str, datasets.Dataset]:
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
