"""Specification of the pattern tree: every sub-network's logits, shared prefixes computed once, bit for bit."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import adnify
from adnify.conversion.plan import parse_pattern
from adnify.report.evaluate import evaluate_patterns
from adnify.report.layout import Layout
from adnify.report.pattern_tree import PatternTree, TreeUnavailable

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {
    "cnn": lambda: adnify.convert("resnet18", num_classes=10, channels=(8, 16, 32, 64), stem_width=8,
                                  input_size=(3, 32, 32)),
    "vit": lambda: adnify.convert("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=8,
                                  embed_dim=32, num_heads=2, input_size=(3, 32, 32)),
    "swin": lambda: adnify.convert("swin_tiny_patch4_window7_224", num_classes=10, img_size=64, window_size=2,
                                   embed_dim=16, num_heads=(1, 2, 2, 2), depths=(2, 2, 2, 2), input_size=(3, 64, 64)),
}


def distinct_net(family: str) -> adnify.AdaptiveNet:
    """A random net whose sub-networks really differ (timm zero-inits the last norm of some blocks)."""
    torch.manual_seed(0)
    net = MODELS[family]().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return net


def flags(net: adnify.AdaptiveNet, patterns: list[str]) -> list[tuple[bool, ...]]:
    return [parse_pattern(p, net.num_stages) for p in patterns]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_pattern_equals_its_own_forward_pass_bit_for_bit(family):
    net = distinct_net(family)
    x = torch.randn(3, *net.input_size(), generator=torch.Generator().manual_seed(2))
    found = PatternTree.build(net).run(x, flags(net, net.patterns()))
    with torch.inference_mode():
        separate = {p: net(x, skip=p) for p in net.patterns()}
    assert len({v.sum().item() for v in separate.values()}) == len(separate)  # the test can tell them apart
    for p, f in zip(net.patterns(), flags(net, net.patterns())):
        assert torch.equal(found[f], separate[p]), p
    assert net.pattern == "F" * net.num_stages  # the selected sub-network is restored


def test_a_subset_of_patterns_runs_only_the_sub_tree_it_needs():
    net = distinct_net("cnn")
    tree = PatternTree.build(net)
    runs = [0] * net.num_stages
    for level, segment in enumerate(tree.levels):
        segment.module.register_forward_hook(lambda *_, level=level: runs.__setitem__(level, runs[level] + 1))
    x = torch.randn(2, *net.input_size())
    wanted = ["FFFF", "TTTT", "TFTF"]
    found = tree.run(x, flags(net, wanted))
    # distinct prefixes: F, T | FF, TT, TF | FFF, TTT, TFT | FFFF, TTTT, TFTF
    assert runs == [2, 3, 3, 3]
    with torch.inference_mode():
        for p, f in zip(wanted, flags(net, wanted)):
            assert torch.equal(found[f], net(x, skip=p))


def test_all_patterns_run_each_stage_once_per_distinct_prefix():
    net = distinct_net("cnn")
    tree = PatternTree.build(net)
    runs = [0] * net.num_stages
    for level, segment in enumerate(tree.levels):
        segment.module.register_forward_hook(lambda *_, level=level: runs.__setitem__(level, runs[level] + 1))
    tree.run(torch.randn(1, *net.input_size()), flags(net, net.patterns()))
    assert runs == [2, 4, 8, 16]  # not 16 at every stage


def test_evaluation_through_the_tree_equals_one_pass_per_pattern():
    net = distinct_net("swin")
    g = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.randn(10, *net.input_size(), generator=g), torch.randint(0, 10, (10,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    wanted = ["super", "base", "TFTF", "FTFT"]
    record: dict = {}
    tree = evaluate_patterns(net, wanted, loader, agreement=True, progress=False, record=record)
    assert record["evaluation"].startswith("pattern tree")
    separate = evaluate_patterns(net, wanted, loader, agreement=True, progress=False, record=record, tree=False)
    assert record["evaluation"] == "one pass per pattern (asked for)"
    assert tree == separate  # every count and KL sum identical
    assert len({r.kl_to_super for r in tree.values()}) == len(wanted)


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.bn(self.conv(x)))


class ReadAgain(nn.Module):
    """Three stages; the head reads the first stage's output again, past the other two."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage1, self.down1 = nn.Sequential(_Residual(8), _Residual(8)), nn.Conv2d(8, 16, 3, 2, 1)
        self.stage2, self.down2 = nn.Sequential(_Residual(16), _Residual(16)), nn.Conv2d(16, 32, 3, 2, 1)
        self.stage3, self.fc = nn.Sequential(_Residual(32), _Residual(32)), nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stage1(self.stem(x))
        b = self.stage3(self.down2(self.stage2(self.down1(a))))
        return self.fc(torch.cat([a.mean((2, 3)), b.mean((2, 3))], 1))


