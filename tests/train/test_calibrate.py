"""Re-estimating the skip-aware norm copies' statistics on unlabelled images (issue 16)."""

from __future__ import annotations

import json

import pytest
import torch

import adnify
from adnify.train.calibrate import calibrate_skip_norms, skip_norm_batchnorms

TINY = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=10, zero_init_last=False)


def batches(n: int, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g) * 2 + 1, torch.zeros(size)) for _ in range(n)]


def test_only_the_copies_statistics_change_and_equal_their_inputs_average():
    torch.manual_seed(0)
    net = adnify.convert("resnet18", **TINY).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before_super, before_base = net(x, skip="super"), net(x, skip="base")
    first = skip_norm_batchnorms(net)[0]
    seen = []
    handle = first.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
    used = calibrate_skip_norms(net, batches(5), max_images=36)
    handle.remove()
    assert used == 36 and not net.training
    inputs = torch.cat(seen)
    assert inputs.shape[0] == 36  # the last batch cut to fit max_images
    # momentum=None: the cumulative (per-batch) average of the batch means
    per_batch = [t.mean(dim=(0, 2, 3)) for t in seen]
    torch.testing.assert_close(first.running_mean, sum(per_batch) / len(per_batch), rtol=1e-5, atol=1e-6)
    assert first.momentum == 0.1
    with torch.no_grad():
        torch.testing.assert_close(net(x, skip="super"), before_super, rtol=0, atol=0)
        assert not torch.allclose(net(x, skip="base"), before_base)


def test_a_run_can_calibrate_only_and_logs_it(tmp_path):
    from adnify.train import train

    torch.manual_seed(0)
    adnify.convert("resnet18", **TINY).save(str(tmp_path / "m"))
    out = tmp_path / "run"
    result = train(str(tmp_path / "m"), data="builtin:digits", output=out, recipe="finetune", progress=False,
                   overrides=dict(calibrate_skip_norms=40, eval_before_training=True, input_size=(3, 32, 32),
                                  workers=0, batch_size=8, amp=False), max_steps=0)
    assert result.step == 0 and result.status == "stopped"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["eval", "calibration", "eval"]
    assert records[1]["images"] == 40 and records[2]["phase"] == "calibrated"
    start, final = adnify.load(str(out / "start")), adnify.load(str(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(final(x, skip="super"), start(x, skip="super"), rtol=0, atol=0)


def test_zero_epochs_is_a_clear_error():
    from adnify.train.recipes import load_recipe

    with pytest.raises(adnify.AdnifyError, match="--max-steps 0"):
        load_recipe("finetune", {"epochs": 0})


def test_a_last_batch_of_one_image_is_dropped_not_an_error():
    torch.manual_seed(0)
    net = adnify.convert("resnet18", **TINY)
    one = [(torch.randn(1, 3, 32, 32), torch.zeros(1))]
    assert calibrate_skip_norms(net, batches(2) + one, max_images=100) == 16  # 8 + 8; the single image left out
    assert calibrate_skip_norms(net, batches(3), max_images=17) == 16  # cut to one image: left out too
