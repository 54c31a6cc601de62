"""``adnify train`` end to end on a tiny ResNet and a few dozen real digits: run directory, metrics,
checkpoints, exact resumption, Ctrl-C, NaN, ablations, baselines, label-free runs and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import adnify
from adnify.cli import app
from adnify.errors import AdnifyError
from adnify.io.data import load_image_data
from adnify.train import train
from adnify.train.rundir import RunDir

runner = CliRunner()
TINY = dict(channels=(8, 16, 32, 64), stem_width=8, num_classes=10, zero_init_last=False)  # every branch live
# 48 training images in batches of 8: 6 steps per epoch.
FAST = dict(epochs=1, batch_size=8, lr=0.02, workers=0, input_size=(3, 32, 32), log_interval=1,
            warmup_epochs=0, amp=False)


pytestmark = pytest.mark.usefixtures("offline_one_thread")


@pytest.fixture(scope="module")
def digits(save_digits) -> Path:
    """48 training and 16 validation digits."""
    return save_digits(48, 16)


@pytest.fixture(scope="module")
def model_dir(tiny_adn_dir) -> Path:
    return tiny_adn_dir


def run(model_dir, digits, out, **kwargs):
    overrides = {**FAST, **kwargs.pop("overrides", {})}
    return train(str(model_dir), data=str(digits), output=out, recipe="resnet", overrides=overrides,
                 progress=False, **kwargs)


def records(run_dir, kind):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def invoke(*args):
    return runner.invoke(app, ["train", *map(str, args)])


def error_of(result) -> str:
    assert result.exit_code != 0
    assert isinstance(result.exception, AdnifyError), result.exception
    return str(result.exception)


# --- a run and what it leaves behind ------------------------------------------------------------


def test_cli_run_writes_config_metrics_checkpoints_and_a_loadable_model(model_dir, digits, tmp_path):
    out = tmp_path / "run"
    result = invoke(model_dir, "--data", digits, "-o", out, "--recipe", "resnet", "--epochs", "2", "--batch-size", "8",
                    "--lr", "0.02", "--input-size", "3,32,32", "--set", "workers=0", "--set", "log_interval=2",
                    "--set", "keep_checkpoints=2", "--set", "checkpoint_every_steps=4", "--quiet")
    assert result.exit_code == 0, result.output
    assert "final" in result.output
    config = (out / "config.yaml").read_text()
    assert "epochs: 2" in config and "batch_size: 8" in config
    steps = records(out, "train")
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]
    for key in ("epoch", "loss", "loss_ce", "loss_logit_kd", "lr", "images_per_s"):
        assert all(isinstance(r[key], (int, float)) for r in steps), key
    evals = records(out, "eval")
    assert [e["epoch"] for e in evals] == [1, 2]
    assert set(evals[-1]["acc1"]) == {"FFFF", "TTTT"}
    # every epoch and every 4 steps, the last 2 kept; no temporary folders left
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000008", "step_000012"]
    net = adnify.load(out)
    assert net.num_stages == 4
    assert torch.equal(net.state_dict()["model.fc.weight"], weights(out / "final")["fc.weight"])
    info = json.loads((out / "run.json").read_text())
    assert info["data"] == str(digits) and info["global_batch_size"] == 8


def test_existing_run_directory_needs_resume_or_force(model_dir, digits, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert "--resume" in error_of(invoke(model_dir, "--data", digits, "-o", out))
    assert (out / "keep.txt").exists()
    assert "not a training run" in error_of(invoke(out, "--resume"))
    with pytest.raises(AdnifyError):  # bad input with --force: the old content is not lost
        run(model_dir, digits, out, force=True, overrides=dict(batch_size=500))
    assert (out / "keep.txt").exists()
    run(model_dir, digits, out, force=True, max_steps=1)
    assert not (out / "keep.txt").exists() and (out / "final").is_dir()


# --- resumption --------------------------------------------------------------------------------


def test_resume_ends_at_the_same_weights_as_an_uninterrupted_run(model_dir, digits, tmp_path):
    """Mid-epoch interruption; mixup, drop-path and EMA draw random numbers, warm-up + cosine move the lr."""
    extra = dict(epochs=2, mixup=0.4, drop_path=0.1, model_ema=True, model_ema_decay=0.9, checkpoint_every_steps=2,
                 sched="cosine", warmup_epochs=1)  # the learning rate changes every step
    whole = run(model_dir, digits, tmp_path / "whole", overrides=extra)
    part = run(model_dir, digits, tmp_path / "part", overrides=extra, max_steps=3)
    assert (part.status, part.step) == ("stopped", 3)
    resumed = train(str(tmp_path / "part"), resume=True, progress=False)
    assert (whole.status, resumed.status, resumed.step) == ("completed", "completed", 12)
    for final in ("final", "final_ema"):
        a, b = weights(tmp_path / "whole" / final), weights(tmp_path / "part" / final)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), final
    losses = [[r["loss"] for r in records(tmp_path / name, "train")] for name in ("whole", "part")]
    assert losses[0] == losses[1]  # the records after the checkpoint were redone, not duplicated
    untimed = [[{k: v for k, v in r.items() if k != "time"} for r in records(tmp_path / name, "eval")]
               for name in ("whole", "part")]
    assert untimed[0] == untimed[1]
    assert all("time" in r for r in records(tmp_path / "part", "train"))  # each record is stamped


def test_a_resumed_finetune_run_ends_at_the_same_weights(model_dir, digits, tmp_path):
    """Label-free, only the norm copies training, the super-net its own teacher, mixup and cutmix."""
    fast = {k: v for k, v in FAST.items() if k != "lr"}
    kwargs = dict(data=str(digits), recipe="finetune", progress=False)
    extra = {**fast, "epochs": 2, "checkpoint_every_steps": 2}
    train(str(model_dir), output=tmp_path / "whole", overrides=extra, **kwargs)
    part = train(str(model_dir), output=tmp_path / "part", overrides=extra, max_steps=3, **kwargs)
    assert (part.status, part.step) == ("stopped", 3)
    assert train(str(tmp_path / "part"), resume=True, progress=False).status == "completed"
    a, b = weights(tmp_path / "whole" / "final"), weights(tmp_path / "part" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], weights(model_dir)[k]) for k in a)  # it did train


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(model_dir, digits, tmp_path):
    def press_ctrl_c(info):
        if info.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # Python's default; SIG_IGN under nohup
    result = run(model_dir, digits, out, callbacks=[press_ctrl_c])
    assert (result.status, result.step) == ("interrupted", 2)
    assert (out / "checkpoints" / "step_000002").is_dir() and not (out / "final").exists()
    assert signal.getsignal(signal.SIGINT) == before  # handler restored
    assert train(str(out), resume=True, progress=False).step == 6


def poison_at(step):
    def poison(info):
        if info.step == step:
            with torch.no_grad():
                info.session.net.model.fc.weight.fill_(float("nan"))
    return poison


def test_a_nan_loss_stops_and_says_at_which_step(model_dir, digits, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(AdnifyError, match=r"loss became \[nan\] at step 4 .*none yet"):
        run(model_dir, digits, out, callbacks=[poison_at(3)])
    assert not (out / "final").exists()


def test_non_finite_weights_are_never_checkpointed_the_last_good_one_is_kept(model_dir, digits, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(AdnifyError, match=r"non-finite .* by step 3.*step_000002"):
        run(model_dir, digits, out, overrides=dict(checkpoint_every_steps=1, keep_checkpoints=2),
            callbacks=[poison_at(3)])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert not (out / "final").exists()


# --- losses, ablations, baselines ---------------------------------------------------------------


@pytest.mark.parametrize("overrides, terms", [
    ({}, {"ce", "base_ce", "logit_kd"}),
    ({"loss_preset": "paper"}, {"ce", "feature_kd", "logit_kd"}),
    ({"loss_preset": "paper", "order": "sequential"}, {"ce", "feature_kd", "logit_kd"}),
    ({"feature_kd": "pooled", "base_label_weight": 0.5}, {"ce", "base_ce", "feature_kd", "logit_kd"}),
    ({"distill": False}, {"ce", "base_ce"}),
], ids=["default", "paper", "paper-sequential", "pooled-base-labels", "no-distill"])
def test_loss_terms_and_their_gradient_norms_follow_the_recipe(model_dir, digits, tmp_path, overrides, terms):
    """metrics.jsonl: every term's value and, on each log line, the gradient norm it sends into the shared weights."""
    run(model_dir, digits, tmp_path / "run", overrides=overrides, max_steps=2)
    first = records(tmp_path / "run", "train")[0]
    assert {k[5:] for k in first if k.startswith("loss_")} == terms
    assert {k[10:] for k in first if k.startswith("grad_norm_")} == terms
    assert all(first[f"loss_{t}"] > 0 and first[f"grad_norm_{t}"] > 0 for t in terms)


