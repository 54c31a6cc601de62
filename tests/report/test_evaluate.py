"""Specification of evaluate_patterns' options: capped images, unlabelled images, progress, layout."""

from __future__ import annotations

import pytest
import torch

import adnify
from adnify.report.evaluate import evaluate_patterns
from adnify.report.layout import CPU_FORWARD_BATCH, Layout, fastest_layout

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net() -> adnify.AdaptiveNet:
    torch.manual_seed(0)
    net = adnify.convert("resnet18", channels=(8, 16, 32, 64), stem_width=8, num_classes=10, input_size=(3, 32, 32))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # sub-networks that really differ from the super-net
        for q in net.parameters():
            q.add_(0.3 * torch.randn(q.shape, generator=g))
    return net.eval()


class Images(torch.utils.data.Dataset):
    """Random images with labels (``-1``: unlabelled); remembers which indices were read."""

    def __init__(self, n: int, labelled: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g) if labelled else torch.full((n,), -1)
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.read.append(i)
        return self.x[i], self.y[i]


def test_max_images_scores_evenly_spaced_images_the_same_every_time():
    net, ds = tiny_net(), Images(20)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    first = evaluate_patterns(net, ["super", "base"], loader, max_images=5, progress=False)
    assert sorted(ds.read) == [0, 4, 8, 12, 16]  # spread over a class-sorted folder, not its first class
    assert first["FFFF"].examples == 5
    assert evaluate_patterns(net, ["super", "base"], loader, max_images=5, progress=False) == first
    with torch.inference_mode():
        hits = net(ds.x[::4], skip="base").argmax(-1) == ds.y[::4]
    assert first["TTTT"].acc1 == pytest.approx(100 * hits.float().mean().item())


def test_max_images_of_a_plain_iterable_takes_its_first_images():
    net, ds = tiny_net(), Images(12)
    batches = [(ds.x[i : i + 4], ds.y[i : i + 4]) for i in range(0, 12, 4)]
    result = evaluate_patterns(net, ["super"], batches, max_images=6, progress=False)
    with torch.inference_mode():
        hits = net(ds.x[:6]).argmax(-1) == ds.y[:6]
    assert result["FFFF"].examples == 6
    assert result["FFFF"].acc1 == pytest.approx(100 * hits.float().mean().item())
    with pytest.raises(adnify.AdnifyError, match="max_images"):
        evaluate_patterns(net, ["super"], batches, max_images=0, progress=False)


def test_unlabelled_images_read_as_not_measured_not_as_zero():
    net = tiny_net()
    loader = torch.utils.data.DataLoader(Images(8, labelled=False), batch_size=4)
    result = evaluate_patterns(net, ["super", "base"], loader, labels=True, agreement=True, progress=False)
    assert result["TTTT"].acc1 is None and result["TTTT"].acc5 is None
    assert result["FFFF"].agreement == 100.0 and result["TTTT"].examples == 8


def test_progress_can_be_a_callable_of_done_and_total_batches():
    seen: list[tuple[int, int | None]] = []
    loader = torch.utils.data.DataLoader(Images(10), batch_size=4)
    evaluate_patterns(tiny_net(), ["super"], loader, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_convnets_get_channels_last_and_a_few_images_per_forward_pass_on_the_cpu():
    cnn = tiny_net()
    vit = adnify.convert("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=4, embed_dim=32,
                         num_heads=2, input_size=(3, 32, 32))
    assert fastest_layout(cnn, "cpu") == Layout("channels_last", CPU_FORWARD_BATCH)
    assert fastest_layout(vit, "cpu") == Layout("contiguous", CPU_FORWARD_BATCH)
    assert fastest_layout(cnn, "cuda") == Layout("channels_last", None)
    x = torch.randn(40, 3, 32, 32)
    assert [len(c) for c in Layout(forward_batch=16).split(x)] == [16, 16, 8]
    assert Layout("channels_last").apply(x).is_contiguous(memory_format=torch.channels_last)


def test_the_layout_changes_results_by_float_rounding_only_and_is_recorded():
    net, ds = tiny_net(), Images(20)
    loader = torch.utils.data.DataLoader(ds, batch_size=20)
    fast: dict = {}
    chosen = evaluate_patterns(net, net.patterns(), loader, agreement=True, progress=False, record=fast)
    plain = evaluate_patterns(net, net.patterns(), loader, agreement=True, progress=False,
                              layout=Layout("contiguous"))  # the batch as one NCHW pass, as before
    assert fast == {"evaluation": "pattern tree (shared prefixes computed once)", "memory_format": "channels_last",
                    "forward_batch": CPU_FORWARD_BATCH, "broken_images": 0, "broken_names": []}
    for p, r in chosen.items():
        assert (r.acc1, r.acc5, r.agreement) == (plain[p].acc1, plain[p].acc5, plain[p].agreement), p
        assert r.kl_to_super == pytest.approx(plain[p].kl_to_super, rel=1e-4, abs=1e-7), p
