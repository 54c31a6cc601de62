"""Every local form `datasets.load_dataset` reads works offline for train and report, and bad data
says what is wrong in one line (issue 16)."""

from __future__ import annotations

import io

import datasets
import pytest
from PIL import Image

from adnify.errors import AdnifyError
from adnify.io.data import load_image_data
from adnify.io.images import make_loader


def _png(color: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(n: int, *, bad_row: int | None = None) -> datasets.Dataset:
    images = [{"bytes": b"not an image" if i == bad_row else _png(i * 20), "path": f"img{i}.png"} for i in range(n)]
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(num_classes=3),
                                 imagenet_label=datasets.Value("int64"))
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)],
                                       "imagenet_label": [100 + i % 3 for i in range(n)]}, features=features)


@pytest.fixture
def hub_layout(tmp_path):
    """The Hugging Face Hub layout of ../shared/data/tiny-imagenet: parquet shards and a dataset card."""
    root = tmp_path / "hub"
    (root / "data").mkdir(parents=True)
    _table(12).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    _table(6).to_parquet(str(root / "data" / "validation-00000-of-00001.parquet"))
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train-*.parquet\n  - split: validation\n"
                                    "    path: data/validation-*.parquet\n---\n# tiny\n")
    return root


def test_a_hub_layout_folder_reads_its_splits_and_chosen_label_column(hub_layout):
    data = load_image_data(str(hub_layout), label_column="imagenet_label")
    assert (len(data.train), len(data.validation)) == (12, 6)
    assert data.label_column == "imagenet_label" and data.num_classes == 103
    images, labels = next(iter(make_loader(data.validation, data, lambda im: __import__("torch").zeros(3, 2, 2),
                                           batch_size=6)))
    assert images.shape == (6, 3, 2, 2) and labels.tolist() == [100, 101, 102, 100, 101, 102]


@pytest.mark.parametrize("kind", ["parquet", "arrow-folder"])
def test_plain_table_files_read_as_data(tmp_path, kind):
    if kind == "parquet":
        path = tmp_path / "train.parquet"
        _table(10).to_parquet(str(path))
    else:
        path = tmp_path / "tables"
        path.mkdir()
        _table(10).to_parquet(str(path / "part-0.parquet"))
    data = load_image_data(str(path), val_split=0.2)
    assert (len(data.train), len(data.validation), data.num_classes) == (8, 2, 3)


def test_a_corrupt_image_is_marked_in_its_batch_and_named_by_its_file(tmp_path):
    from adnify.io.images import BROKEN

    path = tmp_path / "bad.parquet"
    _table(6, bad_row=4).to_parquet(str(path))
    data = load_image_data(str(path), val_split=0)
    batch = next(iter(make_loader(data.train, data, lambda im: __import__("torch").zeros(3, 2, 2), batch_size=6)))
    images, labels = batch
    assert images.shape == (6, 3, 2, 2) and labels[4] == BROKEN and (labels[:4] != BROKEN).all()
    assert len(batch.broken) == 1 and batch.broken[0].startswith("img4.png (UnidentifiedImageError")


def test_bad_columns_splits_and_labels_say_what_there_is(hub_layout):
    with pytest.raises(AdnifyError, match="no label column 'nope': the columns are image, label, imagenet_label"):
        load_image_data(str(hub_layout), label_column="nope")
    with pytest.raises(AdnifyError, match="no split 'test' in .*: the splits are train, validation"):
        load_image_data(str(hub_layout), split="test")
    with pytest.raises(AdnifyError, match="column 'imagenet_label' of .* holds int64 values, not images"):
        load_image_data(str(hub_layout), image_column="imagenet_label")
    data = load_image_data(str(hub_layout), label_column="imagenet_label")
    from adnify.io.data import check_labels

    with pytest.raises(AdnifyError, match=r"column 'imagenet_label' .* \(labels 100..102\) does not fit a head of 10"):
        check_labels(data, 10)


def test_a_corrupt_image_found_in_a_loader_worker_is_skipped_with_one_line_on_stderr(tmp_path):
    import subprocess
    import sys

    import adnify

    adnify.convert("resnet18", channels=(8, 16, 32, 64), stem_width=8, num_classes=3).save(str(tmp_path / "m"))
    _table(6, bad_row=4).to_parquet(str(tmp_path / "bad.parquet"))
    done = subprocess.run([sys.executable, "-m", "adnify", "report", str(tmp_path / "m"), "-p", "super", "--data",
                           str(tmp_path / "bad.parquet"), "--num-workers", "1", "--input-size", "3,32,32"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "cannot be decoded" in line]
    assert len(warnings) == 1 and "img4.png" in warnings[0] and "Traceback" not in done.stderr
    assert "examples=5" in done.stdout and "broken_images=1" in done.stdout
