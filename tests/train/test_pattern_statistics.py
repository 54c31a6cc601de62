"""Each sub-network's own BatchNorm statistics: estimated once, stored with the weights, swapped in by pattern."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import adnify
from adnify.errors import AdnifyError
from adnify.io.data import load_image_data
from adnify.report.pattern_tree import PatternTree
from adnify.statistics import PatternStatistics
from adnify.train.calibrate import estimate_pattern_statistics, reestimate_batchnorms

TINY = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=10, zero_init_last=False)


def batches(n: int = 4, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g) * 2 + 1, torch.zeros(size)) for _ in range(n)]


def tiny(shared_norms: bool = False) -> adnify.AdaptiveNet:
    torch.manual_seed(0)
    return adnify.convert("resnet18", shared_norms=shared_norms, **TINY).eval()


@pytest.fixture(params=[False, True], ids=["skip-aware-norms", "shared-norms"])
def net_with_stats(request):
    net = tiny(request.param)
    net.set_pattern_statistics(estimate_pattern_statistics(net, batches(), max_images=32))
    return net


def precise_alone(net: adnify.AdaptiveNet, pattern: str) -> adnify.AdaptiveNet:
    """A copy whose every BatchNorm is re-estimated under ``pattern`` alone, on the same images."""
    ref = copy.deepcopy(net)
    ref.set_pattern_statistics(None)
    norms = [m for m in ref.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    reestimate_batchnorms(ref, norms, batches(), max_images=32, patterns=(pattern,))
    return ref.eval()


def outputs(net: adnify.AdaptiveNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {p: net(x, skip=p) for p in net.patterns()}


def test_every_pattern_computes_what_a_precise_estimate_under_it_alone_computes(net_with_stats):
    x = torch.randn(3, 3, 32, 32)
    got = outputs(net_with_stats, x)
    for pattern in ("FFFF", "TFFT", "FTTF", "TTTT"):
        with torch.no_grad():
            torch.testing.assert_close(got[pattern], precise_alone(net_with_stats, pattern)(x, skip=pattern),
                                       rtol=1e-5, atol=1e-5)


def test_fused_norm_activation_layers_and_a_head_norm_get_their_sets_too():
    torch.manual_seed(0)  # Lite0: timm's BatchNormAct2d throughout, and a BatchNorm after the last stage
    net = adnify.convert("tf_efficientnet_lite0", shared_norms=True, num_classes=10, input_size=(3, 32, 32)).eval()
    net.set_pattern_statistics(estimate_pattern_statistics(net, batches(2), max_images=16))
    assert net.pattern_statistics.level("bn2") == 5 and len(net.pattern_statistics.sets["bn2"]) == 32
    x = torch.randn(2, 3, 32, 32)
    expected = outputs(net, x)
    by_tree = PatternTree.build(net).run(x, [adnify.parse_pattern(p, 5) for p in net.patterns()])
    for pattern in ("FFFFF", "TFTFT", "TTTTT"):
        ref = copy.deepcopy(net)
        ref.set_pattern_statistics(None)
        norms = [m for m in ref.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        reestimate_batchnorms(ref, norms, batches(2), max_images=16, patterns=(pattern,))
        with torch.no_grad():
            torch.testing.assert_close(expected[pattern], ref.eval()(x, skip=pattern), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(net.export(pattern).eval()(x), expected[pattern], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(by_tree[adnify.parse_pattern(pattern, 5)], expected[pattern], rtol=0, atol=0)


def test_a_layer_keeps_one_set_per_prefix_of_the_stages_before_it():
    net = tiny()
    stats = estimate_pattern_statistics(net, batches(), max_images=32)
    assert stats.level("bn1") == 0 and list(stats.sets["bn1"]) == [""]  # the stem: one set
    assert stats.level("layer3.1.bn2") == 2 and sorted(stats.sets["layer3.1.bn2"]) == ["FF", "FT", "TF", "TT"]
    # a skip-aware copy has its norm's level and is estimated where it runs
    assert sorted(stats.sets["layer2.0.bn1.skip_copy"]) == ["F", "T"]
    assert stats.info == {"images": 32, "patterns": 16}


def same_sets(a: PatternStatistics, b: PatternStatistics) -> bool:
    return a.sets.keys() == b.sets.keys() and all(
        a.sets[n].keys() == b.sets[n].keys() and all(torch.equal(x, y) for p in a.sets[n]
                                                     for x, y in zip(a.sets[n][p], b.sets[n][p])) for n in a.sets)


@pytest.mark.parametrize("shared_norms", [False, True], ids=["skip-aware-norms", "shared-norms"])
def test_a_model_the_prefix_tree_cannot_cut_gets_the_same_statistics_one_pass_per_pattern(shared_norms):
    """Estimation runs all patterns of a batch as a prefix tree; where the tree is unavailable (here a user's
    hook on a whole stage, which a traced graph would skip) it runs each pattern in turn, to the same numbers."""
    by_tree = estimate_pattern_statistics(tiny(shared_norms), batches(), max_images=32)
    hooked = tiny(shared_norms)
    calls = []
    hooked.model.layer2.register_forward_hook(lambda *a: calls.append(1))
    labels: list[str] = []
    with pytest.warns(RuntimeWarning, match="one pattern at a time .* forward hooks"):
        by_pattern = estimate_pattern_statistics(hooked, batches(), max_images=32, on_pattern=labels.append)
    assert calls and labels[0] == "FFFF" and len(labels) >= 8  # it ran pattern by pattern, hook and all
    assert same_sets(by_tree, by_pattern) and by_pattern.info == by_tree.info


def test_training_mode_and_state_dict_hold_the_shared_statistics():
    net = tiny()
    shared = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)
    before = outputs(net, x)
    net.set_pattern_statistics(estimate_pattern_statistics(net, batches(), max_images=32))
    for pattern in ("TFTF", "base"):
        net.set_subnet(pattern)
        assert all(torch.equal(v, shared[k]) for k, v in net.state_dict().items())
    net.train()
    assert all(torch.equal(v, shared[f"model.{k}"]) for k, v in net.model.state_dict().items())
    sets = net.pattern_statistics.clone().sets
    net(x, skip="TFTF")  # a training step's forward updates the shared statistics, never a pattern's set
    assert not torch.equal(net.model.bn1.running_mean, shared["model.bn1.running_mean"])
    assert all(torch.equal(a, b) for n, per in sets.items() for k, pair in per.items()
               for a, b in zip(pair, net.pattern_statistics.sets[n][k]))
    net.load_state_dict(shared)
    net.set_pattern_statistics(None)
    net.eval()
    for pattern, out in outputs(net, x).items():
        torch.testing.assert_close(out, before[pattern], rtol=0, atol=0)


def test_a_saved_model_carries_its_statistics(net_with_stats, tmp_path):
    net_with_stats.set_subnet("TFFT")
    net_with_stats.save(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "adnify.json").read_text())
    assert config["pattern_statistics"] == {"file": "pattern_statistics.safetensors", "images": 32, "patterns": 16}
    loaded = adnify.load(str(tmp_path / "m"))
    assert loaded.pattern_statistics is not None
    x = torch.randn(2, 3, 32, 32)
    for pattern, out in outputs(loaded, x).items():
        torch.testing.assert_close(out, outputs(net_with_stats, x)[pattern], rtol=0, atol=0)


def test_adnify_info_says_a_model_has_them(net_with_stats, tmp_path):
    from typer.testing import CliRunner

    from adnify.cli import app

    net_with_stats.save(str(tmp_path / "m"))
    result = CliRunner().invoke(app, ["info", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "BatchNorm statistics: each sub-network's own" in result.output and "32 images" in result.output


def test_static_exports_and_the_prefix_tree_use_the_patterns_statistics(net_with_stats):
    x = torch.randn(3, 3, 32, 32)
    expected = outputs(net_with_stats, x)
    flags = [adnify.parse_pattern(p, 4) for p in net_with_stats.patterns()]
    by_tree = PatternTree.build(net_with_stats).run(x, flags)
    with torch.no_grad():
        for f, pattern in zip(flags, net_with_stats.patterns()):
            torch.testing.assert_close(by_tree[f], expected[pattern], rtol=0, atol=0)
            for share in (False, True):
                torch.testing.assert_close(net_with_stats.export(pattern, share=share).eval()(x), expected[pattern])


def test_copies_and_moves_keep_the_statistics_apart(net_with_stats):
    x = torch.randn(2, 3, 32, 32)
    expected = outputs(net_with_stats, x)
    clone = copy.deepcopy(net_with_stats)
    clone.pattern_statistics.sets["bn1"][""][0].add_(1.0)
    torch.testing.assert_close(outputs(net_with_stats, x)["TTFF"], expected["TTFF"], rtol=0, atol=0)
    net_with_stats.double()
    torch.testing.assert_close(outputs(net_with_stats, x.double())["TTFF"], expected["TTFF"].double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_the_dynamic_depth_file_picks_each_patterns_statistics_at_run_time(net_with_stats, tmp_path, fmt):
    from adnify.export import export_dynamic

    path = export_dynamic(net_with_stats, tmp_path / f"m.{fmt}", format=fmt, input_size=(3, 32, 32))
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path))
        run = lambda x, skip: torch.from_numpy(session.run(None, {"input": x.numpy(), "skip": skip.numpy()})[0])
    else:
        run = torch.export.load(str(path)).module()
    x = torch.randn(2, 3, 32, 32)
    for pattern, expected in outputs(net_with_stats, x).items():
        with torch.no_grad():
            got = run(x, torch.tensor([c == "T" for c in pattern]))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_missing_or_foreign_statistics_file_is_one_clear_error(net_with_stats, tmp_path):
    net_with_stats.save(str(tmp_path / "m"))
    stats_file = tmp_path / "m" / "pattern_statistics.safetensors"
    stats_file.rename(tmp_path / "kept")
    with pytest.raises(AdnifyError, match="pattern_statistics.safetensors, which is missing"):
        adnify.load(str(tmp_path / "m"))
    from safetensors.torch import save_file

    save_file({"/bn1.running_mean": torch.zeros(3), "/bn1.running_var": torch.ones(3)}, str(stats_file))
    with pytest.raises(AdnifyError, match="does not fit.*shape"):
        adnify.load(str(tmp_path / "m"))
    stats_file.write_bytes(b"not safetensors")
    with pytest.raises(AdnifyError, match="is damaged"):
        adnify.load(str(tmp_path / "m"))


def test_a_model_without_batchnorm_has_nothing_to_estimate():
    torch.manual_seed(0)
    net = adnify.convert("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=4, num_classes=10, groups=2)
    with pytest.raises(ValueError, match="no BatchNorm"):
        estimate_pattern_statistics(net, batches(), max_images=8)


def test_statistics_for_another_model_are_refused():
    net = tiny()
    bad = PatternStatistics({"no.such.norm": {"": (torch.zeros(8), torch.ones(8))}})
    with pytest.raises(ValueError, match="no BatchNorm of this model"):
        net.set_pattern_statistics(bad)
    with pytest.raises(ValueError, match="unexpected tensor name"):
        PatternStatistics.from_tensors({"XF/bn1.running_mean": torch.zeros(8)})


# --- a training run estimates them after its last step ------------------------------------------

FAST = dict(epochs=1, batch_size=8, lr=0.02, workers=0, input_size=(3, 32, 32), log_interval=1,
            warmup_epochs=0, amp=False)


@pytest.fixture(scope="module")
def digits(save_digits):
    return save_digits(48, 16)


def metrics(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.usefixtures("offline_one_thread")
def test_a_run_saves_every_sub_networks_statistics_and_evaluates_with_them(tiny_adn_dir, digits, tmp_path):
    from adnify.report.evaluate import eval_loader, evaluate_patterns
    from adnify.train import train

    out = tmp_path / "run"
    train(str(tiny_adn_dir), data=str(digits), output=out, recipe="resnet", progress=False,
          overrides={**FAST, "pattern_statistics": 24})
    assert metrics(out, "pattern_statistics")[0]["images"] == 24
    net = adnify.load(out)
    assert net.pattern_statistics is not None and net.pattern_statistics.info["transforms"] == "train"
    assert len(net.pattern_statistics.sets["layer4.1.bn2"]) == 8  # after three stages: 2**3 prefixes
    logged = metrics(out, "eval")[-1]["acc1"]
    data = load_image_data(str(digits))
    scored = evaluate_patterns(net, ["FFFF", "TTTT"], eval_loader(net, data, batch_size=8), progress=False)
    assert {p: a.acc1 for p, a in scored.items()} == pytest.approx(logged, abs=1e-6)


@pytest.mark.usefixtures("offline_one_thread")
def test_a_network_trained_alone_gets_one_precise_set_not_per_pattern_ones(tiny_adn_dir, digits, tmp_path):
    from adnify.train import train

    runs = {}
    for images in (0, 24):
        runs[images] = tmp_path / f"run{images}"
        train(str(tiny_adn_dir), data=str(digits), output=runs[images], recipe="resnet", progress=False,
              baseline=True, pattern="TTTT", overrides={**FAST, "pattern_statistics": images})
    plain, precise = adnify.load(runs[0]), adnify.load(runs[24])
    assert precise.pattern_statistics is None and metrics(runs[24], "pattern_statistics")[0]["images"] == 24
    differ = [k for k, v in precise.state_dict().items() if not torch.equal(v, plain.state_dict()[k])]
    assert differ and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in differ)


@pytest.mark.usefixtures("offline_one_thread")
def test_a_model_trained_without_them_gets_them_from_a_run_of_no_steps(tiny_adn_dir, digits, tmp_path):
    from safetensors.torch import load_file

    from adnify.train import train

    first = tmp_path / "run"
    train(str(tiny_adn_dir), data=str(digits), output=first, recipe="resnet", progress=False,
          overrides={**FAST, "pattern_statistics": 0})
    assert adnify.load(first).pattern_statistics is None
    again = tmp_path / "with-stats"
    result = train(str(first / "final"), data=str(digits), output=again, recipe=str(first / "config.yaml"),
                   progress=False, overrides={"pattern_statistics": 24}, max_steps=0)
    assert result.step == 0 and adnify.load(again).pattern_statistics is not None
    before, after = load_file(str(first / "final" / "model.safetensors")), load_file(str(again / "final" / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_shared_statistics_writes_a_dynamic_file_computing_what_training_kept(net_with_stats, tmp_path):
    from typer.testing import CliRunner

    from adnify.cli import app

    net_with_stats.save(str(tmp_path / "m"))
    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(tmp_path / "m"), "--pattern", "base", "--shared-statistics",
                                  "-o", str(tmp_path / "x.pt2")])
    assert refused.exit_code != 0 and "--shared-statistics applies to --dynamic-depth" in str(refused.exception)
    done = runner.invoke(app, ["export", str(tmp_path / "m"), "--dynamic-depth", "--shared-statistics",
                               "--input-size", "3,32,32", "-o", str(tmp_path / "m.pt2")])
    assert done.exit_code == 0, done.output
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    shared = copy.deepcopy(net_with_stats)
    shared.set_pattern_statistics(None)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program(x, torch.tensor([True, False, True, True])), shared(x, skip="TFTT"),
                                   rtol=1e-4, atol=1e-5)
    assert net_with_stats.pattern_statistics is not None  # the model itself keeps its own
