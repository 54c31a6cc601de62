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


def test_the_copies_can_be_estimated_under_every_sub_network_in_turn():
    """patterns=: one pattern per batch; a copy's statistics average what it meets in those sub-networks."""
    torch.manual_seed(0)
    net = adnify.convert("resnet18", **TINY).eval()
    last = skip_norm_batchnorms(net)[-1]  # a copy in the last stage: its input depends on the stages before
    seen = []
    handle = last.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
    calibrate_skip_norms(net, batches(4), max_images=32, patterns=["FFFT", "TTTT"])
    handle.remove()
    assert len(seen) == 4  # FFFT, TTTT, FFFT, TTTT: each runs the last stage's copies
    per_batch = [t.mean(dim=(0, 2, 3)) for t in seen]
    torch.testing.assert_close(last.running_mean, sum(per_batch) / 4, rtol=1e-5, atol=1e-6)
    base_only = adnify.convert("resnet18", **TINY).eval()
    base_only.load_state_dict(net.state_dict())
    calibrate_skip_norms(base_only, batches(4), max_images=32)
    assert not torch.allclose(skip_norm_batchnorms(base_only)[-1].running_mean, last.running_mean)


def test_a_run_re_estimates_the_copies_under_every_sub_network_after_the_last_step(tmp_path):
    from adnify.train import train

    torch.manual_seed(0)
    adnify.convert("resnet18", **TINY).save(str(tmp_path / "m"))
    common = dict(input_size=(3, 32, 32), workers=0, batch_size=8, amp=False, epochs=1, epoch_images=16,
                  shared_norms=False, pattern_statistics=0)  # the copies' re-estimate alone
    train(str(tmp_path / "m"), data="builtin:digits", output=tmp_path / "plain", recipe="resnet", progress=False,
          overrides=common)
    train(str(tmp_path / "m"), data="builtin:digits", output=tmp_path / "re", recipe="resnet", progress=False,
          overrides=dict(common, recalibrate_skip_norms=48))
    records = [json.loads(line) for line in (tmp_path / "re" / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.index("recalibration") < len(kinds) - 1 - kinds[::-1].index("eval")  # before the final evaluation
    assert next(r for r in records if r["kind"] == "recalibration")["images"] == 48
    plain, re = adnify.load(str(tmp_path / "plain")), adnify.load(str(tmp_path / "re"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(re(x, skip="FFFF"), plain(x, skip="FFFF"), rtol=0, atol=0)  # the super-net: no copy
        assert not torch.allclose(re(x, skip="TTTT"), plain(x, skip="TTTT"))


def test_a_run_with_shared_norms_has_no_copies_to_re_estimate_and_says_nothing_of_it(tmp_path):
    from adnify.train import train

    torch.manual_seed(0)
    adnify.convert("resnet18", **TINY).save(str(tmp_path / "m"))
    train(str(tmp_path / "m"), data="builtin:digits", output=tmp_path / "run", recipe="resnet", progress=False,
          overrides=dict(input_size=(3, 32, 32), workers=0, batch_size=8, amp=False, epochs=1, epoch_images=16,
                         shared_norms=True, recalibrate_skip_norms=48))
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval" in kinds and "recalibration" not in kinds
