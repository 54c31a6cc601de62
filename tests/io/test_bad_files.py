"""A damaged model file or a checkpoint that is not weights: one clear line, never torch's unsafe advice (issue 15)."""

from __future__ import annotations

import timm
import torch
from typer.testing import CliRunner

import adnify
from adnify.cli import app

runner = CliRunner()
TINY = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=10)


def error_of(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0
    assert isinstance(result.exception, adnify.AdnifyError), result.exception
    return str(result.exception)


def test_a_truncated_model_file_is_named_with_what_is_missing(tmp_path):
    adnify.convert("resnet18", **TINY).save(str(tmp_path / "m"))
    weights = tmp_path / "m" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    for command in ("info", "report"):
        message = error_of([command, tmp_path / "m"])
        assert "model.safetensors is damaged" in message and "truncated" in message
        assert f"{size:,}" in message and "\n" not in message


def test_a_model_file_of_garbage_is_damaged(tmp_path):
    adnify.convert("resnet18", **TINY).save(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "model.safetensors is damaged" in error_of(["info", tmp_path / "m"])


def test_a_checkpoint_that_is_not_weights_says_what_it_found(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    whole = tmp_path / "whole.pth"
    torch.save(timm.create_model("resnet18", **TINY), whole)  # a pickled module, not a state dict
    for path, found in ((garbage, "2,048 bytes of no known weights format"), (text, "a text file"),
                        (whole, "a torch.save archive holding more than tensors")):
        message = error_of(["convert", "resnet18", "--checkpoint", path, "--num-classes", "10"])
        assert "is not a readable weights file" in message and found in message
        assert "weights_only" not in message and "\n" not in message


def saved_backbone(tmp_path, edit) -> str:
    """A saved features-only resnet18 whose adnify.json ``edit`` changes (as a hand edit or another tool would)."""
    import json

    directory = tmp_path / "bb"
    adnify.convert("resnet18", features_only=True, out_indices=(1, 2, 3, 4), **{k: v for k, v in TINY.items()
                                                                             if k != "num_classes"}).save(str(directory))
    config = json.loads((directory / "adnify.json").read_text())
    edit(config)
    (directory / "adnify.json").write_text(json.dumps(config))
    return directory


def test_a_backbone_whose_plan_disagrees_with_its_model_is_refused_in_one_line(tmp_path):
    def fewer_levels(config):
        config["source"]["kwargs"]["out_indices"] = [1, 2]  # timm then drops layer3 and layer4

    message = error_of(["info", saved_backbone(tmp_path, fewer_levels)])
    assert "does not fit resnet18(" in message and "out_indices=[1, 2]" in message and "layer3.0" in message
    assert "re-convert" in message and "\n" not in message


def test_a_plan_naming_a_missing_norm_or_weights_of_another_depth_are_refused(tmp_path):
    def renamed_norm(config):
        config["plan"]["stages"][0]["norms"][0] = "layer1.0.no_such_norm"

    assert "layer1.0.no_such_norm" in error_of(["info", saved_backbone(tmp_path / "a", renamed_norm)])

    def deeper_model(config):
        config["source"]["model"] = "resnet34"  # the plan's modules exist, the weights lack layer1.2 ...

    message = error_of(["info", saved_backbone(tmp_path / "b", deeper_model)])
    assert "model.safetensors does not fit the model" in message and "missing" in message and "layer1.2" in message


def test_a_model_name_timm_cannot_build_is_named(tmp_path):
    def unknown(config):
        config["source"]["model"] = "no_such_net"

    message = error_of(["info", saved_backbone(tmp_path, unknown)])
    assert "cannot build" in message and "no_such_net" in message
