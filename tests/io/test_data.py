"""adnify.io.data: what a user can point ``--data`` at, and what train/report then get."""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
import torch
from PIL import Image

from adnify.errors import AdnifyError
from adnify.io.data import ImageData, check_labels, load_image_data
from adnify.io.images import make_loader


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A stand-in for a timm transform: RGB PIL image -> float [3, 16, 16]."""
    assert image.mode == "RGB"
    pixels = torch.tensor(list(image.resize((16, 16)).getdata()), dtype=torch.float32)
    return pixels.T.reshape(3, 16, 16) / 255


def save_image(path: Path, value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (20, 12), value if mode == "L" else (value, 0, 0)).save(path)


@pytest.fixture(autouse=True)
def offline_private_cache(tmp_path_factory, monkeypatch):
    """Every test runs offline, with its own datasets cache (outside the data folders)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """cats/ and dogs/, 5 images each; one file name mentions 'train' to tempt split inference."""
    root = tmp_path / "pets"
    for i in range(5):
        save_image(root / "cat" / f"cat_{i}.png", 10 * i)
        save_image(root / "dog" / f"dog_{i}_train.jpg" if i == 0 else root / "dog" / f"dog_{i}.jpg", 100 + i)
    return root


@pytest.fixture
def metadata_folder(tmp_path) -> Path:
    """A flat folder with metadata.csv holding sparse ImageNet-style labels and a classes.txt."""
    root = tmp_path / "sample"
    rows = ["file_name,label"]
    for i, label in enumerate([0, 2, 4, 998, 2, 0, 4, 998]):
        save_image(root / f"img_{i}_train.JPEG", i, mode="L")
        rows.append(f"img_{i}_train.JPEG,{label}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("".join(f"n{i:08d}\tname {i}\n" for i in range(1000)))
    return root


def test_digits_are_real_rgb_images_split_reproducibly():
    data = load_image_data("builtin:digits", val_split=0.2, seed=3)
    assert (data.num_classes, data.class_names) == (10, [str(i) for i in range(10)])
    assert len(data.train) + len(data.validation) == 1797 and len(data.validation) == 360
    image = data.train[0][data.image_column]
    assert image.mode == "RGB" and image.size == (32, 32)
    again = load_image_data("builtin:digits", val_split=0.2, seed=3)
    assert again.validation[:20]["label"] == data.validation[:20]["label"]


def test_loader_gives_float_images_and_long_labels(class_folders):
    data = load_image_data(str(class_folders), val_split=0.2)
    images, labels = next(iter(make_loader(data.train, data, to_tensor, batch_size=3)))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.long and set(labels.tolist()) <= {0, 1}
    batches = list(make_loader(data.train, data, to_tensor, batch_size=3, drop_last=True))
    assert [len(b[1]) for b in batches] == [3, 3]


def test_shuffled_loader_is_reproducible_from_its_seed(class_folders):
    data = load_image_data(str(class_folders), val_split=0.2)
    order = lambda seed: torch.cat([y for _, y in make_loader(data.train, data, to_tensor, batch_size=4, shuffle=True, seed=seed)])  # noqa: E731
    assert order(1).tolist() == order(1).tolist()
    assert sorted(order(1).tolist()) == sorted(order(2).tolist())


def test_class_subfolders_become_class_labels_whatever_the_file_names(class_folders):
    before = sorted(class_folders.rglob("*"))
    data = load_image_data(str(class_folders), val_split=0.2)
    assert (data.image_column, data.label_column) == ("image", "label")
    assert (data.num_classes, data.class_names) == (2, ["cat", "dog"])
    assert (len(data.train), len(data.validation)) == (8, 2)
    assert sorted(class_folders.rglob("*")) == before, "nothing may be written into the user's folder"


def test_split_subfolders_are_used_as_splits(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            save_image(tmp_path / "d" / split / ("a" if i % 2 else "b") / f"{i}.png", i)
    data = load_image_data(str(tmp_path / "d"))
    assert (len(data.train), len(data.validation), data.class_names) == (4, 2, ["a", "b"])


def test_metadata_csv_keeps_the_real_labels_and_reads_classes_txt(metadata_folder):
    data = load_image_data(str(metadata_folder), split="train")
    assert data.train is None and len(data.validation) == 8
    assert data.validation["label"][:] == [0, 2, 4, 998, 2, 0, 4, 998]
    assert data.num_classes == 1000 and data.class_names[998] == "name 998"
    assert make_loader(data.validation, data, to_tensor, batch_size=8).__iter__().__next__()[1].max() == 998


def test_without_classes_txt_num_classes_is_the_largest_label_plus_one(metadata_folder):
    (metadata_folder / "classes.txt").unlink()
    data = load_image_data(str(metadata_folder))
    assert (data.num_classes, data.class_names) == (999, None)


def test_string_labels_are_encoded_in_sorted_order(tmp_path):
    for i in range(4):
        save_image(tmp_path / f"{i}.png", i)
    (tmp_path / "metadata.csv").write_text("file_name,label\n0.png,zebra\n1.png,ant\n2.png,zebra\n3.png,ant\n")
    data = load_image_data(str(tmp_path), split="train")
    assert data.class_names == ["ant", "zebra"] and data.validation["label"][:] == [1, 0, 1, 0]


def test_labels_none_gives_minus_one(metadata_folder):
    data = load_image_data(str(metadata_folder), labels=False, val_split=0.25)
    assert (data.label_column, data.num_classes, data.class_names) == (None, None, None)
    _, labels = next(iter(make_loader(data.validation, data, to_tensor, batch_size=2)))
    assert labels.tolist() == [-1, -1]
    check_labels(data, 10)  # nothing to check


def test_labels_outside_the_head_are_named(metadata_folder):
    data = load_image_data(str(metadata_folder))
    check_labels(data, 1000)
    with pytest.raises(AdnifyError, match=r"label 998 .* 10 classes"):
        check_labels(data, 10)


def test_save_to_disk_dataset_with_custom_columns(tmp_path):
    features = datasets.Features(picture=datasets.Image(), y=datasets.Value("int64"), note=datasets.Value("string"))
    images = [Image.new("L", (8, 8), i) for i in range(6)]
    ds = datasets.Dataset.from_dict({"picture": images, "y": [0, 1, 2, 0, 1, 2], "note": list("abcdef")}, features=features)
    datasets.DatasetDict(train=ds, test=ds.select([0, 1])).save_to_disk(tmp_path / "saved")
    before = sorted((tmp_path / "saved").rglob("*"))

    data = load_image_data(str(tmp_path / "saved"), label_column="y")
    assert (data.image_column, data.label_column, data.num_classes) == ("picture", "y", 3)
    assert (len(data.train), len(data.validation)) == (6, 2)
    images, labels = next(iter(make_loader(data.train, data, to_tensor, batch_size=6)))
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 1, 2, 0, 1, 2]

    single = load_image_data(str(tmp_path / "saved" / "train"), val_split=0.5, seed=1)
    assert (len(single.train), len(single.validation)) == (3, 3)
    assert sorted((tmp_path / "saved").rglob("*")) == before, "no cache files beside the user's data"

    with pytest.raises(AdnifyError, match=r"no label column 'target'.*picture, y, note"):
        load_image_data(str(tmp_path / "saved"), label_column="target")
    with pytest.raises(AdnifyError, match=r"no split 'dev'.*train, test"):
        load_image_data(str(tmp_path / "saved"), split="dev")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("builtin:mnist", r"unknown builtin dataset 'mnist'.*digits"),
        ("./no/such/folder", r"does not exist"),
        ("someone/not-a-dataset", r"could not load dataset 'someone/not-a-dataset'.*Hub.*builtin:digits"),
    ],
)
def test_unreadable_sources_are_one_clear_error(source, message):
    with pytest.raises(AdnifyError, match=message):
        load_image_data(source)


def test_a_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(AdnifyError, match="no images"):
        load_image_data(str(tmp_path))


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(AdnifyError, match=r"pip install scikit-learn.*adnify\[builtin-data\]"):
        load_image_data("builtin:digits")


def test_image_data_records_the_source():
    data = load_image_data("builtin:digits", val_split=0)
    assert isinstance(data, ImageData) and data.source == "builtin:digits" and data.validation is None