def test_shared_norms_ablation_trains_a_network_without_norm_copies(model_dir, digits, tmp_path):
    result = invoke(model_dir, "--data", digits, "-o", tmp_path / "run", "--shared-norms", "--max-steps", "1",
                    *_fast_cli())
    assert result.exit_code == 0, result.output
    net = adnify.load(tmp_path / "run")
    assert net.shared_norms and not any("skip_copy" in k for k in weights(tmp_path / "run" / "final"))


def _fast_cli():
    return ["--batch-size", "8", "--input-size", "3,32,32", "--lr", "0.02", "--set", "workers=0", "--quiet"]


@pytest.mark.parametrize("pattern", [None, "TTTT"])
def test_baseline_trains_the_plain_or_static_network_with_plain_ce(model_dir, digits, tmp_path, pattern):
    out = tmp_path / "run"
    run(model_dir, digits, out, baseline=True, pattern=pattern)
    expected = pattern or "FFFF"
    assert set(records(out, "eval")[-1]["acc1"]) == {expected}
    assert all(not any(k.startswith(("loss_feature", "loss_logit")) for k in r) for r in records(out, "train"))
    assert json.loads((out / "run.json").read_text())["baseline"] == expected
    net = adnify.load(out)  # the trained network, as that sub-network of an adaptive model
    start = adnify.load(out / "start")
    skipped = {n for s in net.plan.stages for n in s.skippable}
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, start.state_dict()[k])}
    trained_skippable = any(k.startswith(f"model.{b}.") for k in changed for b in skipped)
    assert trained_skippable == (pattern is None)


