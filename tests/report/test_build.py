"""Specification of ``adnify report`` and its Python side (adnify.report, adnify.report.evaluate)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

import adnify
from adnify.cli import app
from adnify.errors import AdnifyError
from adnify.report.build import build_report, parse_metrics, parse_patterns
from adnify.report.costs import count_macs
from adnify.report.evaluate import evaluate_patterns

runner = CliRunner()
TINY = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=10, input_size=(3, 32, 32))  # resnet18 layout
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_net() -> adnify.AdaptiveNet:
    torch.manual_seed(0)
    return adnify.convert("resnet18", **TINY)


@pytest.fixture(autouse=True)
def offline_private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-adn"
    tiny_net().save(str(path))
    return path


def make_images(root: Path, labelled: bool = True, n: int = 12) -> Path:
    """``n`` small images: class subfolders ``c0``, ``c1`` (labels 0, 1), or a flat folder without labels."""
    for i in range(n):
        folder = root / f"c{i % 2}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (20 * i, 255 - 20 * i, 7 * i)).save(folder / f"img{i}.png")
    return root


@pytest.fixture
def images(tmp_path) -> Path:
    return make_images(tmp_path / "images")


def invoke(*args: str):
    return runner.invoke(app, ["report", *map(str, args)])


# --- patterns and metrics ---------------------------------------------------------------------


def test_patterns_all_aliases_and_lists():
    assert parse_patterns("all", 2) == ["FF", "TF", "FT", "TT"]
    assert parse_patterns("super,base,TF,tf", 2) == ["FF", "TT", "TF"]
    assert parse_patterns(["base", "all"], 2) == ["TT", "FF", "TF", "FT"]


@pytest.mark.parametrize("bad", ["TFT", "TX", "super,FFFFF", ""])
def test_a_bad_pattern_names_the_expected_form(bad):
    with pytest.raises(AdnifyError, match=r"2 characters of T \(skip\) or F \(run\)|no patterns given"):
        parse_patterns(bad, 2)


def test_metrics_are_validated():
    assert parse_metrics("params,macs,latency,accuracy") == ["params", "macs", "latency", "acc"]
    with pytest.raises(AdnifyError, match="unknown metric 'speed'.*params, macs, latency, acc"):
        parse_metrics("params,speed")


# --- MACs and parameters ----------------------------------------------------------------------


def test_macs_and_params_of_a_pattern_equal_those_of_its_static_export():
    net = tiny_net()
    rows, context = build_report(net, "all")
    assert len(rows) == 16 and "flop_counter" in context["macs_method"]
    x = torch.randn(1, *TINY["input_size"])
    for row in rows:
        static = net.export(row["pattern"])
        assert row["gmacs"] * 1e9 == pytest.approx(count_macs(static, x), abs=0.5)
        assert row["params"] == sum(p.numel() for p in static.parameters())
    plain = timm.create_model("resnet18", **{k: v for k, v in TINY.items() if k != "input_size"})
    assert rows[0]["params"] == sum(p.numel() for p in plain.parameters())


def test_resnet50_matches_the_paper():
    rows, _ = build_report(adnify.convert("resnet50"), "all")
    gmacs = {r["pattern"]: r["gmacs"] for r in rows}
    for pattern, paper in {"FFFF": 4.11, "TFFF": 3.90, "TTFF": 3.46, "TTTF": 2.80, "TTTT": 2.58}.items():
        assert gmacs[pattern] == pytest.approx(paper, rel=0.02), pattern
    assert all(gmacs["TTTT"] < g < gmacs["FFFF"] for p, g in gmacs.items() if p not in ("FFFF", "TTTT"))


# --- latency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("static", [False, True])
def test_latency_of_every_pattern_with_its_context(static):
    rows, context = build_report(tiny_net(), "super,base", metrics="latency", batch_size=2, device="cpu",
                                 warmup=1, repeats=3, static=static, progress=False)
    assert [r["pattern"] for r in rows] == ["FFFF", "TTTT"]
    assert all(r["latency_ms"] > 0 and r["latency_iqr_ms"] >= 0 for r in rows)
    assert context["batch_size"] == 2 and context["input_size"] == [3, 32, 32] and context["dtype"] == "float32"
    assert context["device"] == "cpu" and context["threads"] == torch.get_num_threads()
    assert context["static"] is static and context["compile"] is False and context["repeats"] == 3


# --- accuracy: one pass -----------------------------------------------------------------------


class CountingDataset(torch.utils.data.Dataset):
    """Random images with labels; counts every read."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], self.y[i]