def test_a_stage_output_read_again_later_falls_back_to_one_pass_per_pattern_and_says_so():
    torch.manual_seed(0)
    net = adnify.convert(ReadAgain(), input_size=(3, 16, 16)).eval()
    assert net.num_stages == 3
    with pytest.raises(TreeUnavailable, match="output of stage1.1 .* read again after stage stage2"):
        PatternTree.build(net)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g))
    record: dict = {}
    with pytest.warns(RuntimeWarning, match="each sub-network is evaluated in turn.*read again"):
        results = evaluate_patterns(net, net.patterns(), torch.utils.data.DataLoader(data, batch_size=3),
                                    progress=False, record=record)
    assert record["evaluation"].startswith("one pass per pattern (the output of stage1.1")
    with torch.inference_mode():
        for p, r in results.items():
            expected = (net(data.tensors[0], skip=p).argmax(-1) == data.tensors[1]).float().mean().item()
            assert r.acc1 == pytest.approx(100 * expected)


def test_a_features_only_backbone_cannot_be_cut():
    net = adnify.convert("resnet18", features_only=True, channels=(8, 16, 32, 64), stem_width=8, input_size=(3, 32, 32))
    with pytest.raises(TreeUnavailable, match="read again"):
        PatternTree.build(net.eval())


def test_a_layer_changing_its_input_in_place_is_caught_and_evaluated_per_pattern():
    """The T branch must not see what the F branch wrote into their shared input: detected, then recomputed."""
    net = distinct_net("cnn")
    block = net.model.get_submodule(net.plan.stages[1].mandatory[0])
    original = block.forward
    block.forward = lambda x: original(x.relu_())  # harmless when each pattern runs alone
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(4, *net.input_size(), generator=g), torch.randint(0, 10, (4,), generator=g)
    record: dict = {}
    with pytest.warns(RuntimeWarning, match="changes its input in place"):
        results = evaluate_patterns(net, net.patterns(), [(x, y)], progress=False, record=record,
                                    layout=Layout("contiguous"), agreement=True)
    assert record["evaluation"].startswith("one pass per pattern")
    with torch.inference_mode():
        reference = net(x.clone(), skip="super")
        for p, r in results.items():
            logits = net(x.clone(), skip=p)
            kl = torch.nn.functional.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                                            reduction="batchmean")
            assert r.kl_to_super == pytest.approx(kl.item(), rel=1e-6, abs=1e-9), p


def test_hooks_the_traced_graph_would_skip_fall_back_to_one_pass_per_pattern():
    """A pre-hook on the net (casting its input, say) or a hook on a module the trace runs through."""
    net = distinct_net("cnn")
    handle = net.register_forward_pre_hook(lambda _m, args: (args[0] * 2, *args[1:]))
    with pytest.raises(TreeUnavailable, match="the adaptive net has forward hooks"):
        PatternTree.build(net)
    handle.remove()
    handle = net.model.layer1.register_forward_hook(lambda *_: None)  # a container: traced through
    with pytest.raises(TreeUnavailable, match="layer1 has forward hooks"):
        PatternTree.build(net)
    handle.remove()
    net.model.layer1[0].register_forward_hook(lambda *_: None)  # a block: called as a leaf, its hooks run
    PatternTree.build(net)