def test_pattern_without_baseline_is_an_error(model_dir, digits, tmp_path):
    with pytest.raises(AdnifyError, match="--baseline"):
        run(model_dir, digits, tmp_path / "run", pattern="TTTT")


def test_label_free_run_distils_from_the_frozen_original(model_dir, digits, tmp_path):
    """With frozen BatchNorm statistics the super-net starts equal to its teacher: KL = 0 at step 1."""
    out = tmp_path / "run"
    run(model_dir, digits, out, overrides=dict(labels="none", freeze_bn_stats=True), max_steps=3)
    steps = records(out, "train")
    assert steps[0]["loss_ce"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["loss_ce"] > 0
    assert torch.equal(weights(out / "start")["fc.weight"], weights(model_dir)["fc.weight"])


def test_finetune_recipe_keeps_the_super_net_and_trains_the_base_net(model_dir, digits, tmp_path, monkeypatch):
    """The finetune recipe: only the skip-aware norm copies train; epoch 0 is evaluated first, then the
    calibrated model; no loss term reads the frozen super-net, so no copy of it is built (or run)."""
    import adnify.train.session

    def no_copy(net):
        raise AssertionError("a frozen teacher copy was built")
    monkeypatch.setattr(adnify.train.session, "frozen_teacher", no_copy)
    out = tmp_path / "run"
    fast = {k: v for k, v in FAST.items() if k != "lr"}
    train(str(model_dir), data=str(digits), output=out, recipe="finetune", overrides={**fast, "epochs": 2},
          progress=False)
    before, after = weights(model_dir), weights(out / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".skip_copy." in k for k in changed)  # the super-net is bit-exact the original
    evals = records(out, "eval")
    assert [(r["epoch"], r.get("phase")) for r in evals] == [(0, None), (0, "calibrated"), (1, None), (2, None)]
    for r in evals:  # label-free: how closely each sub-network follows the super-net, next to top-1
        kl = {set(p) == {"F"}: v for p, v in r["kl_to_super"].items()}
        assert kl[True] == 0.0 and kl[False] > 0 and set(r["agreement"]) == set(r["acc1"])
    assert all("loss_im" in r and "loss_feature_kd" not in r and "loss_logit_kd" not in r for r in records(out, "train"))
    assert all("loss_ce" not in r for r in records(out, "train"))  # the super-net is not run: no term reads it


def test_skip_norms_with_batchnorm_in_train_mode_is_an_error(model_dir, digits, tmp_path):
    with pytest.raises(AdnifyError, match="freeze_bn_stats"):
        run(model_dir, digits, tmp_path / "run", overrides=dict(train_params="skip_norms", freeze_bn_stats=False))
    assert not (tmp_path / "run").exists()


def test_timm_name_is_converted_on_the_fly_with_a_head_for_the_data(digits, tmp_path):
    out = tmp_path / "run"
    train("resnet18", data=str(digits), output=out, recipe="resnet", overrides=FAST, max_steps=1, progress=False,
          convert_options=dict(channels=(8, 16, 32, 64), stem_width=8))
    assert adnify.load(out).model.num_classes == 10


def test_bf16_mixed_precision_on_the_cpu_only_when_asked(model_dir, digits, tmp_path):
    run(model_dir, digits, tmp_path / "run", mixed_precision="bf16", max_steps=2)
    assert all(r["loss"] > 0 for r in records(tmp_path / "run", "train"))
    if not torch.cuda.is_available():
        with pytest.raises(AdnifyError, match="fp16 mixed precision needs a CUDA GPU"):
            run(model_dir, digits, tmp_path / "run2", mixed_precision="fp16")


def test_tensorboard_logging(model_dir, digits, tmp_path):
    run(model_dir, digits, tmp_path / "run", log_with="tensorboard", max_steps=2)
    assert list((tmp_path / "run").rglob("events.out.tfevents*"))


def test_tensorboard_without_the_package_is_an_error_not_silence(model_dir, digits, tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(AdnifyError, match="pip install tensorboard"):
        run(model_dir, digits, tmp_path / "run", log_with="tensorboard", max_steps=1)
    assert not (tmp_path / "run").exists()


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_recipe_key_lists_the_valid_keys(model_dir, digits, tmp_path):
    message = error_of(invoke(model_dir, "--data", digits, "-o", tmp_path / "run", "--set", "warmup_epoch=3"))
    assert "warmup_epochs" in message and "valid keys" in message
    assert not (tmp_path / "run").exists()


def test_integer_labels_outside_the_head_are_refused(digits, tmp_path):
    """Unnamed integer labels may be the head's own class ids (ImageNet ids), so the head is kept and checked."""
    torch.manual_seed(0)
    small = tmp_path / "five-classes"
    adnify.convert("resnet18", **{**TINY, "num_classes": 5}).save(str(small))
    ints = tmp_path / "ints"
    data = datasets.load_from_disk(str(digits))
    data.cast_column("label", datasets.Value("int64")).save_to_disk(str(ints))
    with pytest.raises(AdnifyError, match="does not fit a head of 5 classes"):
        run(small, ints, tmp_path / "run")


def test_a_saved_model_gets_a_new_head_for_data_that_names_other_classes(digits, tmp_path):
    """A converted pretrained model (here 5 classes) fine-tuned on 10 named classes: a new 10-class head,
    as a pretrained timm name gets, and the run says so."""
    torch.manual_seed(0)
    small = tmp_path / "five-classes"
    adnify.convert("resnet18", **{**TINY, "num_classes": 5}).save(str(small))
    run(small, digits, tmp_path / "run", max_steps=1)
    assert adnify.load(tmp_path / "run").model.num_classes == 10


def test_empty_and_unlabelled_data_and_missing_columns(model_dir, tmp_path):
    empty = tmp_path / "empty"
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=["a", "b"]))
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).save_to_disk(str(empty))
    with pytest.raises(AdnifyError, match="no examples"):
        run(model_dir, empty, tmp_path / "r1")
    data = load_image_data("builtin:digits")
    unlabelled = tmp_path / "unlabelled"
    data.train.select(range(24)).remove_columns("label").save_to_disk(str(unlabelled))
    with pytest.raises(AdnifyError, match="--labels none"):
        run(model_dir, unlabelled, tmp_path / "r2")
    with pytest.raises(AdnifyError, match="no label column 'nope'"):
        run(model_dir, unlabelled, tmp_path / "r3", label_column="nope")
    with pytest.raises(AdnifyError, match="fewer than one global batch"):
        run(model_dir, unlabelled, tmp_path / "r4", overrides=dict(labels="none", batch_size=64))
    assert not any((tmp_path / f"r{i}").exists() and any((tmp_path / f"r{i}").iterdir()) for i in range(1, 5))


