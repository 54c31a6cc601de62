"""One training step of Algorithm 1: both orders, gradients, drop-path and frozen statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import adnify
from adnify.train.losses import information_maximisation
from adnify.train.networks import baseline_into_net, frozen_teacher, train_only_skip_norms, with_shared_norms
from adnify.train.recipes import DEFAULTS, LOSS_PRESETS
from adnify.train.steps import AdnPair, GradProbe, LossConfig, adn_step, drop_path_off, freeze_bn_stats, plain_step

TINY = dict(num_classes=10, channels=(8, 16, 32, 64), stem_width=8, zero_init_last=False)  # every branch live


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return adnify.convert("resnet18", drop_path_rate=0.2, **TINY)


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def config(**changes):
    """A resolved recipe with the paper's loss (loss_preset: paper) and ``changes``."""
    return {**DEFAULTS, **LOSS_PRESETS["paper"], **changes}


def grads_after_step(net, accelerator, order, *, teacher=None, seed=0, **changes):
    """Gradients of one adn_step on a fresh copy of ``net`` (same RNG state for drop-path)."""
    net = copy.deepcopy(net)
    pair = AdnPair(net, pre_logits=changes.get("kd_weight_pre_logits", 0) > 0).train()
    x, y = batch()
    teacher_logits = teacher(x) if teacher is not None else None
    torch.manual_seed(seed)
    parts = adn_step(accelerator, pair, x, None if teacher is not None else y,
                     LossConfig.from_config(config(**changes), net), order=order, teacher_logits=teacher_logits)
    return {n: p.grad for n, p in net.named_parameters()}, parts


@pytest.mark.parametrize("changes", [{}, {"distill": False}, {"feature_kd": "none"}, {"alpha": 0.3, "temperature": 2.0},
                                     {"kd_weight_pre_logits": 0.5}, {"compile_loss": True},
                                     {"alpha": None, "feature_kd": "pooled", "base_label_weight": 1.0, "kd_topk": 3}],
                         ids=["paper", "no-distill", "logits-only", "alpha-T", "pre-logits", "compiled-kl", "adnify"])