def test_every_pattern_is_evaluated_in_one_pass_over_the_data():
    net, ds = tiny_net().eval(), CountingDataset(20)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # sub-networks that really differ from the super-net (a fresh one's may not)
        for q in net.parameters():
            q.add_(0.3 * torch.randn(q.shape, generator=g))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    results = evaluate_patterns(net, net.patterns(), loader, agreement=True, progress=False)
    assert ds.reads == len(ds)  # not len(ds) x 16
    with torch.inference_mode():  # the same figures, one pattern at a time
        for p, res in results.items():
            logits = net(ds.x, skip=p)
            assert res.examples == 20
            assert res.acc1 == pytest.approx(100 * (logits.argmax(-1) == ds.y).float().mean().item())
            top5 = logits.topk(5, dim=-1).indices
            assert res.acc5 == pytest.approx(100 * (top5 == ds.y[:, None]).any(-1).float().mean().item())
            reference = net(ds.x, skip="super")
            agree = logits.argmax(-1) == reference.argmax(-1)
            assert res.agreement == pytest.approx(100 * agree.float().mean().item())
            kl = torch.nn.functional.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                                            reduction="batchmean")
            assert res.kl_to_super == pytest.approx(kl.item(), rel=1e-5, abs=1e-7)
    assert results["FFFF"].agreement == 100.0 and results["FFFF"].kl_to_super == 0.0
    assert results["TTTT"].kl_to_super > 0


def test_evaluating_again_with_worker_processes_reuses_them():
    """A training run evaluates every epoch: no set of persistent workers may stay behind each time."""
    import multiprocessing

    from accelerate import Accelerator

    net, ds = tiny_net().eval(), CountingDataset(16)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True)
    accelerator = Accelerator(cpu=True)
    for _ in range(3):
        evaluate_patterns(net, ["super"], loader, accelerator=accelerator, progress=False)
    assert len(multiprocessing.active_children()) <= 2


def test_without_labels_agreement_is_reported(tmp_path):
    net = tiny_net()
    rows, context = build_report(net, "super,base", metrics="acc", data=str(make_images(tmp_path / "flat", labelled=False)),
                                 agreement=True, device="cpu", progress=False)
    assert rows[0]["agreement"] == 100.0 and 0 <= rows[1]["agreement"] <= 100
    assert rows[0]["acc1"] is None and context["examples"] == 12 and "agreement" in context["accuracy"]


@pytest.mark.slow
def test_accuracy_split_across_two_processes_equals_one_process(monkeypatch):
    from accelerate import Accelerator, debug_launcher
    from accelerate.state import AcceleratorState

    ds = CountingDataset(21)  # odd: the last batch is padded on one process, and the padding dropped

    def results(accelerator=None, max_images=None):
        """Every pattern, through the pattern tree, on all images or on ``max_images`` evenly spaced ones."""
        loader = torch.utils.data.DataLoader(ds, batch_size=4)
        net = tiny_net()
        return {p: (r.examples, r.acc1, r.acc5, r.agreement, pytest.approx(r.kl_to_super, rel=1e-5))
                for p, r in evaluate_patterns(net, net.patterns(), loader, agreement=True, accelerator=accelerator,
                                              max_images=max_images, progress=False).items()}

    expected, capped = results(), results(max_images=11)
    assert expected["FFFF"][0] == 21 and capped["FFFF"][0] == 11

    def worker():
        accelerator = Accelerator(cpu=True)
        torch.set_num_threads(1)  # OpenMP threads in a forked child hang: after Accelerator, which sets them
        assert accelerator.num_processes == 2
        assert results(accelerator) == expected
        assert results(accelerator, max_images=11) == capped

    AcceleratorState._reset_state(reset_partial_state=True)  # forked workers must not inherit the 1-process state
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    debug_launcher(worker, num_processes=2)


# --- the command line -------------------------------------------------------------------------


