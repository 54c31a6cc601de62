"""Both sub-networks share the layers before the first adaptive stage within a training step."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import adnify
from adnify.train.steps import AdnPair, LossConfig, adn_step

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {
    "resnet": lambda: adnify.convert("resnet18", num_classes=10, channels=(8, 16, 32, 64), stem_width=8,
                                     zero_init_last=False, drop_path_rate=0.2),
    "efficientnet": lambda: adnify.convert("tf_efficientnet_lite0", num_classes=10, input_size=(3, 32, 32)),
    "vit": lambda: adnify.convert("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=4,
                                  input_size=(3, 32, 32)),
}



def step(net: adnify.AdaptiveNet, accelerator, order: str, share: bool, dtype: torch.dtype = torch.float32,
         steps: int = 1):
    """``steps`` adnify training steps (SGD); returns the last loss parts, its gradients and the net."""
    net = copy.deepcopy(net).to(dtype)
    pair = AdnPair(net, share_prefix=share).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = LossConfig(channel_dims=tuple(s.channel_dim for s in net.plan.stages))
    for i in range(steps):
        g = torch.Generator().manual_seed(1 + i)
        x, y = torch.randn(4, 3, 32, 32, generator=g, dtype=dtype), torch.randint(0, 10, (4,), generator=g)
        torch.manual_seed(i)
        if i:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        parts = adn_step(accelerator, pair, x, y, loss, order=order)
    return parts, {n: p.grad for n, p in net.named_parameters()}, net


class LongSkip(nn.Module):
    """A stem whose output also reaches the head, past every stage: it cannot be shared as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.blocks = nn.Sequential(*[_Residual(8) for _ in range(4)])
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x)
        return self.fc(torch.cat([self.blocks(z).mean((2, 3)), z.mean((2, 3))], 1))


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_a_stem_used_again_after_the_stages_trains_as_without_sharing(order, accelerator):
    """The sequential order finds the reuse on its first step, warns once and stops sharing."""
    torch.manual_seed(0)
    net = adnify.convert(LongSkip(), input_size=(3, 32, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shared, grads, _ = step(net, accelerator, order, share=True, dtype=torch.float64, steps=3)
    separate, reference, _ = step(net, accelerator, order, share=False, dtype=torch.float64, steps=3)
    reuse = [w for w in caught if "again later" in str(w.message)]
    assert len(reuse) == (order == "sequential")
    torch.testing.assert_close(shared.total, separate.total)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.parametrize("order", ["joint", "sequential"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_sharing_the_prefix_leaves_loss_and_gradients_unchanged(family, order, accelerator):
    torch.manual_seed(0)
    net = MODELS[family]()
    # float64: where a train-mode BatchNorm follows, some true gradients are 0 and float32 leaves only noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no family here reuses its stem: no fallback
        shared, grads, _ = step(net, accelerator, order, share=True, dtype=torch.float64)
    separate, reference, _ = step(net, accelerator, order, share=False, dtype=torch.float64)
    torch.testing.assert_close(shared.total, separate.total)
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        assert (grad is None) == (reference[name] is None), name
        if grad is not None:
            torch.testing.assert_close(grad, reference[name], rtol=1e-6, atol=1e-9, msg=name)


class CountingConv(nn.Conv2d):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingConv.calls += 1
        return super().forward(x)


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_the_stem_runs_once_per_step_and_its_statistics_update_once(order, accelerator):
    torch.manual_seed(0)
    net = MODELS["resnet"]()
    stem = net.model.conv1
    counting = CountingConv(stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                            bias=False)
    counting.load_state_dict(stem.state_dict())
    net.model.conv1 = counting
    CountingConv.calls = 0
    _, _, trained = step(net, accelerator, order, share=True)
    assert CountingConv.calls == 1
    # Plain training updates the stem's BatchNorm once per batch; so does the shared step.
    plain = copy.deepcopy(net.model).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=g)
    plain.bn1(plain.conv1(x))
    torch.testing.assert_close(trained.model.bn1.running_mean, plain.bn1.running_mean)
    torch.testing.assert_close(trained.model.bn1.running_var, plain.bn1.running_var)


def test_a_base_pass_on_other_images_computes_its_own_prefix():
    torch.manual_seed(0)
    net = MODELS["resnet"]().eval()
    pair = AdnPair(net)
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pair(a, "super")
        logits, _ = pair(b, "base")
        torch.testing.assert_close(logits, net(b, skip="base"))
        logits, _ = pair(b, "base")  # nothing recorded for it either
        torch.testing.assert_close(logits, net(b, skip="base"))