# --- other commands -----------------------------------------------------------------------------


def test_recipes_command_lists_every_recipe_with_a_summary():
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    for name in ("deit", "resnet", "mobilenet", "swin", "vit", "finetune"):
        assert name in result.output
    shown = runner.invoke(app, ["recipes", "finetune"])
    assert shown.exit_code == 0 and "freeze_bn_stats" in shown.output


def test_python_dash_m_adnify_train_works_for_accelerate_launch():
    result = subprocess.run([sys.executable, "-m", "adnify", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--resume" in result.stdout


@pytest.mark.slow
def test_two_process_run_checkpoints_and_finishes(model_dir, digits, tmp_path):
    """The whole loop under DDP, launched as a user would (torchrun = accelerate's multi-process launch)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "adnify",
           "train", str(model_dir), "--data", str(digits), "-o", str(out), "--order", "sequential",
           "--set", "checkpoint_every_steps=2", *_fast_cli(), "--epochs", "2", "--set", "log_interval=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in records(out, "train")] == [1, 2, 3, 4, 5, 6]  # global batch 16: 3 steps an epoch
    assert sorted(p.name for p in (out / "checkpoints" / "step_000006").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    assert adnify.load(out).num_stages == 4


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    from adnify.train.demo import run_demo

    rows = run_demo(tmp_path / "demo", epochs=1, image_size=32, progress=False)
    assert len(rows) == 2 ** adnify.load(tmp_path / "demo").num_stages
    assert all(r["acc1"] is not None for r in rows)
    assert max(r["acc1"] for r in rows) > 30  # 10 classes: the new head and the network learnt something


def test_a_missing_directory_is_named_as_neither_model_nor_directory(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = error_of(invoke("lite0-adn", "--data", digits, "-o", tmp_path / "run"))
    assert "unknown model 'lite0-adn'" in message and "no model directory named 'lite0-adn'" in message
    assert not (tmp_path / "run").exists()


@pytest.fixture
def in_float64(monkeypatch):
    """Train in float64: the net is cast after loading and casts its input images.

    In float32 the two stem paths differ by rounding only (the sum of both passes' gradients is
    formed at the stem output instead of in ``.grad``), but this tiny net at lr 0.02 amplifies
    rounding about tenfold per SGD step (measured: 3e-6 relative after one step, 0.4 after six);
    in float64 the same six steps agree to 1e-10. Comparing float32 runs compares rounding.
    """
    import adnify.train.session as session

    real = session._open_net

    def open_in_float64(*args, **kwargs):
        net = real(*args, **kwargs).double()
        net.register_forward_pre_hook(lambda _m, a, kw: ((a[0].double(), *a[1:]), kw), with_kwargs=True)
        return net

    monkeypatch.setattr(session, "_open_net", open_in_float64)


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_sharing_the_stem_between_passes_trains_the_same_parameters(model_dir, digits, tmp_path, order, in_float64):
    """share_prefix (on in every recipe) computes the stem once; the parameters it produces are the same."""
    runs = {share: run(model_dir, digits, tmp_path / str(share), max_steps=6,
                       overrides=dict(order=order, share_prefix=share, drop_path=0.0))
            for share in (True, False)}
    assert all(r.step == 6 for r in runs.values())
    shared, separate = (weights(tmp_path / str(s) / "final") for s in (True, False))
    start = weights(model_dir)
    assert shared["bn1.bias"].dtype == torch.float64
    for name, value in shared.items():
        if "running_" in name or "num_batches" in name:
            continue  # the stem's BatchNorm updates once per step when shared, twice when not
        update, reference = value - start[name].double(), separate[name] - start[name].double()
        assert reference.norm() > 0, f"{name} did not train"
        torch.testing.assert_close(update, reference, rtol=1e-7, atol=1e-7 * reference.norm().item(), msg=name)


def test_report_on_a_run_evaluates_its_own_validation_split(model_dir, tmp_path):
    """`adnify report RUN --data RUN` rebuilds the held-out split and scores what training scored."""
    single = tmp_path / "single"  # one split only: training holds out val_split itself
    datasets.DatasetDict(train=load_image_data("builtin:digits").train.select(range(64))).save_to_disk(str(single))
    out = tmp_path / "run"
    train(str(model_dir), data=str(single), output=out, recipe="resnet", val_split=0.25, progress=False,
          overrides={**FAST, "seed": 5, "eval_before_training": True})
    evals = records(out, "eval")
    rebuilt = RunDir(out).image_data()  # the API behind it: the run's data, val_split and seed
    expected_split = load_image_data(str(single), val_split=0.25, seed=5)
    assert rebuilt.validation[rebuilt.label_column] == expected_split.validation[expected_split.label_column]
    for source, expected in ((out, evals[-1]["acc1"]), (out / "start", evals[0]["acc1"])):
        result = runner.invoke(app, ["report", str(source), "--data", str(out), "-p", "super,base", "--device", "cpu",
                                     "--format", "json"])  # at the run's input size, 32 px
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["context"]["examples"] == 16
        assert {r["pattern"]: r["acc1"] for r in doc["rows"]} == pytest.approx(expected, abs=1e-6)
    result = runner.invoke(app, ["report", str(out), "--data", str(out), "--split", "train"])
    assert isinstance(result.exception, AdnifyError) and "--split do not apply" in str(result.exception)


def test_epoch_images_makes_each_epoch_a_fresh_draw_of_that_many_images(model_dir, digits, tmp_path):
    from adnify.train.loaders import EpochSampler

    sampler = EpochSampler(100, seed=3, limit=24)
    first = [i for _, i in sampler]
    sampler.set_epoch(1)
    second = [i for _, i in sampler]
    assert len(sampler) == len(first) == len(second) == 24 and first != second
    assert len(set(first)) == 24 and sampler.limit == 24
    out = tmp_path / "run"
    run(model_dir, digits, out, overrides=dict(epoch_images=32, epochs=2))  # batch 8: 4 steps per epoch
    assert [r["step"] for r in records(out, "eval")] == [4, 8]


def test_skip_norm_training_runs_without_dropout(model_dir, digits, tmp_path, monkeypatch):
    """Only the norm copies train: the pretrained model's evaluation function is what they adapt to."""
    import adnify.train.loop

    seen = []
    real = adnify.train.loop.adn_step

    def spy(accelerator, model, *args, **kwargs):
        seen.append([m.training for m in model.modules()])  # timm's head dropout reads the root's flag
        return real(accelerator, model, *args, **kwargs)
    monkeypatch.setattr(adnify.train.loop, "adn_step", spy)
    fast = {k: v for k, v in FAST.items() if k != "lr"}
    train(str(model_dir), data=str(digits), output=tmp_path / "run", recipe="finetune", progress=False,
          overrides={**fast, "calibrate_skip_norms": 0, "epoch_images": 16})
    assert seen and not any(training for step in seen for training in step)


# --- the loss options and bad input (issue 28) ----------------------------------------------------


def test_eval_every_epochs_zero_never_evaluates_and_keeps_the_trained_model(model_dir, digits, tmp_path):
    out = tmp_path / "run"
    result = run(model_dir, digits, out, overrides=dict(eval_every_epochs=0, epochs=2))
    assert result.status == "completed" and result.evaluation is None
    assert records(out, "eval") == [] and (out / "final" / "adnify.json").is_file()


def test_a_frozen_original_teaches_a_pretrained_model_with_labels(model_dir, digits, tmp_path):
    out = tmp_path / "run"
    run(model_dir, digits, out, overrides=dict(teacher_weight=0.5), max_steps=2)
    first = records(out, "train")[0]
    assert first["loss_teacher_kd"] >= 0 and first["loss_base_teacher_kd"] > 0  # the super-net starts as the teacher
    assert first["grad_norm_base_teacher_kd"] > 0


def test_a_frozen_original_needs_pretrained_weights(digits, tmp_path):
    with pytest.raises(AdnifyError, match="teacher_weight > 0 needs a model converted from pretrained weights"):
        train("resnet18", convert_options=TINY, data=str(digits), output=tmp_path / "run", recipe="resnet",
              overrides={**FAST, "teacher_weight": 1.0}, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(kd_topk=11), "kd_topk 11 is above the model's 10 classes: allowed 1..10"),
    (dict(feature_kd="dense", feature_kd_stages=(5,)), "beyond this network's 4 adaptive stages: allowed 1..4"),
    (dict(teacher_weight=1.0, labels="none"), "teacher_weight needs labels"),
])
def test_loss_options_that_do_not_fit_the_model_stop_before_the_first_step(model_dir, digits, tmp_path, overrides,
                                                                          message):
    with pytest.raises(AdnifyError, match=message):
        run(model_dir, digits, tmp_path / "run", overrides=overrides)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_skips_a_damaged_checkpoint_with_a_warning(model_dir, digits, tmp_path, capfd):
    out = tmp_path / "run"
    run(model_dir, digits, out, overrides=dict(checkpoint_every_steps=1, keep_checkpoints=3), max_steps=3)
    newest = out / "checkpoints" / "step_000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a crash or a full disk
    resumed = train(str(out), resume=True, progress=False)
    assert resumed.status == "completed" and resumed.step == 6
    err = capfd.readouterr().err
    assert "checkpoint" in err and "step_000003 is damaged" in err and "resuming from step_000002" in err


def test_resume_with_no_intact_checkpoint_is_one_line(model_dir, digits, tmp_path):
    out = tmp_path / "run"
    run(model_dir, digits, out, overrides=dict(checkpoint_every_steps=1, keep_checkpoints=1), max_steps=2)
    (out / "checkpoints" / "step_000002" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdnifyError, match=r"no checkpoint is intact \(step_000002 \(") as err:
        train(str(out), resume=True, progress=False)
    assert "\n" not in str(err.value)