def test_json_report_with_accuracy(model_dir, images, tmp_path):
    out = tmp_path / "report.json"
    result = invoke(model_dir, "--data", images, "--device", "cpu", "-o", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["pareto_score"] == "acc1"
    assert {r["pattern"] for r in doc["rows"]} == set(adnify.all_patterns(4))
    assert all(r["acc1"] is not None and r["latency_ms"] is None for r in doc["rows"])
    ctx = doc["context"]
    assert ctx["examples"] == 12 and ctx["source"] == str(model_dir) and "flop_counter" in ctx["macs_method"]
    assert f"wrote report {out}" in result.stdout


def test_csv_report_and_plot_from_a_training_run(model_dir, tmp_path):
    run_dir = tmp_path / "run"
    adnify.load(str(model_dir)).save(str(run_dir / "final"))
    out, png = tmp_path / "r.csv", tmp_path / "r.png"
    result = invoke(run_dir, "-p", "super,base,TFFF", "--metrics", "params,macs,latency", "--warmup", "0",
                    "--repeats", "2", "-o", out, "--plot", png)
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["pattern"] for r in table] == ["FFFF", "TFFF", "TTTT"]  # sorted by MACs, largest first
    assert all(float(r["latency_ms"]) > 0 and r["acc1"] == "" for r in table)
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_table_and_formats_on_stdout(model_dir):
    result = invoke(model_dir, "-p", "super,base")
    assert result.exit_code == 0, result.output
    assert "GMACs" in result.stdout and "* " in result.stdout.replace("│", " ")
    result = invoke(model_dir, "-p", "super,base", "--format", "md")
    assert result.stdout.count("| FFFF |") == 1 and "macs_method" in result.stdout
    result = invoke(model_dir, "-p", "super,base", "--format", "json", "--budget-gmacs", "100")
    assert json.loads(result.stdout)["rows"][0]["pattern"] == "FFFF"  # stdout stays parseable
    assert "best within the budget: FFFF" in result.stderr


def test_timm_name_converted_on_the_fly():
    result = invoke("resnet18", "--input-size", "3,32,32", "-p", "super,base", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["context"]["model"] == "resnet18"


def test_select_only_prints_just_the_pattern(model_dir, images):
    rows = build_report(adnify.load(str(model_dir)), "all")[0]
    budget = max(r["gmacs"] for r in rows if r["skipped_blocks"] == 1) + 1e-6  # only FFFF is too expensive
    deepest = min((r for r in rows if r["skipped_blocks"] == 1), key=lambda r: (r["gmacs"], r["pattern"]))
    result = invoke(model_dir, "--budget-gmacs", budget, "--select-only")
    assert result.exit_code == 0, result.output
    assert result.stdout == deepest["pattern"] + "\n"  # without accuracy: the deepest, then the cheapest
    result = invoke(model_dir, "--data", images, "--budget-gmacs", budget, "--select-only", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() in {r["pattern"] for r in rows} - {"FFFF"} and result.stdout.count("\n") == 1


# --- bad input: one clear error, no files -----------------------------------------------------


def error_of(result) -> str:
    assert result.exit_code != 0
    assert isinstance(result.exception, AdnifyError), result.exception
    return str(result.exception)


@pytest.mark.parametrize("source", ["./no_such/dir", "no_such_model_xyz"])
def test_unknown_source(source, tmp_path):
    out = tmp_path / "r.json"
    assert "no_such" in error_of(invoke(source, "-o", out)) and not out.exists()


def test_accuracy_without_labels_suggests_agreement(model_dir, tmp_path):
    flat = make_images(tmp_path / "flat", labelled=False)
    assert "--agreement" in error_of(invoke(model_dir, "--data", flat, "--metrics", "acc", "--device", "cpu"))
    assert "--agreement" in error_of(invoke(model_dir, "--data", make_images(tmp_path / "l"), "--labels", "none",
                                            "--device", "cpu"))
    assert "needs data" in error_of(invoke(model_dir, "--metrics", "acc"))


def test_a_budget_nothing_meets_names_the_smallest(model_dir, tmp_path):
    out = tmp_path / "r.json"
    message = error_of(invoke(model_dir, "--budget-gmacs", "0.000001", "-o", out))
    assert "no sub-network fits within 1e-06 GMACs: the cheapest, TTTT, needs" in message
    assert not out.exists()


def test_unwritable_outputs_fail_before_any_work(model_dir, tmp_path):
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    assert "--force" in error_of(invoke(model_dir, "-o", existing))
    assert existing.read_text() == "keep"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "not a directory" in error_of(invoke(model_dir, "--plot", blocker / "p.png"))
    assert "cannot tell the format" in error_of(invoke(model_dir, "-o", tmp_path / "r.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "old.json"]


def test_conversion_options_are_refused_for_a_saved_model(model_dir):
    assert "--checkpoint only apply" in error_of(invoke(model_dir, "-c", "weights.pth"))


def test_errors_are_one_line_on_stderr(monkeypatch, capsys):
    from adnify.cli import main

    monkeypatch.setattr(sys, "argv", ["adnify", "report", "resnet18", "--patterns", "TTX"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("error: invalid pattern 'TTX'") and err.count("\n") == 1