def test_joint_and_sequential_orders_give_the_same_gradients(tiny_net, accelerator, changes):
    joint, parts_j = grads_after_step(tiny_net, accelerator, "joint", **changes)
    seq, parts_s = grads_after_step(tiny_net, accelerator, "sequential", **changes)
    assert joint.keys() == seq.keys()
    for name in joint:
        assert (joint[name] is None) == (seq[name] is None), name
        if joint[name] is not None:
            torch.testing.assert_close(seq[name], joint[name], rtol=1e-4, atol=1e-6, msg=name)
    assert parts_s.as_floats().keys() == parts_j.as_floats().keys()
    for name, value in parts_j.as_floats().items():
        assert parts_s.as_floats()[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    if changes.get("kd_weight_pre_logits"):
        assert parts_j.value("pre_logits_kd") > 0
    else:
        assert parts_j.value("pre_logits_kd") is None and parts_s.value("pre_logits_kd") is None


def test_pre_logit_features_come_out_of_the_forward_call_only(tiny_net):
    net = copy.deepcopy(tiny_net).eval()
    pair = AdnPair(net, pre_logits=True)
    x, _ = batch()
    with torch.no_grad():
        logits, feats = pair(x, "base")
        assert len(feats) == net.num_stages + 1 and feats[-1].shape == (8, net.model.num_features)
        torch.testing.assert_close(net.model.get_classifier()(feats[-1]), logits)
    assert not net.model.get_classifier()._forward_pre_hooks  # copies (EMA, teacher) carry no hook
    assert pair.state_dict().keys() == AdnPair(net).state_dict().keys()  # the head is not registered twice


def test_pre_logit_weight_without_pre_logit_features_is_an_error_not_a_stage_taken_for_them(tiny_net, accelerator):
    pair = AdnPair(copy.deepcopy(tiny_net)).train()  # built without pre_logits
    x, y = batch()
    with pytest.raises(ValueError, match="pre-logit features"):
        adn_step(accelerator, pair, x, y, LossConfig.from_config(config(kd_weight_pre_logits=1.0), tiny_net))


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_training_only_the_skip_norms_leaves_the_super_net_exactly_as_converted(tiny_net, accelerator, order):
    net = copy.deepcopy(tiny_net).eval()
    count = train_only_skip_norms(net)
    twins = {n for n, p in net.named_parameters() if p.requires_grad}
    assert twins and all(".skip_copy." in n for n in twins)
    assert count == sum(p.numel() for p in net.parameters() if p.requires_grad)
    x, _ = batch()
    with torch.no_grad():
        super_before, base_before = net(x, skip="FFFF"), net(x, skip="TTTT")
    pair = AdnPair(net, pre_logits=True)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    teacher_logits = frozen_teacher(net)(x)  # label-free, as the finetune recipe runs
    adn_step(accelerator, pair, x, None, LossConfig.from_config(config(kd_weight_pre_logits=1.0), net), order=order,
             teacher_logits=teacher_logits)
    assert all((p.grad is not None) == (n in twins) for n, p in net.named_parameters())
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(net(x, skip="FFFF"), super_before, rtol=0, atol=0)
        assert not torch.allclose(net(x, skip="TTTT"), base_before)
    with pytest.raises(adnify.AdnifyError, match="skip_norms"):
        train_only_skip_norms(with_shared_norms(tiny_net))


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_a_frozen_super_net_is_its_own_teacher_with_the_gradients_of_the_frozen_copy(tiny_net, accelerator, order):
    """train_params: skip_norms, label-free: the copy's forward is saved, nothing else changes."""
    net = copy.deepcopy(tiny_net).eval()  # eval: the super-net computes the converted model exactly
    train_only_skip_norms(net)
    x, _ = batch()
    loss = LossConfig.from_config(config(kd_weight_pre_logits=1.0), net)
    grads = []
    for kwargs in (dict(teacher_logits=frozen_teacher(net)(x)), dict(super_is_teacher=True)):
        net.zero_grad(set_to_none=True)
        parts = adn_step(accelerator, AdnPair(net, pre_logits=True), x, None, loss, order=order, **kwargs)
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)
    assert parts.value("ce") == 0
    with pytest.raises(ValueError, match="super_is_teacher"):
        adn_step(accelerator, AdnPair(net), x, batch()[1], loss, order=order, super_is_teacher=True)


