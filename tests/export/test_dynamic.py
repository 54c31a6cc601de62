"""One deployable file whose depth is an input (issue 19): every pattern computes what the adaptive
model computes, in onnxruntime and in the torch.export program, with real branches."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import adnify
from adnify.cli import app
from adnify.export import export_dynamic, read_metadata
from adnify.report.costs import pattern_costs

runner = CliRunner()
TINY = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=10, zero_init_last=False)


@pytest.fixture(scope="module", params=["one branch per stage", "fallback: a branch per block and norm"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    net = adnify.convert("resnet18", input_size=(3, 32, 32), **TINY).eval()
    fallback = request.param.startswith("fallback")
    folder = tmp_path_factory.mktemp("fallback" if fallback else "per-stage")
    with pytest.MonkeyPatch.context() as patch:
        if fallback:  # what a stage whose blocks are not one nn.Sequential's gets
            patch.setattr(adnify.export.dynamic, "switched_model", lambda net, flags: None)
        files = {fmt: export_dynamic(net, folder / f"net.{ext}", format=fmt)
                 for fmt, ext in (("onnx", "onnx"), ("pt", "pt2"))}
    return net, files, folder


def flags(pattern: str) -> np.ndarray:
    return np.array([c == "T" for c in pattern])


def test_every_pattern_in_onnxruntime_equals_the_adaptive_model_at_any_batch_size(exported):
    net, files, _ = exported
    session = ort.InferenceSession(str(files["onnx"]))
    inputs = {i.name: i for i in session.get_inputs()}
    assert inputs["skip"].type == "tensor(bool)" and inputs["skip"].shape == [net.num_stages]
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        for pattern in net.patterns():
            got = session.run(None, {"input": x.numpy(), "skip": flags(pattern)})[0]
            with torch.no_grad():
                expected = net(x, skip=pattern).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=pattern)


def test_every_pattern_of_the_torch_export_program_equals_the_adaptive_model(exported):
    net, files, _ = exported
    program = torch.export.load(str(files["pt"])).module()
    x = torch.randn(2, 3, 32, 32)
    for pattern in net.patterns():
        with torch.no_grad():
            torch.testing.assert_close(program(x, torch.from_numpy(flags(pattern))), net(x, skip=pattern),
                                       rtol=1e-4, atol=1e-5, msg=pattern)


def test_skipped_blocks_are_branches_and_the_file_is_one_model(exported):
    net, files, _ = exported
    graph = onnx.load(str(files["onnx"])).graph
    branches = [n for n in graph.node if n.op_type == "If"]
    per_block_and_norm = sum(len(s.skippable) + len(s.norms) for s in net.plan.stages)
    assert len(branches) in (net.num_stages, per_block_and_norm)
    weights = sum(t.numel() * t.element_size() for n, t in net.state_dict().items() if "num_batches" not in n)
    stored = sum(len(onnx.numpy_helper.to_array(t).tobytes()) for g in _graphs(graph) for t in g.initializer)
    assert 0.95 * weights < stored < 1.05 * weights  # every weight once, twins included


def test_a_stage_is_one_branch_whose_sides_are_plain_layers_a_runtime_can_fuse(exported):
    net, files, folder = exported
    if folder.name.startswith("fallback"):
        pytest.skip("the fallback export branches per block and norm")
    graph = onnx.load(str(files["onnx"])).graph
    branches = [n for n in graph.node if n.op_type == "If"]
    assert len(branches) == net.num_stages
    for node in branches:
        sides = {a.name: a.g for a in node.attribute}
        for side in sides.values():  # nothing nested: one decision per stage, then straight-line layers
            assert not [n for g in _graphs(side) for n in g.node if n.op_type == "If"]
        convs = {name: sum(n.op_type == "Conv" for n in g.node) for name, g in sides.items()}
        assert convs["then_branch"] < convs["else_branch"]  # skip=True runs fewer convolutions


def test_weights_that_one_branch_reads_are_stored_in_that_branch(exported):
    # onnxruntime's NCHWc layout pass rewrites only convolutions whose weights are local to their graph
    _, files, _ = exported
    graph = onnx.load(str(files["onnx"])).graph
    readers: dict[str, set[int]] = {}
    for g in _graphs(graph):
        for node in g.node:
            for name in node.input:
                readers.setdefault(name, set()).add(id(g))
    outer = [t.name for t in graph.initializer if readers.get(t.name, set()) - {id(graph)} and len(readers[t.name]) == 1]
    assert not outer
    assert any(g.initializer for g in list(_graphs(graph))[1:])


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)


def test_metadata_names_stages_patterns_and_macs_for_a_runtime(exported):
    net, files, _ = exported
    expected = {c.pattern: c.macs for c in pattern_costs(net, net.patterns(), input_size=(3, 32, 32))}
    for path in files.values():
        meta = read_metadata(path)
        assert meta["patterns"] == net.patterns() and meta["macs"] == expected
        assert [s["skippable"] for s in meta["stages"]] == [s.skippable for s in net.plan.stages]


def test_a_wrong_skip_vector_is_refused_by_the_runtime(exported):
    _, files, _ = exported
    session = ort.InferenceSession(str(files["onnx"]))
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(Exception, match="skip"):
        session.run(None, {"input": x, "skip": np.array([True, False])})
    with pytest.raises(Exception):
        session.run(None, {"input": x, "skip": np.zeros(4, np.float32)})


def test_cli_refuses_pattern_with_dynamic_depth_and_an_existing_file(exported, tmp_path):
    net, files, folder = exported
    net.save(str(tmp_path / "m"))
    both = runner.invoke(app, ["export", str(tmp_path / "m"), "--dynamic-depth", "--pattern", "TTFF", "-o",
                               str(tmp_path / "x.onnx")])
    assert isinstance(both.exception, adnify.AdnifyError) and "either --pattern" in str(both.exception)
    exists = runner.invoke(app, ["export", str(tmp_path / "m"), "--dynamic-depth", "--format", "onnx",
                                 "-o", str(files["onnx"])])
    assert isinstance(exists.exception, adnify.AdnifyError) and "--force" in str(exists.exception)
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_model_the_exporter_cannot_express_gets_one_line_naming_the_static_export(exported, tmp_path, monkeypatch):
    net, _, _ = exported

    def fails(*args, **kwargs):  # what torch.export raises on a graph break inside a branch
        try:
            raise RuntimeError("\x1b[96mgraph break\x1b[0m: side effect in forward\nmore detail")
        except RuntimeError as inner:
            raise ValueError("Failed to export the model with torch.export. This is step 1/3") from inner

    monkeypatch.setattr(torch.export, "export", fails)
    with pytest.raises(adnify.AdnifyError) as caught:
        export_dynamic(net, tmp_path / "net.pt2", format="pt")
    message = str(caught.value)
    assert "--pattern" in message and "RuntimeError: graph break: side effect in forward" in message
    assert "\n" not in message and "\x1b" not in message
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_the_serving_example_picks_the_deepest_pattern_that_fits_each_budget(exported):
    import subprocess
    import sys
    from pathlib import Path

    net, files, _ = exported
    example = Path(__file__).resolve().parents[2] / "examples" / "serve_dynamic.py"
    done = subprocess.run([sys.executable, str(example), str(files["onnx"]), "--budget-ms", "1e6",
                           "--budget-ms", "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    chosen = [line.split("-> ")[1].split()[0] for line in done.stdout.splitlines() if line.startswith("budget")]
    assert chosen == ["F" * net.num_stages, "T" * net.num_stages]  # all the time: super; none: base


def test_the_serving_example_chooses_by_the_rule_of_adnify_report():
    import importlib.util
    from pathlib import Path

    from adnify.report import select_within_budget

    path = Path(__file__).resolve().parents[2] / "examples" / "serve_dynamic.py"
    spec = importlib.util.spec_from_file_location("serve_dynamic", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # Stage 0 skips 3 cheap blocks, stage 1 one costly block: TF keeps more MACs, FT more depth.
    meta = {"patterns": ["FF", "TF", "FT", "TT"], "stages": [{"skippable": ["a", "b", "c"]}, {"skippable": ["d"]}],
            "macs": {"FF": 6e9, "TF": 5e9, "FT": 4e9, "TT": 3e9}}
    latency = {"FF": 60.0, "TF": 50.0, "FT": 40.0, "TT": 30.0}
    for budget in (100, 55, 45, 35):
        rows = example.report_rows(meta, latency)
        assert example.choose(meta, latency, budget) == select_within_budget(rows, budget_ms=budget)["pattern"]
    assert example.choose(meta, latency, 55) == "FT"  # the deeper one, though TF has more MACs


def test_a_stage_switch_the_exporter_rejects_falls_back_to_a_branch_per_block(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = adnify.convert("resnet18", input_size=(3, 32, 32), **TINY).eval()

    def called_block_by_block(self, x):  # what a model that loops over its blocks with keywords gives
        raise TypeError("StageSwitch.forward() got an unexpected keyword argument 'attn_mask'")

    monkeypatch.setattr(adnify.export.dynamic.StageSwitch, "forward", called_block_by_block)
    path = export_dynamic(net, tmp_path / "net.onnx")
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "If" for n in graph.node) == sum(len(s.skippable) + len(s.norms) for s in net.plan.stages)
    session, x = ort.InferenceSession(str(path)), torch.randn(1, 3, 32, 32)
    for pattern in ("FFFF", "TFTF", "TTTT"):
        with torch.no_grad():
            expected = net(x, skip=pattern).numpy()
        got = session.run(None, {"input": x.numpy(), "skip": flags(pattern)})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
