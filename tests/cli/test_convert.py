"""``adnify convert``/``info``/``export`` as a user types them, and the weights and names they accept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import adnify
from adnify import AdnifyError
from adnify.cli import app
from adnify.io.checkpoint import load_weights, read_state_dict
from adnify.io.models import resolve_model_name

runner = CliRunner()
TINY = ["resnet18", "--input-size", "3,64,64"]


def run(*args: str):
    return runner.invoke(app, list(args))


# --- model names -----------------------------------------------------------------------------


def test_exact_names_prefixes_and_wildcards_resolve():
    assert resolve_model_name("resnet18") == "resnet18"
    assert resolve_model_name("swin_tiny_patch4") == "swin_tiny_patch4_window7_224"
    assert resolve_model_name("swin_tiny_*") == "swin_tiny_patch4_window7_224"
    assert resolve_model_name("resnet50.a1_in1k") == "resnet50.a1_in1k"


def test_an_ambiguous_name_lists_the_candidates():
    with pytest.raises(AdnifyError, match=r"ambiguous: .*resnet50d"):
        resolve_model_name("resnet5")


def test_an_unknown_name_suggests_the_closest():
    with pytest.raises(AdnifyError, match="did you mean resnet50"):
        resolve_model_name("resnt50")


def test_pretrained_offline_fails_in_one_line_pointing_to_checkpoint(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AdnifyError, match="--checkpoint"):
        adnify.convert("test_resnet", pretrained=True)


# --- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("test_resnet").state_dict()


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "wrapped", "ddp"])
def test_checkpoints_load_in_every_common_form(tmp_path, weights, fmt):
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    elif fmt == "pth":
        torch.save(weights, path)
    elif fmt == "wrapped":
        torch.save({"state_dict": weights, "epoch": 3}, path)
    else:
        torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, path)
    model = timm.create_model("test_resnet")
    summary = load_weights(model, path)
    assert "loaded" in summary
    torch.testing.assert_close(model.state_dict()["fc.weight"], weights["fc.weight"])


def test_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": object()}, path)  # not tensors: weights_only refuses to unpickle it
    with pytest.raises(AdnifyError, match="is not a readable weights file.*holding more than tensors"):
        read_state_dict(path)


def test_mismatched_keys_are_reported_by_name(tmp_path, weights):
    broken = dict(weights)
    broken["extra.weight"] = broken.pop("fc.weight")
    torch.save(broken, tmp_path / "w.pth")
    with pytest.raises(AdnifyError, match=r"missing 1 \(fc.weight\); unexpected 1 \(extra.weight\)"):
        load_weights(timm.create_model("test_resnet"), tmp_path / "w.pth")


def test_other_names_load_by_order_only_when_asked(tmp_path, weights):
    renamed = {f"_other.{i}": v for i, v in enumerate(weights.values())}
    torch.save(renamed, tmp_path / "w.pth")
    with pytest.raises(AdnifyError, match="--match-by-order"):
        load_weights(timm.create_model("test_resnet"), tmp_path / "w.pth")
    model = timm.create_model("test_resnet")
    summary = load_weights(model, tmp_path / "w.pth", by_order=True)
    assert f"matched {len(weights)} tensors by order and shape" in summary
    torch.testing.assert_close(model.state_dict()["fc.weight"], weights["fc.weight"])


def test_by_order_refuses_different_shapes(tmp_path, weights):
    torch.save({f"k{i}": v for i, v in enumerate(reversed(list(weights.values())))}, tmp_path / "w.pth")
    with pytest.raises(AdnifyError, match="differs in shape"):
        load_weights(timm.create_model("test_resnet"), tmp_path / "w.pth", by_order=True)


# --- the commands ------------------------------------------------------------------------------


def test_convert_prints_the_plan_and_saves(tmp_path):
    result = run("convert", *TINY, "-o", str(tmp_path / "adn"))
    assert result.exit_code == 0, result.output
    assert "adaptive stages" in result.output
    assert "super-net FFFF" in result.output and "base-net" in result.output and "GMACs" in result.output
    assert (tmp_path / "adn" / "model.safetensors").is_file()
    info = run("info", str(tmp_path / "adn"))
    assert info.exit_code == 0, info.output
    assert "resnet18" in info.output


def test_convert_with_a_checkpoint(tmp_path):
    weights = timm.create_model("resnet18").state_dict()
    torch.save(weights, tmp_path / "w.pth")
    result = run("convert", *TINY, "--checkpoint", str(tmp_path / "w.pth"), "-o", str(tmp_path / "adn"))
    assert result.exit_code == 0, result.output
    loaded = adnify.load(tmp_path / "adn")
    torch.testing.assert_close(loaded.model.state_dict()["fc.weight"], weights["fc.weight"])


def test_convert_refuses_an_existing_output_without_force(tmp_path):
    (tmp_path / "adn").mkdir()
    assert run("convert", *TINY, "-o", str(tmp_path / "adn")).exit_code != 0
    assert run("convert", *TINY, "-o", str(tmp_path / "adn"), "--force").exit_code == 0


@pytest.mark.parametrize("fmt", ["pt", "onnx"])
def test_export_writes_a_static_sub_network(tmp_path, fmt):
    pytest.importorskip("onnxscript") if fmt == "onnx" else None
    assert run("convert", *TINY, "-o", str(tmp_path / "adn")).exit_code == 0
    out = tmp_path / f"net.{'pt2' if fmt == 'pt' else 'onnx'}"
    result = run("export", str(tmp_path / "adn"), "--pattern", "TFTF", "--format", fmt, "-o", str(out),
                 "--input-size", "3,64,64")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000
    if fmt == "pt":
        program = torch.export.load(str(out))
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(program.module()(x), adnify.load(tmp_path / "adn")(x, skip="TFTF"),
                                   atol=1e-5, rtol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ADNIFY_DEBUG"}
    return subprocess.run([sys.executable, "-m", "adnify", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args, message", [
    (["convert", "resnt50"], "unknown model 'resnt50': did you mean"),
    (["convert", "resnet5"], "is ambiguous"),
    (["convert", "test_resnet", "--checkpoint", "missing.pth"], "checkpoint missing.pth not found"),
    (["info", "./nowhere"], "neither an adnify model directory"),
    (["convert", "test_resnet"], "nothing to adapt in ResNet"),
])
def test_user_errors_are_one_line_on_stderr_without_traceback(args, message):
    result = _cli(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_pattern_on_export_is_a_user_error(tmp_path):
    assert run("convert", *TINY, "-o", str(tmp_path / "adn")).exit_code == 0
    result = _cli("export", str(tmp_path / "adn"), "-p", "TXF", "-o", str(tmp_path / "x.pt2"))
    assert result.returncode == 1 and "expected 4 characters of T" in result.stderr
    assert not (tmp_path / "x.pt2").exists()
