"""benchmarks/device_check.py: the GPU check runs end to end on the CPU (--smoke), records what fails
without stopping, keeps to its time budget, and answers bad input with one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("device_check", None)


def smoke(tmp_path: Path, *args: str) -> tuple[dict, str]:
    """Run the script with --smoke in a fresh interpreter; the parsed stdout and stderr."""
    output = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--output", str(output), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads(done.stdout)  # stdout holds the JSON document and nothing else
    assert json.loads(output.read_text()) == doc
    return doc, done.stderr


def assert_training_is_sound(train: dict, models: list[str]) -> None:
    assert train["kl_overflow_probe"]["fp16_kl_finite"] is False  # the probe does overflow in fp16 ...
    assert train["kl_overflow_probe"]["adnify_kl_finite"] is True  # ... and adnify's KL (fp32 inside) does not
    for model in models:
        result = train["models"][model]
        assert result["default_order"] == "sequential"
        for precision in ("no", "bf16"):  # fp16 on CUDA; its CPU stand-in is fp32
            p = result[precision]
            assert set(p["step_ratio"]) == set(p["memory_ratio"]) == {"sequential", "joint"}
            assert all(p["all_losses_finite"].values())
            assert p["term_dtypes"]["sequential"]["logit_kd"] == "float32"
            assert set(p["last_loss"]["joint"]) >= {"loss", "ce", "logit_kd"}


def test_the_smoke_run_measures_every_quick_section_on_the_cpu(tmp_path):
    """The default suite's share: training, latency, switching and the loader (the slow test adds ddp and onnx)."""
    doc, stderr = smoke(tmp_path, "--sections", "train,latency,switch,loader",
                        "--models", "resnet50,vit_small_patch16_224")
    sections = doc["sections"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(
        ["train", "latency", "switch", "loader"], "ok")
    assert_training_is_sound(sections["train"], ["resnet50", "vit_small_patch16_224"])

    latency = sections["latency"]["models"]
    assert list(latency) == ["resnet50"]  # the only latency model asked for
    r50 = latency["resnet50"]
    assert r50["macs_ratio"]["FFFF"] == 1.0 and r50["macs_ratio"]["TTTT"] < 1.0
    entry = r50["float32/batch1"]
    assert entry["layout"] in ("contiguous", "channels_last") and set(entry["layout_ms"]) >= {"contiguous/FFFF"}
    assert set(entry["ms"]) == set(r50["macs_ratio"]) and entry["latency_ratio"]["FFFF"] == 1.0

    switch = sections["switch"]
    assert switch["compiled"]["graphs"]["super"] >= 1
    assert isinstance(switch["compiled"]["every_pattern_compiles_anew"], bool)
    assert switch["compiled"]["projected_all_patterns_compile_s"] > 0

    for model, recipe in (("resnet50", "resnet"), ("vit_small_patch16_224", "deit")):
        loader = sections["loader"]["models"][model]
        assert loader["recipe"] == recipe and loader["images_per_s"] > 0
        assert 0.0 <= loader["gpu_wait_share"] <= 1.0
    assert "device check" in stderr  # the table


@pytest.mark.slow
def test_the_full_smoke_run_has_every_section(tmp_path):
    doc, _ = smoke(tmp_path)
    sections = doc["sections"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(
        ["train", "latency", "switch", "loader", "ddp", "onnx"], "ok")
    assert_training_is_sound(sections["train"], ["resnet50", "vit_small_patch16_224"])
    assert set(sections["latency"]["models"]) == {"resnet50", "swin_tiny_patch4_window7_224", "vit_base_patch16_224"}
    ddp = sections["ddp"]
    assert ddp["same_losses"] and ddp["all_finite"] and len(ddp["losses_two_processes"]) == ddp["steps"]
    assert ddp["backend"] == "gloo" and ddp["runs"]["2"]["returncode"] == 0
    assert sections["onnx"]["providers"] == ["CPUExecutionProvider"] and "TTTT" in sections["onnx"]["ratio"]


def test_an_unknown_model_is_one_line_that_lists_the_known_ones(check, capsys, tmp_path):
    assert check.main(["--smoke", "--models", "resnet50,resnet5", "--output", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'resnet5'" in err
    assert all(name in err for name in check.KNOWN_MODELS)
    assert not (tmp_path / "x.json").exists()


def test_an_unknown_section_is_one_line_that_lists_the_sections(check, capsys):
    assert check.main(["--smoke", "--sections", "train,compile"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'compile'" in err
    assert all(name in err for name in check.SECTIONS)


def test_without_a_gpu_it_asks_for_smoke_instead_of_running_on_the_cpu(check, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(check.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(check, "section_train", lambda *a: pytest.fail("a section ran without a GPU"))
    assert check.main(["--output", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GPU" in err and "--smoke" in err
    assert not (tmp_path / "x.json").exists()


def test_a_failing_section_is_recorded_and_the_next_one_still_runs(check, capsys, monkeypatch, tmp_path):
    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    monkeypatch.setattr(check, "section_train", broken)
    monkeypatch.setattr(check, "section_switch", lambda *a: {"measured": 1})
    output = tmp_path / "check.json"
    assert check.main(["--smoke", "--sections", "train,switch", "--output", str(output)]) == 1
    doc = json.loads(output.read_text())
    train, switch = doc["sections"]["train"], doc["sections"]["switch"]
    assert train["status"] == "error"
    assert train["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert any("broken" in line for line in train["traceback"])
    assert switch == {"status": "ok", "measured": 1, "seconds": switch["seconds"]}
    assert json.loads(capsys.readouterr().out) == doc


def test_a_section_that_no_longer_fits_the_budget_is_skipped_with_a_note(check, tmp_path):
    budget = check.Budget(seconds=check.ESTIMATE_S["ddp"] - 1, smoke=False)
    doc = {"sections": {}}
    check.run_section("ddp", lambda: pytest.fail("ran past the budget"), doc, budget, tmp_path / "check.json")
    assert doc["sections"]["ddp"]["status"] == "skipped" and "time budget" in doc["sections"]["ddp"]["note"]
    assert json.loads((tmp_path / "check.json").read_text())["sections"] == doc["sections"]  # written at once