def test_label_free_orders_agree_and_use_the_teacher(tiny_net, accelerator):
    teacher = frozen_teacher(tiny_net)
    joint, parts = grads_after_step(tiny_net, accelerator, "joint", teacher=teacher)
    seq, _ = grads_after_step(tiny_net, accelerator, "sequential", teacher=teacher)
    for name in joint:
        torch.testing.assert_close(seq[name], joint[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert parts.value("ce") >= 0  # KL(y_teacher || y_super) replaces CE


def test_every_parameter_that_takes_part_gets_a_gradient_both_norm_copies_included(tiny_net, accelerator):
    grads, _ = grads_after_step(tiny_net, accelerator, "joint")
    missing = [n for n, g in grads.items() if g is None or not g.abs().sum() > 0]
    assert not missing
    twins = [n for n in grads if ".skip_copy." in n]
    assert twins and all(f"{n.replace('.skip_copy', '')}" in grads for n in twins)  # copy A and copy B


def test_shared_norms_have_no_second_copy_and_still_all_train(tiny_net, accelerator):
    shared = with_shared_norms(tiny_net)
    grads, _ = grads_after_step(shared, accelerator, "sequential")
    assert not any(".skip_copy." in n for n in grads)
    assert all(g is not None for g in grads.values())


def test_teacher_side_is_detached(tiny_net, accelerator):
    """With alpha = 0 only the distillation terms remain: blocks only the super-net runs get no gradient."""
    grads, _ = grads_after_step(tiny_net, accelerator, "joint", alpha=None, label_weight=0.0)
    skippable = {n for s in tiny_net.plan.stages for n in s.skippable}
    only_super = [n for n in grads if any(n.startswith(f"model.{b}.") for b in skippable)]
    assert only_super
    assert all(grads[n] is None or grads[n].abs().max() == 0 for n in only_super)


def test_drop_path_is_off_on_the_base_pass_and_restored(tiny_net):
    net = copy.deepcopy(tiny_net)
    pair = AdnPair(net).train()
    freeze_bn_stats(pair)  # batch statistics aside, only drop-path is random
    rates = [m.drop_prob for m in pair._drop_paths]
    assert rates and max(rates) > 0
    x, _ = batch()
    with torch.no_grad():
        base = [pair(x, "base")[0] for _ in range(2)]
        sup = [pair(x, "super")[0] for _ in range(2)]
    torch.testing.assert_close(base[0], base[1])
    assert not torch.allclose(sup[0], sup[1])
    assert [m.drop_prob for m in pair._drop_paths] == rates
    with drop_path_off(pair._drop_paths):
        assert all(m.drop_prob == 0 for m in pair._drop_paths)


def test_freeze_bn_stats_keeps_running_statistics(tiny_net, accelerator):
    net = copy.deepcopy(tiny_net)
    pair = AdnPair(net).train()
    assert freeze_bn_stats(pair) > 0
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    x, y = batch()
    adn_step(accelerator, pair, x, y, LossConfig.from_config(config(), net))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_plain_step_is_cross_entropy_or_kl_to_a_teacher(tiny_net, accelerator):
    static = tiny_net.export("TTTT").train()
    freeze_bn_stats(static)
    x, y = batch()
    torch.manual_seed(0)  # same drop-path draws
    parts = plain_step(accelerator, static, x, y)
    torch.manual_seed(0)
    torch.testing.assert_close(parts.total.detach(), torch.nn.functional.cross_entropy(static(x), y).detach(),
                               rtol=1e-4, atol=1e-5)
    static.eval()
    same = plain_step(accelerator, static, x, None, teacher_logits=static(x).detach())
    assert float(same.total.detach()) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("pattern", ["FFFF", "TTTT", "TFTF"])
def test_a_trained_static_network_maps_back_into_its_adaptive_pattern(tiny_net, pattern):
    static = tiny_net.export(pattern)
    with torch.no_grad():
        for p in static.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # "training"
    back = baseline_into_net(tiny_net, static, pattern).eval()
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(back(x, skip=pattern), static.eval()(x))


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_information_maximisation_alone_runs_no_super_net_pass_and_trains_only_the_norm_copies(
        tiny_net, accelerator, order):
    """finetune's label-free objective: IM on the base-net, nothing read from the (frozen) super-net."""
    net = copy.deepcopy(tiny_net).eval()
    twins = {n for n, p in net.named_parameters() if p.requires_grad and ".skip_copy." in n}
    train_only_skip_norms(net)
    x, _ = batch()
    loss = LossConfig.from_config(config(feature_kd="none", logit_kd=False, im_weight=1.0), net)
    assert not loss.reads_super
    pair = AdnPair(net)
    passes = []
    handle = pair.register_forward_pre_hook(lambda _m, args: passes.append(args[1] if len(args) > 1 else "both"))
    parts = adn_step(accelerator, pair, x, None, loss, order=order, super_is_teacher=True)
    handle.remove()
    assert passes == ["base"]
    assert {n for n, p in net.named_parameters() if p.grad is not None} <= twins
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with torch.no_grad():
        expected = information_maximisation(net(x, skip="TTTT"))
    torch.testing.assert_close(parts.terms["im"][1], expected)
    assert parts.as_floats()["im"] == pytest.approx(float(expected))


def test_information_maximisation_prefers_confident_and_diverse_predictions():
    classes = 10
    confident_diverse = torch.eye(classes) * 20.0  # each sure, all different
    collapsed = torch.zeros(classes, classes)
    collapsed[:, 3] = 20.0  # each sure, all the same class
    unsure = torch.zeros(classes, classes)  # uniform predictions
    values = [float(information_maximisation(x)) for x in (confident_diverse, collapsed, unsure)]
    assert values[0] == pytest.approx(-math.log(classes), abs=1e-3)
    assert values[1] == pytest.approx(0.0, abs=1e-3) and values[2] == pytest.approx(0.0, abs=1e-6)


def test_the_probe_measures_each_terms_gradient_into_the_shared_weights(tiny_net, accelerator):
    """log_grad_norms: the norm of each weighted term's own gradient over the weights both ends use (not the
    skippable blocks, which only the super-net runs, nor either copy of a skip-aware norm pair)."""
    net = copy.deepcopy(tiny_net)
    freeze_bn_stats(net)
    for m in net.modules():  # drop-path off, so that the probe and the reference draw alike
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    loss = LossConfig.from_config(config(alpha=None, label_weight=1.0, distill_weight=2.0, feature_kd="none"), net)
    x, y = batch()
    norms = {}
    for order in ("joint", "sequential"):
        probe = GradProbe(list(net.named_parameters()))
        adn_step(accelerator, AdnPair(net), x, y, loss, order=order, probe=probe)
        norms[order] = probe.norms()
        net.zero_grad(set_to_none=True)
    assert set(norms["joint"]) == {"ce", "logit_kd"} and all(v > 0 for v in norms["joint"].values())
    # By hand: each term's gradient alone, over the parameters that both the super- and the base-net use.
    names = [n for n, _ in net.named_parameters()]
    skippable = tuple(f"model.{b}." for s in net.plan.stages for b in s.skippable)
    copy_a = {n.replace(".skip_copy", "") for n in names if ".skip_copy." in n}  # the super-net's norm of a pair
    shared = [n for n in names if ".skip_copy." not in n and n not in copy_a and not n.startswith(skippable)]
    params = dict(net.named_parameters())
    with torch.no_grad():
        s_logits = net(x, skip="FFFF")
    ce = torch.nn.functional.cross_entropy(net(x, skip="FFFF"), y)
    kd = 2.0 * torch.nn.functional.kl_div(net(x, skip="TTTT").log_softmax(-1), s_logits.softmax(-1),
                                          reduction="batchmean")
    for name, term in (("ce", ce), ("logit_kd", kd)):
        grads = torch.autograd.grad(term, [params[n] for n in shared], allow_unused=True)
        by_hand = sum(float(g.pow(2).sum()) for g in grads if g is not None) ** 0.5
        assert norms["joint"][name] == pytest.approx(by_hand, rel=1e-3), name
        # Sequential: the stem before the first adaptive stage gets the super-net's gradient with the base pass only,
        # so it is left out there.
        assert 0 < norms["sequential"][name] <= by_hand * (1 + 1e-3)


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_a_middle_second_pass_trains_the_copies_of_the_stages_it_skips_and_no_others(tiny_net, accelerator, order):
    net = copy.deepcopy(tiny_net)
    pair = AdnPair(net).train()
    x, y = batch()
    loss = LossConfig.from_config(config(alpha=None, feature_kd="none", base_label_weight=1.0), net)
    adn_step(accelerator, pair, x, y, loss, order=order, second="TFTF")
    for stage, skipped in zip(net._norms, "TFTF"):
        grads = [norm.skip_copy.weight.grad for norm in stage]
        assert grads, "every stage of the tiny ResNet has norm copies"
        if skipped == "T":
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)


def test_the_second_pass_is_the_base_net_unless_middle_prob_draws_a_middle_pattern():
    from types import SimpleNamespace

    from adnify.train.loop import _second_pattern

    def drawn(prob: float, steps: int = 400) -> list:
        session = SimpleNamespace(config={"middle_prob": prob, "seed": 3}, net=SimpleNamespace(num_stages=4),
                                  state=SimpleNamespace(step=0))
        out = []
        for step in range(steps):
            session.state.step = step
            out.append(_second_pattern(session))
        return out

    assert set(drawn(0.0)) == {None}
    half = drawn(0.5)
    middles = [p for p in half if p is not None]
    assert 150 < len(middles) < 250
    assert len(set(middles)) == 14 and not {"FFFF", "TTTT"} & set(middles)  # every one of the 2^4 - 2
    assert drawn(0.5) == half  # the same draw on every process and on resume
