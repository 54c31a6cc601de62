"""The Python API of a converted model: what a user does with ``adnify.convert`` and what must hold."""

from __future__ import annotations

import copy
import json
import time

import pytest
import timm
import torch
from torch import nn

import adnify
from adnify import AdnifyError

SIZE = (3, 64, 64)


@pytest.fixture(scope="module")
def original() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    randomize_norms(model)
    return model


def randomize_norms(model: nn.Module) -> None:
    """timm zero-initialises the last norm of each block: give the blocks something to compute."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)


@pytest.fixture()
def net(original: nn.Module) -> adnify.AdaptiveNet:
    return adnify.convert(copy.deepcopy(original), input_size=SIZE).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, *SIZE)


def test_the_super_net_computes_what_the_original_computed(original, net, x):
    assert torch.allclose(net(x), original(x), atol=1e-5, rtol=0)


def test_patterns_list_every_sub_network_from_super_to_base(net):
    pats = net.patterns()
    assert net.num_stages == 4
    assert len(pats) == 16 == len(set(pats))
    assert pats[0] == "FFFF" and pats[-1] == "TTTT"


def test_skipping_changes_the_output_and_keeps_its_shape(net, x):
    full = net(x)
    for p in net.patterns()[1:]:
        out = net(x, skip=p)
        assert out.shape == full.shape
        assert not torch.allclose(out, full)


def test_skip_accepts_strings_aliases_and_bools(net, x):
    torch.testing.assert_close(net(x, skip="base"), net(x, skip="TTTT"))
    torch.testing.assert_close(net(x, skip=[True, False, False, False]), net(x, skip="TFFF"))
    torch.testing.assert_close(net(x, skip="super"), net(x))
    assert net.pattern == "FFFF", "a per-call skip must not stick"


@pytest.mark.parametrize("bad", ["TTF", "TTFFF", "TXFF", "", [True, False]])
def test_a_bad_pattern_says_what_was_expected(net, x, bad):
    with pytest.raises(ValueError, match="expected 4 characters of T"):
        net(x, skip=bad)


def test_subnet_is_scoped_and_set_subnet_persists(net, x):
    with net.subnet("base"):
        assert net.pattern == "TTTT"
        inside = net(x)
    assert net.pattern == "FFFF"
    torch.testing.assert_close(inside, net(x, skip="TTTT"))
    net.set_subnet("TFFF")
    assert net.pattern == "TFFF"
    torch.testing.assert_close(net(x), net(x, skip="TFFF"))


def test_skipped_blocks_are_not_executed(net, x):
    calls: list[str] = []
    modules = dict(net.model.named_modules())
    for name in net.plan.stages[0].skippable:
        modules[name].conv1.register_forward_hook(lambda *a, n=name: calls.append(n))
    net(x, skip="TFFF")
    assert calls == []
    net(x, skip="FTFF")
    assert calls == net.plan.stages[0].skippable


def test_skip_aware_norms_switch_to_their_twin(net, x):
    norm_name = net.plan.stages[1].norms[0]
    norm = net.model.get_submodule(norm_name)
    with torch.no_grad():
        norm.skip_copy.weight.mul_(0.5)  # the twins start equal: make them differ
    a, b = net(x, skip="FFFF"), net(x, skip="FTFF")
    with torch.no_grad():
        norm.skip_copy.weight.mul_(2.0)
    assert not torch.allclose(net(x, skip="FTFF"), b)
    torch.testing.assert_close(net(x, skip="FFFF"), a)


def test_twins_start_from_the_original_values_and_statistics(original, net):
    for stage in net.plan.stages:
        for name in stage.norms:
            norm = net.model.get_submodule(name)
            for key, value in norm.skip_copy.state_dict().items():
                torch.testing.assert_close(value, original.get_submodule(name).state_dict()[key])


def test_parameter_names_are_the_original_ones_plus_twins(original, net):
    orig_keys = set(original.state_dict())
    keys = set(net.model.state_dict())
    assert orig_keys <= keys
    assert all(".skip_copy." in k for k in keys - orig_keys)


def test_stage_outputs_are_the_inputs_of_the_next_stage(net, x):
    logits, feats = net(x, skip="TFTF", return_stages=True)
    assert len(feats) == net.num_stages
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    torch.testing.assert_close(feats[-1], net.stage_outputs[-1])
    # the last stage's output is what the head pools
    torch.testing.assert_close(net.model.forward_head(feats[-1]), logits)


def test_switching_is_a_flag_flip(net):
    params_before = [p.data_ptr() for p in net.parameters()]
    start = time.perf_counter()
    for i in range(1000):
        net.set_subnet("TTTT" if i % 2 else "FFFF")
    per_switch = (time.perf_counter() - start) / 1000
    assert [p.data_ptr() for p in net.parameters()] == params_before
    assert per_switch < 1e-3  # generous: benchmarks/ measures the real figure


def test_save_and_load_round_trip(net, x, tmp_path):
    net.set_subnet("FFFF")
    net.save(tmp_path / "adn")
    files = sorted(p.name for p in (tmp_path / "adn").iterdir())
    assert files == ["adnify.json", "model.safetensors"]
    config = json.loads((tmp_path / "adn" / "adnify.json").read_text())
    assert config["source"]["model"] == "resnet18"
    assert config["source"]["kwargs"] == {"num_classes": 10}
    assert config["plan"]["stages"][0]["skippable"] == ["layer1.1"]
    loaded = adnify.load(tmp_path / "adn")
    for p in ["FFFF", "TFTF", "TTTT"]:
        torch.testing.assert_close(loaded(x, skip=p), net(x, skip=p), atol=1e-5, rtol=0)


def test_save_refuses_an_existing_directory_without_force(net, tmp_path):
    out = tmp_path / "adn"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AdnifyError, match="already exists"):
        net.save(out)
    assert (out / "keep.txt").read_text() == "mine"
    net.save(out, force=True)
    assert (out / "adnify.json").is_file() and not (out / "keep.txt").exists()


def test_a_failed_save_leaves_nothing_behind(net, tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", boom)
    with pytest.raises(RuntimeError):
        net.save(tmp_path / "adn")
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(AdnifyError, match="not an adnify model directory"):
        adnify.load(tmp_path)


@pytest.mark.parametrize("pattern", ["FFFF", "TFTF", "TTTT"])
def test_export_is_a_plain_module_equal_to_the_pattern(net, x, pattern):
    static = net.export(pattern).eval()
    assert type(static) is type(net.model).adnify_base if hasattr(type(net.model), "adnify_base") else type(net.model)
    assert not any(".skip_copy" in k for k in static.state_dict())
    torch.testing.assert_close(static(x), net(x, skip=pattern), atol=1e-5, rtol=0)
    skipped = net.block_names(pattern)
    assert all(not list(static.get_submodule(n).parameters()) for n in skipped)


def test_export_uses_the_twin_norms_of_skipped_stages(net, x):
    norm_name = net.plan.stages[0].norms[0]
    with torch.no_grad():
        net.model.get_submodule(norm_name).skip_copy.bias.add_(0.1)
    static = net.export("TFFF").eval()
    torch.testing.assert_close(static(x), net(x, skip="TFFF"), atol=1e-5, rtol=0)
    torch.testing.assert_close(net.export("FFFF").eval()(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pattern", ["FFFF", "TFTF"])
def test_a_shared_export_holds_the_nets_own_tensors_and_computes_the_pattern(net, x, pattern):
    """report --static times 2^N exports side by side: they must not hold 2^N copies of the weights."""
    net = copy.deepcopy(net).eval()
    static = net.export(pattern, share=True).eval()
    own = {t.data_ptr() for t in (*net.parameters(), *net.buffers())}
    assert all(t.data_ptr() in own for t in (*static.parameters(), *static.buffers()))
    torch.testing.assert_close(static(x), net(x, skip=pattern), atol=1e-5, rtol=0)
    twin = net.model.get_submodule(net.plan.stages[0].norms[0]).skip_copy
    with torch.no_grad():
        twin.bias.add_(0.1)  # seen by the shared export, not by a copy
    torch.testing.assert_close(static(x), net(x, skip=pattern), atol=1e-5, rtol=0)
    assert not any(t.data_ptr() in own for t in net.export(pattern).parameters())


def test_export_traces_with_fx_and_torch_export(net, x):
    static = net.export("TFTF").eval()
    expected = net(x, skip="TFTF")
    traced = torch.fx.symbolic_trace(static)
    torch.testing.assert_close(traced(x), expected, atol=1e-5, rtol=0)
    program = torch.export.export(static, (x,))
    torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_export_runs_under_torch_compile(net, x):
    static = torch.compile(net.export("TTTT").eval())
    torch.testing.assert_close(static(x), net(x, skip="TTTT"), atol=1e-4, rtol=1e-4)


def test_deepcopy_is_independent(net, x):
    clone = copy.deepcopy(net)
    torch.testing.assert_close(clone(x, skip="TFTF"), net(x, skip="TFTF"))
    clone.set_subnet("TTTT")
    assert net.pattern == "FFFF"
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert not torch.allclose(clone(x, skip="FFFF"), net(x))


class TinyResNet(nn.Module):
    """A plain nn.Module, not from timm: two stages of residual blocks."""

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.bn(self.conv(x)))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.stage1 = nn.Sequential(*[self.Block(8) for _ in range(3)])
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.stage2 = nn.Sequential(*[self.Block(16) for _ in range(4)])
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_any_module_with_residual_stages_converts(tmp_path):
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    net = adnify.convert(model, input_size=(3, 16, 16)).eval()
    torch.testing.assert_close(net(x), ref)
    assert [s.skippable for s in net.plan.stages] == [["stage1.2"], ["stage2.2", "stage2.3"]]
    assert net.plan.stages[0].norms == ["stage1.0.bn", "stage1.1.bn"]
    net.save(tmp_path / "tiny")
    with pytest.raises(AdnifyError, match="pass model="):
        adnify.load(tmp_path / "tiny")
    loaded = adnify.load(tmp_path / "tiny", model=TinyResNet())
    torch.testing.assert_close(loaded(x, skip="TF"), net(x, skip="TF"))


def test_split_and_stage_selection(original):
    net = adnify.convert(copy.deepcopy(original), input_size=SIZE, stages=[1, 3])
    assert [s.name for s in net.plan.stages] == ["layer2", "layer4"]
    with pytest.raises(AdnifyError, match="out of range"):
        adnify.convert(copy.deepcopy(original), input_size=SIZE, stages=[7])


def test_shared_norms_adds_no_twins(original, x):
    net = adnify.convert(copy.deepcopy(original), input_size=SIZE, shared_norms=True).eval()
    assert not any(".skip_copy." in k for k in net.model.state_dict())
    torch.testing.assert_close(net.export("TTTT").eval()(x), net(x, skip="TTTT"))


def test_nothing_to_adapt_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(AdnifyError, match="nothing to adapt"):
        adnify.convert(model, input_size=(3, 16, 16))
