"""Adaptive backbones for dense tasks: features_only conversion and a torchvision detector whose
depth switches at run time (issue 18)."""

from __future__ import annotations

import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from typer.testing import CliRunner

import adnify
from adnify.cli import app
from adnify.detection import backbone_kd, fpn_backbone, set_depth

runner = CliRunner()
TINY = dict(channels=(8, 16, 32, 64), stem_width=8, zero_init_last=False)  # skippable blocks do something


@pytest.mark.parametrize("name, kwargs", [("resnet18", TINY), ("convnext_atto", {}), ("efficientnet_b0", {}),
                                          ("deit_tiny_patch16_224", dict(img_size=64, depth=8)),  # FeatureGetterNet
                                          ("test_vit", dict(img_size=64))])
def test_a_backbone_super_net_returns_timms_maps_and_the_base_net_the_same_shapes(name, kwargs):
    torch.manual_seed(0)
    reference = timm.create_model(name, features_only=True, **kwargs).eval()
    net = adnify.convert(timm.create_model(name, features_only=True, **kwargs)).eval()
    net.model.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, sup, base = reference(x), net(x, skip="super"), net(x, skip="base")
    assert len(sup) == len(base) == len(expected)
    for e, s, b in zip(expected, sup, base):
        torch.testing.assert_close(s, e, rtol=0, atol=0)
        assert b.shape == e.shape
    assert any(not torch.equal(s, b) for s, b in zip(sup, base))  # skipping does something
    assert net.feature_info.channels() == reference.feature_info.channels()
    assert net.feature_info.reduction() == reference.feature_info.reduction()
    assert net.feature_info.module_name() == reference.feature_info.module_name()


@pytest.mark.parametrize("name, kwargs, channels", [
    ("resnet18", dict(out_indices=(2, 3, 4), **TINY), [16, 32, 64]),
    ("deit_tiny_patch16_224", dict(out_indices=(5, 7), img_size=64, depth=8), [192, 192]),
])
def test_a_backbone_by_name_saves_and_loads_with_its_levels(tmp_path, name, kwargs, channels):
    net = adnify.convert(name, features_only=True, **kwargs)
    net.save(str(tmp_path / "b"))
    loaded = adnify.load(str(tmp_path / "b"))
    assert loaded.features_only and loaded.feature_info.channels() == channels
    x = torch.randn(1, 3, 64, 64)
    for p in ("super", "base"):
        for a, b in zip(net.eval()(x, skip=p), loaded(x, skip=p)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("detector", ["faster_rcnn", "retinanet"])
def test_a_detector_trains_and_switches_depth_without_rebuilding(detector):
    torch.manual_seed(0)
    net = adnify.convert("resnet18", features_only=True, out_indices=(2, 3, 4), **TINY)
    backbone = fpn_backbone(net, out_channels=16)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)  # 3 levels + pool
    kind = FasterRCNN if detector == "faster_rcnn" else RetinaNet
    arg = "rpn_anchor_generator" if detector == "faster_rcnn" else "anchor_generator"
    model = kind(backbone, num_classes=3, min_size=64, max_size=64, **{arg: anchors})
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    model.train()
    for pattern in ("super", "base"):
        set_depth(model, pattern)
        losses = model(images, targets)
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
    assert net.model.layer1[0].conv1.weight.grad is not None
    # Algorithm 1 on the backbone: the base-net's maps distil the super-net's
    batch, _ = model.transform(images, targets)
    set_depth(model, "super")
    model.backbone(batch.tensors)
    kd = backbone_kd(model, batch.tensors, model.backbone.last_features, pattern="base")
    assert kd.item() > 0 and kd.requires_grad
    model.eval()
    with torch.no_grad():
        set_depth(model, "base")
        base_out = model(images)
        set_depth(model, "super")
        super_out = model(images)
    assert len(base_out) == len(super_out) == 2 and net.pattern == "F" * net.num_stages


def test_cli_converts_a_backbone_and_refuses_bad_levels_and_training(tmp_path):
    result = runner.invoke(app, ["convert", "resnet18", "--features-only", "--out-indices", "1,2,3,4",
                                 "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert adnify.load(str(tmp_path / "b")).feature_info.reduction() == [4, 8, 16, 32]
    bad = runner.invoke(app, ["convert", "resnet18", "--features-only", "--out-indices", "7"])
    assert isinstance(bad.exception, adnify.AdnifyError) and "feature levels are 0..4" in str(bad.exception)
    alone = runner.invoke(app, ["convert", "resnet18", "--out-indices", "1"])
    assert isinstance(alone.exception, adnify.AdnifyError) and "--features-only" in str(alone.exception)
    refused = runner.invoke(app, ["train", str(tmp_path / "b"), "--data", "builtin:digits", "-o", str(tmp_path / "r")])
    assert isinstance(refused.exception, adnify.AdnifyError) and "features_only backbone" in str(refused.exception)
    assert not (tmp_path / "r").exists()


def test_report_measures_every_pattern_of_a_backbone_at_a_dense_task_size(tmp_path):
    import json

    adnify.convert("resnet18", features_only=True, out_indices=(2, 3, 4), **TINY).save(str(tmp_path / "b"))
    result = runner.invoke(app, ["report", str(tmp_path / "b"), "--patterns", "all", "--input-size", "3,96,160",
                                 "--metrics", "params,macs,latency", "--repeats", "1", "--warmup", "0",
                                 "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["context"]["input_size"] == [3, 96, 160]
    rows = {row["pattern"]: row for row in report["rows"]}
    assert len(rows) == 16
    assert rows["TTTT"]["gmacs"] < rows["FFFF"]["gmacs"] and rows["TTTT"]["params"] < rows["FFFF"]["params"]
    assert all(row["latency_ms"] > 0 for row in rows.values())


def test_a_classifier_is_no_fpn_backbone():
    with pytest.raises(adnify.AdnifyError, match="features_only"):
        fpn_backbone(adnify.convert("resnet18", **TINY))
